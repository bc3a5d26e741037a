"""Tests for the fast twin's array bookkeeping: reused arrays, the flat parameter buffer, packing."""

from __future__ import annotations

import numpy as np
import pytest

from npvae import fast
from npvae.fast import SequentialTwin, flat_buffer, pack, pack_layers
from npvae.layers import Dense, ReLU, Sequential, Tanh


def test_zeros_is_a_reused_read_only_array_of_zeros():
    store: dict = {}
    a = fast.zeros(store, "z", (3, 4), np.float32)
    assert a.shape == (3, 4) and a.dtype == np.float32 and not a.any()
    assert fast.zeros(store, "z", (3, 4), np.float32) is a           # the same array again
    with pytest.raises(ValueError, match="read-only"):
        a[0, 0] = 1.0
    b = fast.zeros(store, "z", (2, 4), np.float32)                   # another shape: a new array
    assert b.shape == (2, 4) and not b.any() and store["z"] is b


def test_relu_twin_of_special_values():
    # max(x, 0) against an array of zeros (see fast.zeros) keeps max's meaning everywhere
    x = np.array([[-np.inf, -1.0, -0.0, 0.0, 2.5, np.inf, np.nan]], dtype=np.float32)
    y = fast._ReLU(ReLU()).forward(x)
    np.testing.assert_array_equal(y, [[0.0, 0.0, 0.0, 0.0, 2.5, np.inf, np.nan]])
    assert y.dtype == np.float32


def test_dense_backward_without_dx_returns_none_but_fills_grads():
    layer = fast._Dense(Dense(3, 2, rng=0, dtype=np.float64))
    layer.grads = {"W": np.zeros((3, 2)), "b": np.zeros(2)}
    x = np.arange(6.0).reshape(2, 3)
    layer.forward(x)
    dout = np.ones((2, 2))
    assert layer.backward(dout, need_dx=False) is None
    np.testing.assert_allclose(layer.grads["W"], x.T @ dout)
    np.testing.assert_allclose(layer.grads["b"], [2.0, 2.0])
    np.testing.assert_array_equal(dout, np.ones((2, 2)))


# --------------------------------------------------------------------------------------------
# The flat parameter buffer
# --------------------------------------------------------------------------------------------


def test_pack_makes_views_of_one_buffer():
    a, b = np.arange(6.0).reshape(2, 3), np.array([7.0, 8.0])
    flat, views = pack({"a": a, "b": b})
    assert flat.shape == (8,) and flat.dtype == np.float64
    np.testing.assert_array_equal(flat, [0, 1, 2, 3, 4, 5, 7, 8])
    np.testing.assert_array_equal(views["a"], a)
    assert views["a"].shape == (2, 3) and views["b"].shape == (2,)
    assert np.shares_memory(views["a"], flat) and np.shares_memory(views["b"], flat)
    assert not np.shares_memory(views["a"], a)                   # a copy, not the original
    flat[...] = 0                                                # writing the buffer ...
    assert (views["a"] == 0).all() and (views["b"] == 0).all()   # ... is seen through the views
    assert flat_buffer(views) is flat


def test_pack_errors():
    with pytest.raises(ValueError, match="nothing"):
        pack({})
    with pytest.raises(ValueError, match="float32.*float64"):
        pack({"a": np.zeros(2), "b": np.zeros(2, dtype=np.float32)})


def test_flat_buffer_rejects_arrays_that_are_not_one_packed_buffer():
    with pytest.raises(ValueError, match="pack"):
        flat_buffer({"a": np.zeros(3), "b": np.zeros(2)})        # separate arrays
    flat, views = pack({"a": np.zeros(3), "b": np.zeros(2), "c": np.zeros((2, 2))})
    with pytest.raises(ValueError, match="in order"):
        flat_buffer({"c": views["c"], "a": views["a"], "b": views["b"]})   # wrong order
    with pytest.raises(ValueError, match="cover"):
        flat_buffer({"a": views["a"], "b": views["b"]})          # leaves part of the buffer out
    with pytest.raises(ValueError):
        flat_buffer({})


def test_pack_layers_moves_params_and_grads_into_flat_buffers():
    rng = np.random.default_rng(0)
    d1, d2 = Dense(3, 4, rng=rng, dtype=np.float64), Dense(4, 2, rng=rng, dtype=np.float64)
    W1 = d1.params["W"].copy()
    params = {"l1.W": d1.params["W"], "l1.b": d1.params["b"], "l2.W": d2.params["W"], "l2.b": d2.params["b"]}
    flat_p = pack_layers({"l1": d1, "l2": d2}, params)
    assert flat_p.size == 3 * 4 + 4 + 4 * 2 + 2
    np.testing.assert_array_equal(params["l1.W"], W1)
    assert d1.params["W"] is params["l1.W"] and np.shares_memory(d2.params["b"], flat_p)
    assert flat_buffer(params) is flat_p
    assert pack_layers({"l1": d1, "l2": d2}, params) is flat_p    # packing twice: the same buffer


def test_sequential_twin_writes_its_gradients_into_one_flat_buffer():
    rng = np.random.default_rng(0)
    net = Sequential([Dense(3, 4, rng=rng, dtype=np.float64), Tanh(), Dense(4, 2, rng=rng, dtype=np.float64)])
    twin = SequentialTwin(net)
    assert list(twin.params) == ["0.W", "0.b", "1.W", "1.b"] and list(twin.grads) == list(twin.params)
    twin.forward(rng.standard_normal((5, 3)))
    twin.backward(rng.standard_normal((5, 2)))
    assert np.abs(twin.flat_grads).sum() > 0
    assert flat_buffer(twin.grads) is twin.flat_grads
