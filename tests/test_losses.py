"""Tests for npvae.losses: gradients by central differences, values by hand, the KL's properties
(non-negative, zero at the prior, equal to a Monte Carlo estimate) and the stability of the
Bernoulli loss at extreme logits."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from npvae import losses
from npvae.gradcheck import TOLERANCE, check_function

FAST = settings(max_examples=40, deadline=None, database=None)
LN2, LN3 = math.log(2), math.log(3)

shapes = st.tuples(st.integers(1, 4), st.integers(1, 6))


def arrays_like(shape, lo, hi):
    return hnp.arrays(np.float64, shape, elements=st.floats(lo, hi, allow_subnormal=False))


@st.composite
def logits_and_targets(draw):
    shape = draw(shapes)
    return draw(arrays_like(shape, -4, 4)), draw(arrays_like(shape, 0, 1))


@st.composite
def mu_and_logvar(draw, lo=-3.0, hi=3.0):
    shape = draw(shapes)
    return draw(arrays_like(shape, lo, hi)), draw(arrays_like(shape, lo, hi))


def assert_rows_pass(rows, n_expected):
    assert len(rows) == n_expected
    bad = [(r.component, r.parameter, r.error) for r in rows if not r.error <= TOLERANCE]
    assert not bad, f"gradient check errors above {TOLERANCE}: {bad}"


def strict_errors():
    """Overflow, division by zero and invalid operations become errors; so does any warning.

    Underflow is left alone on purpose: exp(-1000) -> 0 is the intended, exact-enough result in
    the stable BCE formula, and NumPy never warns about it by default.
    """
    class _Ctx:
        def __enter__(self):
            self.err = np.errstate(over="raise", divide="raise", invalid="raise", under="ignore")
            self.err.__enter__()
            self.warn = warnings.catch_warnings()
            self.warn.__enter__()
            warnings.simplefilter("error")

        def __exit__(self, *exc):
            self.warn.__exit__(*exc)
            self.err.__exit__(*exc)
    return _Ctx()


# --------------------------------------------------------------------------------------------
# Gradient checks
# --------------------------------------------------------------------------------------------


@FAST
@given(data=logits_and_targets())
def test_l2_reconstruction_gradient(data):
    logits, x = data
    _, g = losses.l2_reconstruction(logits, x)
    assume(np.abs(g).max() > 1e-3)          # an all-zero gradient leaves only rounding noise to compare
    assert_rows_pass(check_function("l2", losses.l2_reconstruction, {"logits": logits, "x": x}), 1)


@FAST
@given(data=logits_and_targets())
def test_bernoulli_reconstruction_gradient(data):
    logits, x = data
    _, g = losses.bernoulli_reconstruction(logits, x)
    assume(np.abs(g).max() > 1e-3)
    assert_rows_pass(check_function("bce", losses.bernoulli_reconstruction, {"logits": logits, "x": x}), 1)


@FAST
@given(data=mu_and_logvar())
def test_kl_standard_normal_gradient(data):
    mu, logvar = data
    _, gmu, glv = losses.kl_standard_normal(mu, logvar)
    # each array is compared relative to its own size: an all-zero one would compare rounding noise
    assume(min(np.abs(gmu).max(), np.abs(glv).max()) > 1e-3)
    assert_rows_pass(check_function("kl", losses.kl_standard_normal, {"mu": mu, "logvar": logvar}), 2)


@FAST
@given(n=st.integers(1, 4), c=st.integers(2, 6), seed=st.integers(0, 2**32 - 1), scale=st.floats(0.1, 5))
def test_softmax_cross_entropy_gradient(n, c, seed, scale):
    rng = np.random.default_rng(seed)
    logits, labels = rng.standard_normal((n, c)) * scale, rng.integers(0, c, n)
    assert_rows_pass(check_function("ce", losses.softmax_cross_entropy, {"logits": logits, "labels": labels}), 1)


# --------------------------------------------------------------------------------------------
# Values by hand
# --------------------------------------------------------------------------------------------


def test_l2_reconstruction_by_hand():
    # Row 0: logits 0 -> x_hat = [0.5, 0.5]; x = [1, 0]: (0.5 - 1)^2 + (0.5 - 0)^2 = 0.25 + 0.25 = 0.5
    loss, g = losses.l2_reconstruction(np.array([[0.0, 0.0]]), np.array([[1.0, 0.0]]))
    assert loss == pytest.approx(0.5, abs=1e-15)
    # dL/dlogits = 2 (x_hat - x) x_hat (1 - x_hat) / N = 2 * (-0.5) * 0.25 = -0.25 and 2 * 0.5 * 0.25 = 0.25
    np.testing.assert_allclose(g, [[-0.25, 0.25]], atol=1e-15)

    # Add row 1: logits [ln 3, -ln 3] -> x_hat = [3/4, 1/4]; x = [1, 0]: 1/16 + 1/16 = 0.125.
    # Batch mean: (0.5 + 0.125) / 2 = 0.3125
    logits = np.array([[0.0, 0.0], [LN3, -LN3]])
    x = np.array([[1.0, 0.0], [1.0, 0.0]])
    loss, g = losses.l2_reconstruction(logits, x)
    assert loss == pytest.approx(0.3125, abs=1e-15)
    # row 0 now divided by N = 2: [-0.125, 0.125]
    # row 1: x_hat (1 - x_hat) = 3/16 for both; 2 * (-1/4) * 3/16 / 2 = -3/64 and +3/64
    np.testing.assert_allclose(g, [[-0.125, 0.125], [-3 / 64, 3 / 64]], atol=1e-15)
    np.testing.assert_allclose(losses.l2_per_example(logits, x), [0.5, 0.125], atol=1e-15)


def test_bernoulli_reconstruction_by_hand():
    # BCE(l, x) = -[x log s(l) + (1 - x) log(1 - s(l))]
    # logit 0, x = 1: -log(1/2) = log 2          logit ln 3, x = 1: -log(3/4) = log(4/3)
    # logit ln 3, x = 0: -log(1/4) = log 4       logit 0, x = 0.5: -(0.5 log 0.5 + 0.5 log 0.5) = log 2
    logits = np.array([[0.0, LN3], [LN3, 0.0]])
    x = np.array([[1.0, 1.0], [0.0, 0.5]])
    per_example = [LN2 + math.log(4 / 3), math.log(4) + LN2]
    np.testing.assert_allclose(losses.bernoulli_per_example(logits, x), per_example, rtol=1e-14)
    loss, g = losses.bernoulli_reconstruction(logits, x)
    assert loss == pytest.approx(sum(per_example) / 2, rel=1e-14)
    # dL/dlogits = (s(l) - x) / N: [(0.5 - 1), (0.75 - 1)], [(0.75 - 0), (0.5 - 0.5)], over 2
    np.testing.assert_allclose(g, [[-0.25, -0.125], [0.375, 0.0]], atol=1e-15)


def test_kl_standard_normal_by_hand():
    # KL = -0.5 sum(1 + logvar - mu^2 - exp(logvar))
    # mu = 1, logvar = 0:      -0.5 (1 + 0 - 1 - 1)        = 0.5
    # mu = 0, logvar = log 2:  -0.5 (1 + log 2 - 0 - 2)    = 0.5 (1 - log 2)
    mu = np.array([[1.0], [0.0]])
    logvar = np.array([[0.0], [LN2]])
    np.testing.assert_allclose(losses.kl_per_example(mu, logvar), [0.5, 0.5 * (1 - LN2)], rtol=1e-14)
    kl, dmu, dlogvar = losses.kl_standard_normal(mu, logvar)
    assert kl == pytest.approx((0.5 + 0.5 * (1 - LN2)) / 2, rel=1e-14)
    # dKL/dmu = mu / N = [0.5, 0];  dKL/dlogvar = 0.5 (exp(logvar) - 1) / N = [0, 0.5 * (2 - 1) / 2 = 0.25]
    np.testing.assert_allclose(dmu, [[0.5], [0.0]], atol=1e-15)
    np.testing.assert_allclose(dlogvar, [[0.0], [0.25]], atol=1e-15)
    # KL sums over latent dimensions: both terms in one row of width 2 -> 0.5 + 0.5 (1 - log 2)
    kl2, _, _ = losses.kl_standard_normal(np.array([[1.0, 0.0]]), np.array([[0.0, LN2]]))
    assert kl2 == pytest.approx(0.5 + 0.5 * (1 - LN2), rel=1e-14)


def test_softmax_cross_entropy_by_hand():
    # row 0: logits [0, 0, 0], label 1: softmax = 1/3 each, loss = log 3
    # row 1: logits [ln 2, 0, -inf-ish], label 0: use [ln 2, 0, 0]: softmax = [2/4, 1/4, 1/4], loss = log 2
    logits = np.array([[0.0, 0.0, 0.0], [LN2, 0.0, 0.0]])
    loss, g = losses.softmax_cross_entropy(logits, np.array([1, 0]))
    assert loss == pytest.approx((LN3 + LN2) / 2, rel=1e-14)
    # gradient (softmax - onehot) / N
    np.testing.assert_allclose(g, [[1 / 6, -1 / 3, 1 / 6], [-1 / 4, 1 / 8, 1 / 8]], atol=1e-15)


def test_softmax_cross_entropy_is_shift_invariant_and_stable():
    logits = np.array([[1000.0, 999.0, -1000.0]])
    with strict_errors():
        loss, g = losses.softmax_cross_entropy(logits, np.array([1]))
    # shift by -999: [1, 0, -1999] -> loss = log(e + 1) - 0
    assert loss == pytest.approx(math.log(math.e + 1), rel=1e-12)
    assert np.isfinite(g).all()


def test_softmax_cross_entropy_label_errors():
    logits = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"\(2,\)"):
        losses.softmax_cross_entropy(logits, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="integers"):
        losses.softmax_cross_entropy(logits, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        losses.softmax_cross_entropy(logits, np.array([0, 3]))


@pytest.mark.parametrize("fn", [losses.l2_reconstruction, losses.bernoulli_reconstruction])
def test_reconstruction_losses_agree_with_their_per_example_forms(fn):
    rng = np.random.default_rng(3)
    logits, x = rng.standard_normal((5, 7)) * 3, rng.uniform(0, 1, (5, 7))
    per_example = {losses.l2_reconstruction: losses.l2_per_example,
                   losses.bernoulli_reconstruction: losses.bernoulli_per_example}[fn]
    loss, _ = fn(logits, x)
    assert isinstance(loss, float)
    assert loss == pytest.approx(per_example(logits, x).mean(), rel=1e-13)


def test_bernoulli_matches_the_textbook_formula():
    rng = np.random.default_rng(4)
    logits, x = rng.standard_normal((4, 6)) * 3, rng.uniform(0, 1, (4, 6))
    p = 1 / (1 + np.exp(-logits))
    textbook = -(x * np.log(p) + (1 - x) * np.log(1 - p)).sum(axis=1)
    np.testing.assert_allclose(losses.bernoulli_per_example(logits, x), textbook, rtol=1e-12)


# --------------------------------------------------------------------------------------------
# BCE at extreme logits
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_bce_from_logits_is_finite_and_correct_at_extreme_logits(dtype):
    logits = np.array([[1000.0, -1000.0, 1000.0, -1000.0]], dtype=dtype)
    x = np.array([[1.0, 1.0, 0.0, 0.0]], dtype=dtype)
    with strict_errors():
        per_example = losses.bernoulli_per_example(logits, x)
        loss, g = losses.bernoulli_reconstruction(logits, x)
        for l_, x_, want in [(1000.0, 1.0, 0.0),      # confident and right: -log s(1000) = 0
                             (-1000.0, 1.0, 1000.0),  # confident and wrong: -log s(-1000) = 1000
                             (1000.0, 0.0, 1000.0),   # -log(1 - s(1000)) = 1000
                             (-1000.0, 0.0, 0.0)]:    # -log(1 - s(-1000)) = 0
            one, _ = losses.bernoulli_reconstruction(np.array([[l_]], dtype=dtype), np.array([[x_]], dtype=dtype))
            assert np.isfinite(one) and one == pytest.approx(want, abs=1e-6)
    assert np.isfinite(per_example).all() and np.isfinite(loss)
    assert loss == pytest.approx(2000.0, rel=1e-6)
    # gradient s(l) - x: [1 - 1, 0 - 1, 1 - 0, 0 - 0] (N = 1), finite
    assert np.isfinite(g).all()
    np.testing.assert_allclose(g, [[0.0, -1.0, 1.0, 0.0]], atol=1e-6)


def test_l2_reconstruction_is_finite_at_extreme_logits():
    logits = np.array([[1000.0, -1000.0]])
    with strict_errors():
        loss, g = losses.l2_reconstruction(logits, np.array([[0.0, 0.0]]))
    assert loss == pytest.approx(1.0) and np.isfinite(g).all()


# --------------------------------------------------------------------------------------------
# KL properties
# --------------------------------------------------------------------------------------------


@FAST
@given(data=mu_and_logvar(-10.0, 10.0))
def test_kl_is_non_negative(data):
    mu, logvar = data
    per_example = losses.kl_per_example(mu, logvar)
    kl, _, _ = losses.kl_standard_normal(mu, logvar)
    # Up to rounding: each term 1 + lv - mu^2 - e^lv carries an error of a few ulps of its parts.
    tol = 4 * np.finfo(np.float64).eps * (1 + np.abs(logvar) + mu * mu + np.exp(logvar)).sum(axis=1)
    assert (per_example >= -tol).all()
    assert kl >= -tol.mean()
    # And it grows with |mu|: moving mu away from 0 never lowers it.
    assert (losses.kl_per_example(mu * 2, logvar) >= per_example - tol).all()


@pytest.mark.parametrize("logvar", [-7e-10, -5.43526828e-11])
def test_kl_is_never_negative_even_next_to_the_prior(logvar):
    # The KL of N(0, e^lv) to N(0, 1) is 0.5 (e^lv - 1 - lv) > 0 for lv != 0. Computed as
    # -0.5 (1 + lv - e^lv), the cancellation can leave a negative rounding error (-5.6e-17);
    # 0.5 * (expm1(lv) - lv) is exactly non-negative.
    mu, lv = np.zeros((1, 1)), np.full((1, 1), logvar)
    assert losses.kl_per_example(mu, lv)[0] >= 0
    assert losses.kl_standard_normal(mu, lv)[0] >= 0


@pytest.mark.parametrize("z", [1, 5])
def test_kl_is_exactly_zero_at_the_prior(z):
    mu, logvar = np.zeros((3, z)), np.zeros((3, z))
    kl, dmu, dlogvar = losses.kl_standard_normal(mu, logvar)
    assert kl == 0.0
    np.testing.assert_array_equal(losses.kl_per_example(mu, logvar), np.zeros(3))
    np.testing.assert_array_equal(dmu, 0.0)
    np.testing.assert_array_equal(dlogvar, 0.0)
    # and strictly positive away from it
    assert losses.kl_standard_normal(mu + 0.1, logvar)[0] > 0
    assert losses.kl_standard_normal(mu, logvar - 0.1)[0] > 0


def test_kl_matches_a_monte_carlo_estimate():
    mu = np.array([0.7, -1.2, 0.0])
    logvar = np.array([np.log(0.25), np.log(4.0), 0.3])
    rng = np.random.default_rng(20240601)
    n = 200_000
    eps = rng.standard_normal((n, 3))
    z = mu + np.exp(0.5 * logvar) * eps
    # log q(z) - log p(z) per sample, summed over dimensions (the log(2 pi) terms cancel):
    #   log q = -0.5 log(2 pi) - 0.5 logvar - 0.5 (z - mu)^2 / var     ((z - mu)^2 / var = eps^2)
    #   log p = -0.5 log(2 pi) - 0.5 z^2
    log_ratio = (-0.5 * logvar - 0.5 * eps ** 2 + 0.5 * z ** 2).sum(axis=1)
    estimate, se = log_ratio.mean(), log_ratio.std(ddof=1) / math.sqrt(n)
    closed_form = float(losses.kl_per_example(mu[None], logvar[None])[0])
    assert abs(estimate - closed_form) < 5 * se, (estimate, closed_form, se)
    kl, _, _ = losses.kl_standard_normal(np.tile(mu, (4, 1)), np.tile(logvar, (4, 1)))
    assert kl == pytest.approx(closed_form, rel=1e-14)          # the batch mean of identical rows


# --------------------------------------------------------------------------------------------
# dtype
# --------------------------------------------------------------------------------------------


def test_losses_keep_float32():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3, 4)).astype(np.float32)
    x = rng.uniform(0, 1, (3, 4)).astype(np.float32)
    for fn in (losses.l2_reconstruction, losses.bernoulli_reconstruction):
        loss, g = fn(logits, x)
        assert isinstance(loss, float) and g.dtype == np.float32
    kl, dmu, dlv = losses.kl_standard_normal(logits, x)
    assert isinstance(kl, float) and dmu.dtype == dlv.dtype == np.float32
    for per_example in (losses.l2_per_example, losses.bernoulli_per_example):
        assert per_example(logits, x).dtype == np.float32
    assert losses.kl_per_example(logits, x).dtype == np.float32
    _, g = losses.softmax_cross_entropy(logits, np.array([0, 1, 3]))
    assert g.dtype == np.float32
