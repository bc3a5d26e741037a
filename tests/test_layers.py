"""Tests for npvae.layers: Dense and the activations (forward by hand, backward by central
differences), the no-write-into-dout rule, and initialisation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from npvae import layers
from npvae.gradcheck import TOLERANCE, away_from_kink, check_layer
from npvae.layers import (ACTIVATIONS, Dense, LeakyReLU, ReLU, Sequential, Sigmoid, Softplus, Tanh, activation,
                          as_generator, mlp)

FAST = settings(max_examples=40, deadline=None, database=None)
KINKED = ("relu", "leaky_relu")           # no derivative at 0
SMOOTH = ("tanh", "sigmoid", "softplus")


def assert_rows_pass(rows) -> None:
    assert rows, "a gradient check produced no rows"
    bad = [(r.component, r.parameter, r.shape, r.error) for r in rows if not r.error <= TOLERANCE]
    assert not bad, f"gradient check errors above {TOLERANCE}: {bad}"


# --------------------------------------------------------------------------------------------
# Gradient checks (float64, central differences, h = 1e-5, tolerance 1e-6)
# --------------------------------------------------------------------------------------------


@FAST
@given(n=st.integers(1, 4), d_in=st.integers(1, 5), d_out=st.integers(1, 5),
       init=st.sampled_from(["he", "glorot"]), seed=st.integers(0, 2**32 - 1))
def test_dense_gradients_match_central_differences(n, d_in, d_out, init, seed):
    rng = np.random.default_rng(seed)
    layer = Dense(d_in, d_out, init=init, rng=rng, dtype=np.float64)
    layer.params["b"][...] = rng.standard_normal(d_out)      # a non-zero bias
    x = rng.uniform(-2, 2, (n, d_in))
    rows = check_layer(layer, x, rng)
    assert {r.parameter for r in rows} == {"x", "W", "b"}
    assert_rows_pass(rows)


elementwise_inputs = st.tuples(st.integers(1, 4), st.integers(1, 5)).flatmap(
    lambda shape: hnp.arrays(np.float64, shape, elements=st.floats(-4, 4, allow_subnormal=False)))


@FAST
@given(name=st.sampled_from(sorted(ACTIVATIONS)), x=elementwise_inputs, seed=st.integers(0, 2**32 - 1))
def test_activation_gradients_match_central_differences(name, x, seed):
    if name in KINKED:
        x = away_from_kink(x)         # the derivative does not exist at 0
    rows = check_layer(activation(name), x.copy(), np.random.default_rng(seed))
    assert [r.parameter for r in rows] == ["x"]
    assert_rows_pass(rows)


@FAST
@given(alpha=st.floats(0.0, 0.5), x=elementwise_inputs, seed=st.integers(0, 2**32 - 1))
def test_leaky_relu_gradient_for_any_slope(alpha, x, seed):
    rows = check_layer(LeakyReLU(alpha), away_from_kink(x), np.random.default_rng(seed))
    assert_rows_pass(rows)


@FAST
@given(sizes=st.lists(st.integers(1, 5), min_size=2, max_size=4), act=st.sampled_from(SMOOTH),
       final=st.sampled_from([None, *SMOOTH]), n=st.integers(1, 3), seed=st.integers(0, 2**32 - 1))
def test_mlp_gradients_match_central_differences(sizes, act, final, n, seed):
    rng = np.random.default_rng(seed)
    net = mlp(sizes, act, final_activation=final, rng=rng, dtype=np.float64)
    rows = check_layer(net, rng.uniform(-1, 1, (n, sizes[0])), rng, name="mlp")
    assert_rows_pass(rows)


@pytest.mark.parametrize("act", KINKED)
def test_mlp_gradients_with_relu_family_fixed_seed(act):
    # A fixed seed whose pre-activations are not within h of a kink (checked below).
    rng = np.random.default_rng(1234)
    net = mlp([4, 6, 5, 3], act, rng=rng, dtype=np.float64)
    for layer in net.dense_layers:
        layer.params["b"][...] = rng.uniform(-0.5, 0.5, layer.params["b"].shape)
    x = rng.uniform(-1, 1, (3, 4))
    h = x
    for layer in net.layers:
        h = layer.forward(h)
        if isinstance(layer, Dense):
            assert np.abs(h).min() > 1e-3, "seed puts a pre-activation on the kink"
    assert_rows_pass(check_layer(net, x, rng, name=f"mlp({act})"))


# --------------------------------------------------------------------------------------------
# backward never writes into dout
# --------------------------------------------------------------------------------------------


def _all_layers(dtype):
    rng = np.random.default_rng(0)
    return [Dense(3, 4, rng=rng, dtype=dtype), ReLU(), LeakyReLU(0.1), Tanh(), Sigmoid(), Softplus(),
            mlp([3, 5, 4], "tanh", final_activation="sigmoid", rng=rng, dtype=dtype)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("index", range(7), ids=["Dense", "ReLU", "LeakyReLU", "Tanh", "Sigmoid", "Softplus", "mlp"])
def test_backward_does_not_write_into_dout(index, dtype):
    layer = _all_layers(dtype)[index]
    rng = np.random.default_rng(index)
    x = away_from_kink(rng.standard_normal((5, 3))).astype(dtype)
    if not isinstance(layer, (Dense, Sequential)):
        x = away_from_kink(rng.standard_normal((5, 4))).astype(dtype)
    y = layer.forward(x)
    dout = rng.standard_normal(y.shape).astype(dtype)
    before = dout.copy()
    dx = layer.backward(dout)
    np.testing.assert_array_equal(dout, before)
    assert dx.shape == x.shape
    # The result must not be dout itself either (callers may modify it in place).
    assert not np.shares_memory(dx, dout)


# --------------------------------------------------------------------------------------------
# Forward and backward values computed by hand
# --------------------------------------------------------------------------------------------


def test_dense_forward_and_backward_by_hand():
    layer = Dense(3, 2, rng=0, dtype=np.float64)
    layer.params["W"][...] = [[1, 2], [3, 4], [5, 6]]
    layer.params["b"][...] = [0.5, -1]
    x = np.array([[1.0, 0.0, -1.0],
                  [2.0, 1.0, 0.0]])
    # row 0: [1*1 + 0*3 + (-1)*5, 1*2 + 0*4 + (-1)*6] + [0.5, -1] = [-4, -4] + [0.5, -1] = [-3.5, -5]
    # row 1: [2*1 + 1*3 + 0*5,    2*2 + 1*4 + 0*6]    + [0.5, -1] = [ 5,  8] + [0.5, -1] = [ 5.5,  7]
    np.testing.assert_allclose(layer.forward(x), [[-3.5, -5.0], [5.5, 7.0]], rtol=0, atol=1e-15)
    dout = np.array([[1.0, 0.0],
                     [0.0, 1.0]])
    dx = layer.backward(dout)
    # dW = x.T @ dout = [[1, 2], [0, 1], [-1, 0]]  (column j collects x rows weighted by dout[:, j])
    np.testing.assert_allclose(layer.grads["W"], [[1, 2], [0, 1], [-1, 0]], rtol=0, atol=1e-15)
    # db = dout summed over the batch = [1, 1]
    np.testing.assert_allclose(layer.grads["b"], [1, 1], rtol=0, atol=1e-15)
    # dx = dout @ W.T: row 0 = W[:, 0] = [1, 3, 5], row 1 = W[:, 1] = [2, 4, 6]
    np.testing.assert_allclose(dx, [[1, 3, 5], [2, 4, 6]], rtol=0, atol=1e-15)


LN2, LN3 = math.log(2), math.log(3)


@pytest.mark.parametrize("name, points, values, slopes", [
    # relu: max(x, 0); slope 1 for x > 0, 0 for x < 0
    ("relu", [-2.0, -0.5, 0.5, 3.0], [0.0, 0.0, 0.5, 3.0], [0.0, 0.0, 1.0, 1.0]),
    # leaky relu (alpha 0.01): x or 0.01 x;  -2 -> -0.02, -0.5 -> -0.005
    ("leaky_relu", [-2.0, -0.5, 0.5, 3.0], [-0.02, -0.005, 0.5, 3.0], [0.01, 0.01, 1.0, 1.0]),
    # tanh(0) = 0; tanh(ln 2) = (2 - 1/2) / (2 + 1/2) = 0.6; tanh(ln 3) = (3 - 1/3) / (3 + 1/3) = 0.8;
    # tanh is odd. slope 1 - y^2: 1, 1 - 0.36 = 0.64, 1 - 0.64 = 0.36
    ("tanh", [0.0, LN2, LN3, -LN3], [0.0, 0.6, 0.8, -0.8], [1.0, 0.64, 0.36, 0.36]),
    # sigmoid(0) = 1/2; sigmoid(ln 3) = 1 / (1 + 1/3) = 3/4; sigmoid(-ln 3) = 1 / (1 + 3) = 1/4;
    # sigmoid(ln 2) = 1 / (1 + 1/2) = 2/3.  slope y (1 - y): 1/4, 3/16, 3/16, 2/9
    ("sigmoid", [0.0, LN3, -LN3, LN2], [0.5, 0.75, 0.25, 2 / 3], [0.25, 0.1875, 0.1875, 2 / 9]),
    # softplus = log(1 + e^x): log 2; log(1 + 3) = log 4; log(1 + 1/3) = log(4/3); log(1 + 2) = log 3.
    # slope sigmoid(x): 1/2, 3/4, 1/4, 2/3
    ("softplus", [0.0, LN3, -LN3, LN2], [LN2, math.log(4), math.log(4 / 3), LN3], [0.5, 0.75, 0.25, 2 / 3]),
])
def test_activation_values_and_slopes_by_hand(name, points, values, slopes):
    layer = activation(name)
    x = np.array([points])
    np.testing.assert_allclose(layer.forward(x), [values], rtol=1e-14, atol=1e-15)
    dout = np.array([[1.0, 2.0, -1.0, 0.5]])
    np.testing.assert_allclose(layer.backward(dout), dout * np.array([slopes]), rtol=1e-13, atol=1e-15)


def test_relu_of_special_values():
    x = np.array([[-np.inf, -1.0, -0.0, 0.0, 2.5, np.inf, np.nan]], dtype=np.float32)
    y = ReLU().forward(x)
    np.testing.assert_array_equal(y, [[0.0, 0.0, 0.0, 0.0, 2.5, np.inf, np.nan]])
    assert y.dtype == np.float32


def test_leaky_relu_and_softplus_of_integers_are_real_numbers():
    np.testing.assert_allclose(LeakyReLU(0.01).forward(np.array([[-2, 3]])), [[-0.02, 3.0]])
    np.testing.assert_allclose(Softplus().forward(np.array([[0, 1]])), [[math.log(2), math.log(1 + math.e)]])


def test_relu_at_zero_gives_zero_and_zero_slope():
    layer = ReLU()
    np.testing.assert_array_equal(layer.forward(np.zeros((1, 2))), [[0.0, 0.0]])
    np.testing.assert_array_equal(layer.backward(np.ones((1, 2))), [[0.0, 0.0]])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sigmoid_and_softplus_do_not_overflow(dtype):
    x = np.array([[-1000.0, -100.0, 0.0, 100.0, 1000.0]], dtype=dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        s = layers.sigmoid(x)
        sp = Softplus()
        y = sp.forward(x)
        dy = sp.backward(np.ones_like(x))
        sig = Sigmoid()
        sig.forward(x)
        ds = sig.backward(np.ones_like(x))
    for a in (s, y, dy, ds):
        assert a.dtype == dtype and np.isfinite(a).all()
    np.testing.assert_allclose(s, [[0.0, 0.0, 0.5, 1.0, 1.0]], atol=1e-30)
    # softplus(x) = x for large x, 0 for very negative x, log 2 at 0
    np.testing.assert_allclose(y, [[0.0, 0.0, LN2, 100.0, 1000.0]], rtol=1e-6, atol=1e-30)
    np.testing.assert_allclose(dy, [[0.0, 0.0, 0.5, 1.0, 1.0]], atol=1e-30)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activations_keep_float32(name):
    layer = activation(name)
    x = np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4) + np.float32(0.01)
    y = layer.forward(x)
    dx = layer.backward(np.ones_like(y))
    assert y.dtype == np.float32 and dx.dtype == np.float32


def test_dense_keeps_float32():
    layer = Dense(4, 3, rng=0)                      # float32 is the default
    assert layer.params["W"].dtype == np.float32 and layer.params["b"].dtype == np.float32
    x = np.ones((2, 4), dtype=np.float32)
    y = layer.forward(x)
    dx = layer.backward(np.ones_like(y))
    assert y.dtype == dx.dtype == layer.grads["W"].dtype == layer.grads["b"].dtype == np.float32


# --------------------------------------------------------------------------------------------
# Construction, initialisation, errors
# --------------------------------------------------------------------------------------------


def test_activation_by_name_and_unknown_name():
    for name, cls in ACTIVATIONS.items():
        assert type(activation(name)) is cls
    assert set(ACTIVATIONS) == {"relu", "leaky_relu", "tanh", "sigmoid", "softplus"}
    with pytest.raises(ValueError, match="swish.*leaky_relu"):
        activation("swish")


def test_dense_rejects_bad_sizes_and_init():
    with pytest.raises(ValueError, match=r"\(0, 3\)"):
        Dense(0, 3)
    with pytest.raises(ValueError, match="lecun"):
        Dense(2, 3, init="lecun")


@pytest.mark.parametrize("init, d_in, d_out, variance", [
    ("he", 400, 300, 2 / 400),              # He: Var W = 2 / D_in
    ("glorot", 300, 500, 2 / (300 + 500)),  # Glorot (as documented in Dense): Var W = 2 / (D_in + D_out)
])
def test_dense_initialisation_variance(init, d_in, d_out, variance):
    layer = Dense(d_in, d_out, init=init, rng=0, dtype=np.float64)
    W = layer.params["W"]
    # sample variance of n = d_in * d_out normals: standard error variance * sqrt(2 / n); allow 6 of them
    se = variance * math.sqrt(2 / W.size)
    assert abs(W.var() - variance) < 6 * se, (
        f"{init} init: Var W = {W.var():.5f}, expected {variance:.5f} (ratio {W.var() / variance:.2f})")
    assert abs(W.mean()) < 6 * math.sqrt(variance / W.size)
    np.testing.assert_array_equal(layer.params["b"], np.zeros(d_out))


def test_as_generator():
    g = np.random.default_rng(5)
    assert as_generator(g) is g
    assert as_generator(7).standard_normal() == np.random.default_rng(7).standard_normal()
    assert isinstance(as_generator(None), np.random.Generator)
    with pytest.raises(TypeError, match="str"):
        as_generator("seed")


def test_mlp_structure():
    net = mlp([5, 4, 3, 2], "tanh", final_activation="sigmoid", rng=0, dtype=np.float64)
    kinds = [type(layer) for layer in net.layers]
    assert kinds == [Dense, Tanh, Dense, Tanh, Dense, Sigmoid]
    assert [d.params["W"].shape for d in net.dense_layers] == [(5, 4), (4, 3), (3, 2)]
    assert type(mlp([3, 2], "relu").layers[-1]) is Dense      # linear output by default
    with pytest.raises(ValueError):
        mlp([3], "relu")
