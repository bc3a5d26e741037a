"""Tests for the optimizers, textbook (npvae.optim) and fused (npvae.fast) alike: SGD with momentum
and Adam against steps computed by hand, state round trips, clear errors; and what only the fused
ones have: the flat-buffer requirement and the gradient buffer as scratch space."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from npvae import fast
from npvae.fast import FusedAdam, FusedSGD, pack
from npvae.models import VAE
from npvae.optim import SGD, Adam, make_optimizer

FAST = settings(max_examples=40, deadline=None, database=None)
TEXTBOOK, FUSED = {"sgd": SGD, "adam": Adam}, {"sgd": FusedSGD, "adam": FusedAdam}
BOTH = pytest.mark.parametrize("impl", [TEXTBOOK, FUSED], ids=["textbook", "fused"])


def moments(opt):
    """Adam's m and v, flat, from either implementation."""
    if isinstance(opt, FusedAdam):
        return opt.moments()
    return flat(opt.m), flat(opt.v)


def velocity(opt):
    return opt.velocity if isinstance(opt, FusedSGD) else flat(opt.velocity)


def make_params(dtype=np.float64):
    """p0 = a [1, -2], b [[0.5]], packed into one flat buffer (a first)."""
    _, params = pack({"a": np.array([1.0, -2.0], dtype=dtype), "b": np.array([[0.5]], dtype=dtype)})
    return params


def make_grads(a, b, dtype=np.float64):
    _, grads = pack({"a": np.array(a, dtype=dtype), "b": np.array([[b]], dtype=dtype)})
    return grads


def flat(params):
    return np.concatenate([v.ravel() for v in params.values()])


# --------------------------------------------------------------------------------------------
# Steps by hand
# --------------------------------------------------------------------------------------------


@BOTH
def test_sgd_momentum_two_steps_by_hand(impl):
    params = make_params()
    opt = impl["sgd"](params, lr=0.1, momentum=0.9)
    # step 1: v = g1 = [1, 2, -1];  p = [1, -2, 0.5] - 0.1 * [1, 2, -1] = [0.9, -2.2, 0.6]
    opt.step(make_grads([1.0, 2.0], -1.0))
    np.testing.assert_allclose(flat(params), [0.9, -2.2, 0.6], rtol=1e-15)
    # step 2: v = 0.9 * [1, 2, -1] + [0.5, 0, 1] = [1.4, 1.8, 0.1]
    #         p = [0.9, -2.2, 0.6] - 0.1 * [1.4, 1.8, 0.1] = [0.76, -2.38, 0.59]
    opt.step(make_grads([0.5, 0.0], 1.0))
    np.testing.assert_allclose(velocity(opt), [1.4, 1.8, 0.1], rtol=1e-15)
    np.testing.assert_allclose(flat(params), [0.76, -2.38, 0.59], rtol=1e-14)
    assert params["b"].shape == (1, 1)


@BOTH
def test_adam_two_steps_by_hand(impl):
    lr, eps = 0.1, 1e-8
    g = np.array([0.1, -0.2, 3.0])
    params = make_params()
    opt = impl["adam"](params, lr=lr, betas=(0.9, 0.999), eps=eps)
    # step 1: m = 0.1 g, v = 0.001 g^2; bias correction: m_hat = m / (1 - 0.9) = g,
    #         v_hat = v / (1 - 0.999) = g^2, so p -= lr * g / (|g| + eps)  (about lr * sign g)
    opt.step(make_grads(g[:2], g[2]))
    p1 = np.array([1.0, -2.0, 0.5]) - lr * g / (np.abs(g) + eps)
    np.testing.assert_allclose(flat(params), p1, rtol=1e-12)
    np.testing.assert_allclose(flat(params), [0.9, -1.9, 0.4], rtol=1e-6)
    m, v = moments(opt)
    np.testing.assert_allclose(m, 0.1 * g, rtol=1e-12)
    np.testing.assert_allclose(v, 0.001 * g * g, rtol=1e-12)
    # step 2 with the opposite gradient -g:
    #   m = 0.9 * 0.1 g + 0.1 * (-g) = -0.01 g;          bias 1 - 0.9^2 = 0.19   -> m_hat = -g / 19
    #   v = 0.999 * 0.001 g^2 + 0.001 g^2 = 0.001999 g^2; bias 1 - 0.999^2 = 0.001999 -> v_hat = g^2
    #   p -= lr * (-g / 19) / (|g| + eps)                 (about lr / 19 * sign g, backwards)
    opt.step(make_grads(-g[:2], -g[2]))
    p2 = p1 - lr * (-g / 19) / (np.abs(g) + eps)
    np.testing.assert_allclose(flat(params), p2, rtol=1e-12)
    assert opt.t == 2


def textbook_adam(p0, gradients, lr, b1, b2, eps):
    """Adam exactly as the paper writes it (Kingma and Ba, 2015, Algorithm 1), in float64."""
    p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    for t, g in enumerate(gradients, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    return p, m, v


@BOTH
@FAST
@given(seed=st.integers(0, 2**32 - 1), lr=st.floats(1e-4, 0.5), b1=st.floats(0.0, 0.99),
       b2=st.floats(0.5, 0.9999), eps=st.sampled_from([1e-8, 1e-3, 0.1]), steps=st.integers(1, 30))
def test_adam_follows_the_papers_algorithm(impl, seed, lr, b1, b2, eps, steps):
    rng = np.random.default_rng(seed)
    gradients = [rng.standard_normal(3) * 10.0 ** rng.uniform(-4, 2, 3) for _ in range(steps)]
    params = make_params()
    opt = impl["adam"](params, lr=lr, betas=(b1, b2), eps=eps)
    for g in gradients:
        opt.step(make_grads(g[:2], g[2]))
    p, m, v = textbook_adam(np.array([1.0, -2.0, 0.5]), gradients, lr, b1, b2, eps)
    np.testing.assert_allclose(flat(params), p, rtol=1e-11, atol=1e-14)
    m_opt, v_opt = moments(opt)
    np.testing.assert_allclose(m_opt, m, rtol=1e-11, atol=1e-300)
    np.testing.assert_allclose(v_opt, v, rtol=1e-11, atol=1e-300)


@pytest.mark.parametrize("form", ["old decaying sums", "textbook"])
def test_fused_adam_resumes_from_a_state_with_m_and_v(form):
    # Checkpoints written while npvae's fused Adam kept decaying sums hold m_sum = m / (1 - b1)
    # and v_sum = v / (1 - b2), the textbook Adam's hold m and v per parameter: loading either
    # converts them.
    gradients = _grad_sequence(6, seed=3)
    params = make_params()
    opt = FusedAdam(params, lr=0.05)
    for a, b in gradients[:3]:
        opt.step(make_grads(a, b))
    m, v = opt.moments()
    if form == "textbook":
        textbook = Adam(make_params(), lr=0.05)
        opt.to_textbook(textbook)
        old_state = textbook.state_dict()
        assert set(old_state) == {"t", "m.a", "m.b", "v.a", "v.b"}
    else:
        old_state = {"t": np.array(3), "m_sum": m / (1 - 0.9), "v_sum": v / (1 - 0.999)}
    resumed_params = make_params()
    for k in resumed_params:
        resumed_params[k][...] = params[k]
    resumed = FusedAdam(resumed_params, lr=0.05)
    resumed.load_state_dict(old_state)
    assert resumed.t == 3
    for a, b in gradients[3:]:
        opt.step(make_grads(a, b))
        resumed.step(make_grads(a, b))
    np.testing.assert_allclose(flat(resumed_params), flat(params), rtol=1e-13)


@BOTH
def test_adam_constant_gradient_moves_lr_every_step(impl):
    # With a constant g: m = (1 - 0.9^t) g and v = (1 - 0.999^t) g^2, so m_hat = g and v_hat = g^2
    # at every t: each step is lr * g / (|g| + eps).
    params = make_params()
    opt = impl["adam"](params, lr=0.01)
    g = np.array([4.0, -0.5, 1e-3])
    for t in range(1, 6):
        opt.step(make_grads(g[:2], g[2]))
        np.testing.assert_allclose(flat(params), np.array([1.0, -2.0, 0.5]) - t * 0.01 * g / (np.abs(g) + 1e-8),
                                   rtol=1e-10)


@BOTH
@FAST
@given(g=hnp.arrays(np.float64, 3, elements=st.floats(1e-3, 1e3) | st.floats(-1e3, -1e-3)),
       lr=st.floats(1e-4, 1.0))
def test_adam_first_step_is_lr_times_sign_whatever_the_gradient_scale(impl, g, lr):
    params = make_params()
    opt = impl["adam"](params, lr=lr)
    opt.step(make_grads(g[:2], g[2]))
    step = np.array([1.0, -2.0, 0.5]) - flat(params)
    np.testing.assert_allclose(step, lr * np.sign(g), rtol=1e-4)


@BOTH
@FAST
@given(g=hnp.arrays(np.float64, 3, elements=st.floats(-10, 10)), lr=st.floats(1e-3, 1.0))
def test_sgd_without_momentum_is_plain_gradient_descent(impl, g, lr):
    params = make_params()
    opt = impl["sgd"](params, lr=lr, momentum=0.0)
    opt.step(make_grads(g[:2], g[2]))
    np.testing.assert_allclose(flat(params), np.array([1.0, -2.0, 0.5]) - lr * g, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("cls", [SGD, Adam, FusedSGD, FusedAdam])
def test_zero_gradient_moves_nothing_on_the_first_step(cls):
    params = make_params()
    cls(params, lr=0.1).step(make_grads([0.0, 0.0], 0.0))
    np.testing.assert_array_equal(flat(params), [1.0, -2.0, 0.5])


# --------------------------------------------------------------------------------------------
# State round trip
# --------------------------------------------------------------------------------------------


def _grad_sequence(n, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(2), float(rng.standard_normal())) for _ in range(n)]


@pytest.mark.parametrize("cls, kwargs", [(SGD, {"lr": 0.05, "momentum": 0.9}), (Adam, {"lr": 0.05}),
                                         (FusedSGD, {"lr": 0.05, "momentum": 0.9}), (FusedAdam, {"lr": 0.05})])
def test_state_dict_round_trip_continues_identically(cls, kwargs):
    seq = _grad_sequence(8)
    params = make_params()
    opt = cls(params, **kwargs)
    for a, b in seq[:4]:
        opt.step(make_grads(a, b))
    # save (as a checkpoint would: copies) ...
    saved_state = {k: np.array(v, copy=True) for k, v in opt.state_dict().items()}
    saved_params = {k: v.copy() for k, v in params.items()}
    for a, b in seq[4:]:
        opt.step(make_grads(a, b))
    # ... and resume in a fresh optimizer on fresh parameters
    _, resumed_params = pack(saved_params)
    resumed = cls(resumed_params, **kwargs)
    resumed.load_state_dict(saved_state)
    for a, b in seq[4:]:
        resumed.step(make_grads(a, b))
    np.testing.assert_array_equal(flat(resumed_params), flat(params))
    for k, v in opt.state_dict().items():
        np.testing.assert_array_equal(resumed.state_dict()[k], v, err_msg=k)
    # a fresh optimizer without the state does NOT continue identically (the state matters)
    _, fresh_params = pack(saved_params)
    fresh = cls(fresh_params, **kwargs)
    for a, b in seq[4:]:
        fresh.step(make_grads(a, b))
    assert not np.array_equal(flat(fresh_params), flat(params))


def test_adam_state_dict_contents():
    params = make_params(np.float32)
    opt = FusedAdam(params, lr=0.1)
    opt.step(make_grads([1.0, 2.0], 3.0, np.float32))
    state = opt.state_dict()
    assert set(state) == {"t", "m", "v"}
    assert int(state["t"]) == 1 and state["m"].shape == state["v"].shape == (3,)
    assert state["m"].dtype == state["v"].dtype == np.float32
    assert set(FusedSGD(make_params(), lr=0.1).state_dict()) == {"velocity"}
    textbook = Adam(make_params(np.float32), lr=0.1)
    textbook.step(make_grads([1.0, 2.0], 3.0, np.float32))
    state = textbook.state_dict()
    assert set(state) == {"t", "m.a", "m.b", "v.a", "v.b"} and int(state["t"]) == 1
    assert state["m.b"].shape == (1, 1) and state["v.a"].dtype == np.float32
    assert set(SGD(make_params(), lr=0.1).state_dict()) == {"velocity.a", "velocity.b"}


@pytest.mark.parametrize("cls, key, shape", [(SGD, "velocity.a", "2"), (Adam, "m.a", "2"),
                                             (FusedSGD, "velocity", "3"), (FusedAdam, "m", "3")])
def test_load_state_dict_rejects_wrong_keys_and_shapes(cls, key, shape):
    opt = cls(make_params(), lr=0.1)
    state = {k: np.array(v, copy=True) for k, v in opt.state_dict().items()}
    with pytest.raises(ValueError, match="keys"):
        opt.load_state_dict({**state, "extra": np.zeros(3)})
    with pytest.raises(ValueError, match=rf"\(4,\).*\({shape},\)"):
        opt.load_state_dict({**state, key: np.zeros(4)})


# --------------------------------------------------------------------------------------------
# Errors and the flat buffer
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [SGD, Adam, FusedSGD, FusedAdam])
def test_step_with_mismatched_gradient_names_raises(cls):
    params = make_params()
    opt = cls(params, lr=0.1)
    _, missing = pack({"a": np.zeros(2)})
    _, renamed = pack({"a": np.zeros(2), "c": np.zeros((1, 1))})
    _, extra = pack({"a": np.zeros(2), "b": np.zeros((1, 1)), "c": np.zeros(1)})
    for grads in (missing, renamed, extra):
        with pytest.raises(ValueError, match="differ"):
            opt.step(grads)
    np.testing.assert_array_equal(flat(params), [1.0, -2.0, 0.5])     # nothing was applied


@pytest.mark.parametrize("cls", [SGD, Adam, FusedSGD, FusedAdam])
def test_step_never_applies_a_gradient_to_the_wrong_parameter(cls):
    """Gradients with the right names but another layout (order or shapes) in their flat buffer
    must either be applied by name or be refused: never added to other parameters."""
    _, params = pack({"a": np.array([1.0, 2.0]), "b": np.array([10.0, 20.0, 30.0])})
    _, reference_params = pack({"a": np.array([1.0, 2.0]), "b": np.array([10.0, 20.0, 30.0])})
    # grads packed b first: flat = [gb, ga] (opposite signs, so even Adam's sign-like first step shows it)
    _, reordered = pack({"b": np.array([1.0, 1.0, 1.0]), "a": np.array([-100.0, -100.0])})
    _, in_order = pack({"a": np.array([-100.0, -100.0]), "b": np.array([1.0, 1.0, 1.0])})
    cls(reference_params, lr=0.1).step(in_order)
    opt = cls(params, lr=0.1)
    try:
        opt.step(reordered)
    except ValueError:
        np.testing.assert_array_equal(params["a"], [1.0, 2.0])        # refused, nothing applied
    else:
        for k in params:
            np.testing.assert_allclose(params[k], reference_params[k], err_msg=f"{k} got another parameter's gradient")


@pytest.mark.parametrize("cls", [SGD, Adam, FusedSGD, FusedAdam])
def test_step_rejects_gradients_with_other_shapes(cls):
    # same names and the same total size, but each array has the other's shape
    _, params = pack({"a": np.array([1.0, 2.0]), "b": np.array([10.0, 20.0, 30.0])})
    _, wrong_shapes = pack({"a": np.ones(3), "b": np.ones(2)})
    with pytest.raises(ValueError, match="shape"):
        cls(params, lr=0.1).step(wrong_shapes)


@pytest.mark.parametrize("cls", [FusedSGD, FusedAdam])
def test_fused_params_must_be_views_of_one_flat_buffer(cls):
    with pytest.raises(ValueError, match="flat buffer"):
        cls({"a": np.zeros(2), "b": np.zeros(3)}, lr=0.1)
    opt = cls(make_params(), lr=0.1)
    with pytest.raises(ValueError, match="flat buffer"):
        opt.step({"a": np.zeros(2), "b": np.zeros((1, 1))})          # gradients too


def test_step_follows_the_gradient_arrays_it_is_given():
    # The optimizer remembers the flat buffer of the last gradient arrays it saw (finding it
    # costs time); other arrays, or the same arrays with new values, must still be used as given.
    params = make_params()
    opt = FusedSGD(params, lr=1.0, momentum=0.0)                     # p <- p - g
    _, g1 = pack({"a": np.ones(2), "b": np.ones((1, 1))})
    _, g2 = pack({"a": np.full(2, 2.0), "b": np.full((1, 1), 2.0)})
    opt.step(g1)
    opt.step(g2)
    g1["a"][...] = 4.0                                               # same arrays, new values
    opt.step(g1)
    np.testing.assert_array_equal(flat(params), np.array([1.0, -2.0, 0.5]) - [7.0, 7.0, 4.0])
    mixed = {"a": g1["a"], "b": g2["b"]}                             # two buffers: refused
    with pytest.raises(ValueError, match="flat buffer"):
        opt.step(mixed)


@pytest.mark.parametrize("key, value, pattern", [
    ("v", np.array([1.0, -1.0, 0.5]), "'v'"), ("t", np.array(-5), "whole number"),
    ("t", np.array(2.7), "whole number"), ("m", np.array([np.nan, 0.0, 0.0]), "finite"),
    ("v", np.array([0.0, 0.0]), "shape"),
    ("v.a", np.array([1.0, -1.0]), "v.a"), ("m.b", np.array([[np.inf]]), "finite")])
def test_adam_refuses_a_state_no_run_could_have_and_changes_nothing(key, value, pattern):
    params = make_params()
    if key.startswith(("m.", "v.")):
        opt = Adam(params, lr=0.1)
        state = {"t": np.array(7), "m.a": np.full(2, 5.0), "m.b": np.full((1, 1), 5.0),
                 "v.a": np.full(2, 2.0), "v.b": np.full((1, 1), 2.0), key: value}
    else:
        opt = FusedAdam(params, lr=0.1)
        state = {"t": np.array(7), "m": np.full(3, 5.0), "v": np.full(3, 2.0), key: value}
    opt.step(make_grads([1.0, 2.0], 3.0))
    before = opt.state_dict()
    with pytest.raises(ValueError, match=pattern):
        opt.load_state_dict(state)
    after = opt.state_dict()                        # all or nothing: not even t or m moved
    for k in before:
        np.testing.assert_array_equal(after[k], before[k])


@BOTH
def test_constructor_argument_errors(impl):
    for lr in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="learning rate"):
            impl["adam"](make_params(), lr=lr)
    with pytest.raises(ValueError, match="momentum"):
        impl["sgd"](make_params(), lr=0.1, momentum=1.0)
    with pytest.raises(ValueError, match="betas"):
        impl["adam"](make_params(), lr=0.1, betas=(0.9, 1.0))
    # eps = nan made every parameter NaN after one step; eps <= 0 can divide by zero
    for eps in (float("nan"), -1.0, 0.0, float("inf"), 1e-8 + 1j, "1e-8"):
        with pytest.raises(ValueError, match="eps"):
            impl["adam"](make_params(), lr=0.1, eps=eps)


def test_make_optimizer():
    assert type(make_optimizer("adam", make_params(), 1e-3)) is Adam
    sgd = make_optimizer("sgd", make_params(), 0.5)
    assert type(sgd) is SGD and sgd.lr == 0.5
    assert make_optimizer("adam", make_params(), 1e-3, eps=1e-4).eps == 1e-4
    with pytest.raises(ValueError, match="rmsprop"):
        make_optimizer("rmsprop", make_params(), 1e-3)


def test_fast_make_optimizer_builds_a_fused_one_on_the_models_packed_parameters():
    model = VAE(6, [4], 2, rng=0)
    opt = fast.make_optimizer("adam", model, 1e-3, eps=1e-4)
    assert type(opt) is FusedAdam and opt.eps == 1e-4
    assert opt.flat is fast.twin(model).flat_params
    assert type(fast.make_optimizer("sgd", model, 0.1)) is FusedSGD
    with pytest.raises(ValueError, match="rmsprop"):
        fast.make_optimizer("rmsprop", model, 1e-3)


@pytest.mark.parametrize("cls", [FusedSGD, FusedAdam])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_overwrite_grads_gives_the_same_steps_and_only_then_overwrites(cls, dtype):
    sequence = _grad_sequence(5, seed=7)
    kept_params, scratch_params = make_params(dtype), make_params(dtype)
    kept, scratch = cls(kept_params, lr=0.05), cls(scratch_params, lr=0.05)
    for a, b in sequence:
        grads = make_grads(a, b, dtype)
        kept.step(grads)
        np.testing.assert_array_equal(flat(grads), np.concatenate([np.asarray(a, dtype), [b]]).astype(dtype))
        grads = make_grads(a, b, dtype)
        scratch.step(grads, overwrite_grads=True)
        np.testing.assert_array_equal(flat(scratch_params), flat(kept_params))
    assert not np.array_equal(flat(grads), np.concatenate([np.asarray(a, dtype), [b]]).astype(dtype))
    assert scratch._tmp is None                     # never needed its own scratch buffer


@pytest.mark.parametrize("cls", [SGD, Adam, FusedSGD, FusedAdam])
def test_updates_are_in_place_and_keep_float32(cls):
    params = make_params(np.float32)
    arrays = dict(params)
    opt = cls(params, lr=0.1)
    for _ in range(3):
        opt.step(make_grads([0.3, -0.7], 0.2, np.float32))
    for k, v in params.items():
        assert v is arrays[k] and v.dtype == np.float32
    for k, v in opt.state_dict().items():
        if k != "t":
            assert v.dtype == np.float32, k
    assert not np.array_equal(flat(params), np.float32([1.0, -2.0, 0.5]))
