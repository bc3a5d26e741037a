"""Tests for npvae.models: the reparameterization step, the Autoencoder and the VAE.

Gradient checks of whole models, a VAE computed by hand, the sampler's moments, an independent
re-computation of the reported loss, float32 throughout, overfitting a tiny batch, clear errors
for bad input, and the pinned constructor API.
"""

from __future__ import annotations

import inspect
import math
import re

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from npvae import fast
from npvae.gradcheck import TOLERANCE, check_model, check_reparameterize
from npvae.layers import Dense, Layer, Sequential
from npvae.models import VAE, Autoencoder, Reparameterize
from npvae.optim import Adam

FAST = settings(max_examples=25, deadline=None, database=None)
LN2, LN3 = math.log(2), math.log(3)
SMOOTH = ("tanh", "sigmoid", "softplus")


def assume_checkable(report, grads) -> None:
    """Skip draws where some parameter's whole gradient is tiny (e.g. the batch cancels it out).

    rel_error compares each array relative to its own largest entry, and central differences
    carry a rounding noise of about 1e-16 * |loss| / h = 1e-11 * |loss|: an array whose true
    gradient is ~1e-6 would be judged on noise. About 1% of random draws are like that.
    """
    scale = max(1.0, abs(report["loss"]))
    assume(min(float(np.abs(g).max()) for g in grads.values()) > 1e-4 * scale)


def assert_rows_pass(rows) -> None:
    assert rows
    bad = [(r.component, r.parameter, r.shape, r.error) for r in rows if not r.error <= TOLERANCE]
    assert not bad, f"gradient check errors above {TOLERANCE}: {bad}"


# --------------------------------------------------------------------------------------------
# The reparameterization step
# --------------------------------------------------------------------------------------------


@FAST
@given(n=st.integers(1, 5), z=st.integers(1, 4), seed=st.integers(0, 2**32 - 1), spread=st.floats(0.1, 3))
def test_reparameterize_gradients_match_central_differences(n, z, seed, spread):
    rng = np.random.default_rng(seed)
    mu, logvar = rng.standard_normal((n, z)) * spread, rng.standard_normal((n, z)) * spread
    rows = check_reparameterize(mu, logvar, rng.standard_normal((n, z)), rng)
    assert [r.parameter for r in rows] == ["mu", "logvar"]
    assert_rows_pass(rows)


def test_reparameterize_by_hand_and_does_not_write_into_dout():
    step = Reparameterize()
    # mu = 1, logvar = ln 4 -> sigma = exp(0.5 ln 4) = 2; eps = 0.5 -> z = 1 + 2 * 0.5 = 2
    # mu = -1, logvar = 0 -> sigma = 1;                  eps = -2 -> z = -1 - 2 = -3
    z = step.forward(np.array([[1.0, -1.0]]), np.array([[math.log(4), 0.0]]), np.array([[0.5, -2.0]]))
    np.testing.assert_allclose(z, [[2.0, -3.0]], rtol=1e-15)
    dz = np.array([[1.0, 3.0]])
    before = dz.copy()
    dmu, dlogvar = step.backward(dz)
    np.testing.assert_array_equal(dz, before)
    # dz/dmu = 1; dz/dlogvar = 0.5 sigma eps: 0.5 * 2 * 0.5 = 0.5 and 0.5 * 1 * (-2) = -1 (times dz = 3 -> -3)
    np.testing.assert_allclose(dmu, [[1.0, 3.0]])
    np.testing.assert_allclose(dlogvar, [[0.5, -3.0]], rtol=1e-15)


MOMENT_MU = np.array([1.0, -2.0, 0.5])
MOMENT_LOGVAR = np.array([math.log(0.25), math.log(4.0), 0.0])


def assert_moments(z: np.ndarray, mu: np.ndarray, logvar: np.ndarray, n_se: float = 5.0) -> None:
    """Empirical mean and variance of the rows of z equal mu and exp(logvar), within n_se standard
    errors (Var of the mean = sigma^2 / n, Var of the sample variance ~ 2 sigma^4 / n)."""
    n = z.shape[0]
    var = np.exp(logvar)
    se_mean, se_var = np.sqrt(var / n), var * math.sqrt(2 / n)
    mean_hat, var_hat = z.mean(axis=0), z.var(axis=0, ddof=1)
    assert (np.abs(mean_hat - mu) < n_se * se_mean).all(), f"mean {mean_hat}, expected {mu} +- {n_se * se_mean}"
    assert (np.abs(var_hat - var) < n_se * se_var).all(), f"variance {var_hat}, expected {var} +- {n_se * se_var}"


def assert_not_variance_squared(z: np.ndarray, logvar: np.ndarray) -> None:
    """The known bug sigma = exp(logvar) gives Var z = exp(logvar)^2; rule it out where logvar != 0."""
    n, var_hat = z.shape[0], z.var(axis=0, ddof=1)
    wrong = np.exp(logvar) ** 2
    for lv, got, w in zip(logvar, var_hat, wrong):
        if lv != 0:
            assert abs(got - w) > 10 * w * math.sqrt(2 / n), f"variance {got} looks like exp(logvar)^2 = {w}"


def test_reparameterize_sample_moments():
    n = 100_000
    rng = np.random.default_rng(11)
    eps = rng.standard_normal((n, 3))
    z = Reparameterize().forward(np.tile(MOMENT_MU, (n, 1)), np.tile(MOMENT_LOGVAR, (n, 1)), eps)
    assert_moments(z, MOMENT_MU, MOMENT_LOGVAR)
    assert_not_variance_squared(z, MOMENT_LOGVAR)


def test_moment_checks_catch_sigma_equal_to_exp_logvar():
    """The moment assertions above can fail: a sampler with the known bug is rejected."""
    class SigmaBug(Reparameterize):
        def forward(self, mu, logvar, eps):
            self.eps, self.sigma = eps, np.exp(logvar)          # wrong: sigma^2 would be exp(2 logvar)
            return mu + self.sigma * eps

    n = 100_000
    eps = np.random.default_rng(12).standard_normal((n, 3))
    z = SigmaBug().forward(np.tile(MOMENT_MU, (n, 1)), np.tile(MOMENT_LOGVAR, (n, 1)), eps)
    with pytest.raises(AssertionError, match="variance"):
        assert_moments(z, MOMENT_MU, MOMENT_LOGVAR)
    with pytest.raises(AssertionError, match="exp\\(logvar\\)\\^2"):
        assert_not_variance_squared(z, MOMENT_LOGVAR)


def _vae_with_fixed_posterior(dtype, seed=3) -> VAE:
    """A VAE whose encoder outputs mu = MOMENT_MU, logvar = MOMENT_LOGVAR for every image."""
    vae = VAE(5, [4], 3, activation="tanh", dtype=dtype, rng=seed)
    vae.params["head.W"][...] = 0
    vae.params["head.b"][...] = np.concatenate([MOMENT_MU, MOMENT_LOGVAR])
    return vae


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("method", ["loss", "loss_and_grads"])
def test_vae_samples_z_with_the_right_moments(method, dtype):
    vae = _vae_with_fixed_posterior(dtype)
    n = 50_000
    x = np.full((n, 5), 0.5)
    mu, logvar = vae.encode(x[:2])
    np.testing.assert_allclose(mu, np.tile(MOMENT_MU, (2, 1)), rtol=1e-6)
    np.testing.assert_allclose(logvar, np.tile(MOMENT_LOGVAR, (2, 1)), rtol=1e-6, atol=1e-7)
    getattr(vae, method)(x)                 # eps=None: the model draws eps from its own generator
    z = vae.decoder.layers[0].x             # the first decoder layer keeps its input z for dW
    assert z.shape == (n, 3) and z.dtype == dtype
    z = z.astype(np.float64)
    assert_moments(z, MOMENT_MU, MOMENT_LOGVAR)
    assert_not_variance_squared(z, MOMENT_LOGVAR)
    np.testing.assert_allclose(vae.reparam.sigma[0], np.exp(0.5 * MOMENT_LOGVAR), rtol=1e-6)


def test_vae_sample_draws_from_the_prior_with_temperature():
    vae = VAE(4, [3], 2, rng=0, dtype=np.float64)
    images = vae.sample(40_000, rng=1, temperature=0.5)
    assert images.shape == (40_000, 4) and ((images > 0) & (images < 1)).all()
    z = vae.decoder.layers[0].x
    assert_moments(z, np.zeros(2), np.full(2, math.log(0.25)))


# --------------------------------------------------------------------------------------------
# Gradient checks of whole models (float64, fixed eps)
# --------------------------------------------------------------------------------------------


@st.composite
def model_cases(draw):
    return dict(d=draw(st.integers(1, 5)), hidden=draw(st.lists(st.integers(1, 4), max_size=2)),
                z=draw(st.integers(1, 3)), n=draw(st.integers(1, 3)), act=draw(st.sampled_from(SMOOTH)),
                seed=draw(st.integers(0, 2**32 - 1)))


@pytest.mark.parametrize("likelihood", ["l2", "bernoulli"])
@FAST
@given(case=model_cases(), beta=st.floats(0.0, 2.0))
def test_vae_gradients_match_central_differences(likelihood, case, beta):
    rng = np.random.default_rng(case["seed"])
    vae = VAE(case["d"], case["hidden"], case["z"], likelihood=likelihood, beta=beta, activation=case["act"],
              dtype=np.float64, rng=rng)
    x = rng.uniform(0, 1, (case["n"], case["d"]))
    eps = rng.standard_normal((case["n"], case["z"]))
    assume_checkable(*vae.loss_and_grads(x, eps))
    rows = check_model(vae, x, eps)
    assert {r.parameter for r in rows} == set(vae.params)
    assert_rows_pass(rows)


@pytest.mark.parametrize("likelihood", ["l2", "bernoulli"])
@FAST
@given(case=model_cases())
def test_autoencoder_gradients_match_central_differences(likelihood, case):
    rng = np.random.default_rng(case["seed"])
    ae = Autoencoder(case["d"], case["hidden"], case["z"], activation=case["act"], dtype=np.float64, rng=rng,
                     likelihood=likelihood)
    x = rng.uniform(0, 1, (case["n"], case["d"]))
    assume_checkable(*ae.loss_and_grads(x))
    rows = check_model(ae, x)
    assert {r.parameter for r in rows} == set(ae.params)
    assert_rows_pass(rows)


@pytest.mark.parametrize("act", ["relu", "leaky_relu"])
@pytest.mark.parametrize("likelihood", ["l2", "bernoulli"])
@pytest.mark.parametrize("kind", ["vae", "ae"])
def test_model_gradients_with_relu_family_fixed_seed(kind, likelihood, act):
    rng = np.random.default_rng(2024)
    x = rng.uniform(0, 1, (3, 6))
    if kind == "vae":
        model = VAE(6, [5, 4], 2, likelihood=likelihood, beta=0.8, activation=act, dtype=np.float64, rng=rng)
        rows = check_model(model, x, rng.standard_normal((3, 2)))
    else:
        model = Autoencoder(6, [5, 4], 2, activation=act, dtype=np.float64, rng=rng, likelihood=likelihood)
        rows = check_model(model, x)
    assert_rows_pass(rows)


# --------------------------------------------------------------------------------------------
# A tiny VAE by hand
# --------------------------------------------------------------------------------------------


def _hand_vae(likelihood: str, beta: float) -> VAE:
    vae = VAE(2, [2], 1, likelihood=likelihood, beta=beta, activation="relu", dtype=np.float64, rng=0)
    assert sorted(vae.params) == sorted(["enc0.W", "enc0.b", "head.W", "head.b",
                                         "dec0.W", "dec0.b", "dec1.W", "dec1.b"])
    p = vae.params
    p["enc0.W"][...] = [[1, -1], [2, 0.5]]
    p["enc0.b"][...] = [0, 0.5]
    p["head.W"][...] = [[0.5, 0], [3, 7]]
    p["head.b"][...] = [0, math.log(4)]
    p["dec0.W"][...] = [[1, -1]]
    p["dec0.b"][...] = [0, 0]
    p["dec1.W"][...] = [[LN3, -LN3], [5, 5]]
    p["dec1.b"][...] = [0, 0]
    return vae


# x = [1, 0]
# encoder: x @ enc0.W + enc0.b = [1*1 + 0*2, 1*(-1) + 0*0.5] + [0, 0.5] = [1, -0.5]; relu -> h = [1, 0]
# head:    h @ head.W + head.b = [1*0.5 + 0*3, 1*0 + 0*7] + [0, ln 4] = [0.5, ln 4] -> mu = 0.5, logvar = ln 4
# sample:  sigma = exp(0.5 ln 4) = 2; eps = 0.25 -> z = 0.5 + 2 * 0.25 = 1
# decoder: z @ dec0.W = [1, -1]; relu -> [1, 0]; [1, 0] @ dec1.W = [ln 3, -ln 3] = logits
#          x_hat = sigmoid(logits) = [3/4, 1/4]
# recon l2:        (1 - 3/4)^2 + (0 - 1/4)^2 = 1/16 + 1/16 = 0.125
# recon bernoulli: -log(3/4) - log(1 - 1/4) = 2 log(4/3)
# KL:              -0.5 (1 + ln 4 - 0.5^2 - e^{ln 4}) = -0.5 (ln 4 - 3.25) = 1.625 - ln 2
# Backward (N = 1):
#   dlogits l2        = 2 (x_hat - x) x_hat (1 - x_hat) = 2 * [-1/4, 1/4] * 3/16 = [-3/32, 3/32]
#   dlogits bernoulli = x_hat - x = [-1/4, 1/4]
#   write dlogits = [-a, a]; dec1.b grad = [-a, a]; dec1.W grad = [1, 0]^T [-a, a] = [[-a, a], [0, 0]]
#   d(decoder hidden) = [-a, a] @ dec1.W^T = [-a ln 3 - a ln 3, -5a + 5a] = [-2a ln 3, 0]; relu mask [1, 0]
#   dz = [-2a ln 3, 0] @ dec0.W^T = -2a ln 3
#   dmu     = dz + beta * mu = -2a ln 3 + 0.5 beta
#   dlogvar = dz * 0.5 sigma eps + beta * 0.5 (e^logvar - 1) = -2a ln 3 * 0.25 + 1.5 beta
#   head.b grad = [dmu, dlogvar]; head.W grad = h^T [dmu, dlogvar] = [[dmu, dlogvar], [0, 0]]
#   dh = [dmu, dlogvar] @ head.W^T = [0.5 dmu, 3 dmu + 7 dlogvar]; relu mask [1, 0] -> [0.5 dmu, 0]
#   enc0.b grad = [0.5 dmu, 0]; enc0.W grad = x^T [0.5 dmu, 0] = [[0.5 dmu, 0], [0, 0]]
@pytest.mark.parametrize("beta", [1.0, 0.5])
@pytest.mark.parametrize("likelihood, recon, a", [("l2", 0.125, 3 / 32), ("bernoulli", 2 * math.log(4 / 3), 0.25)])
def test_tiny_vae_by_hand(likelihood, recon, a, beta):
    vae = _hand_vae(likelihood, beta)
    x, eps = np.array([[1.0, 0.0]]), np.array([[0.25]])
    mu, logvar = vae.encode(x)
    np.testing.assert_allclose(mu, [[0.5]], rtol=1e-15)
    np.testing.assert_allclose(logvar, [[math.log(4)]], rtol=1e-15)
    np.testing.assert_allclose(vae.decode(np.array([[1.0]])), [[0.75, 0.25]], rtol=1e-14)
    kl = 1.625 - LN2
    report, grads = vae.loss_and_grads(x, eps)
    assert report["recon"] == pytest.approx(recon, rel=1e-13)
    assert report["kl"] == pytest.approx(kl, rel=1e-13)
    assert report["loss"] == pytest.approx(recon + beta * kl, rel=1e-13)
    assert vae.loss(x, eps) == pytest.approx(report, rel=1e-13)
    dmu = -2 * a * LN3 + 0.5 * beta
    dlogvar = -2 * a * LN3 * 0.25 + 1.5 * beta
    expected = {"dec1.b": [-a, a], "dec1.W": [[-a, a], [0, 0]],
                "dec0.b": [-2 * a * LN3, 0], "dec0.W": [[-2 * a * LN3, 0]],
                "head.b": [dmu, dlogvar], "head.W": [[dmu, dlogvar], [0, 0]],
                "enc0.b": [0.5 * dmu, 0], "enc0.W": [[0.5 * dmu, 0], [0, 0]]}
    for name, want in expected.items():
        np.testing.assert_allclose(grads[name], want, rtol=1e-13, atol=1e-15, err_msg=name)


# --------------------------------------------------------------------------------------------
# The reported loss, recomputed independently
# --------------------------------------------------------------------------------------------

NP_ACT = {"relu": lambda a: np.maximum(a, 0), "leaky_relu": lambda a: np.where(a > 0, a, 0.01 * a),
          "tanh": np.tanh, "sigmoid": lambda a: 1 / (1 + np.exp(-a)), "softplus": lambda a: np.log1p(np.exp(a))}


def reference_vae_forward(vae: VAE, x: np.ndarray, eps: np.ndarray):
    """The VAE's forward pass written again from its parameters, with plain NumPy."""
    p, act, zd = vae.params, NP_ACT[vae.activation], vae.latent_dim
    h = x
    for i in range(len(vae.hidden_dims)):
        h = act(h @ p[f"enc{i}.W"] + p[f"enc{i}.b"])
    out = h @ p["head.W"] + p["head.b"]
    mu, logvar = out[:, :zd], out[:, zd:]
    z = mu + np.exp(0.5 * logvar) * eps
    d, last = z, len(vae.decoder_hidden_dims)
    for i in range(last):
        d = act(d @ p[f"dec{i}.W"] + p[f"dec{i}.b"])
    return mu, logvar, z, d @ p[f"dec{last}.W"] + p[f"dec{last}.b"]


def per_example_recon(likelihood: str, logits: np.ndarray, x: np.ndarray) -> np.ndarray:
    x_hat = 1 / (1 + np.exp(-logits))
    if likelihood == "l2":
        return ((x - x_hat) ** 2).sum(axis=1)
    return -(x * np.log(x_hat) + (1 - x) * np.log(1 - x_hat)).sum(axis=1)


@pytest.mark.parametrize("act", ["tanh", "relu", "softplus"])
@pytest.mark.parametrize("likelihood", ["l2", "bernoulli"])
def test_vae_report_matches_an_independent_computation(likelihood, act):
    rng = np.random.default_rng(7)
    beta = 0.3
    vae = VAE(8, [6, 5], 3, likelihood=likelihood, beta=beta, activation=act, dtype=np.float64, rng=rng)
    x, eps = rng.uniform(0, 1, (6, 8)), rng.standard_normal((6, 3))
    mu_ref, logvar_ref, z_ref, logits_ref = reference_vae_forward(vae, x, eps)

    mu, logvar = vae.encode(x)
    np.testing.assert_allclose(mu, mu_ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(logvar, logvar_ref, rtol=1e-12, atol=1e-14)
    z = mu + np.exp(0.5 * logvar) * eps
    logits = vae.decode_logits(z)                       # the model's decoder on our z
    np.testing.assert_allclose(logits, logits_ref, rtol=1e-12, atol=1e-14)

    recon = per_example_recon(likelihood, logits, x).mean()
    kl = (-0.5 * (1 + logvar - mu ** 2 - np.exp(logvar)).sum(axis=1)).mean()
    for report in (vae.loss_and_grads(x, eps)[0], vae.loss(x, eps)):
        assert set(report) == {"loss", "recon", "kl"}
        assert report["recon"] == pytest.approx(recon, rel=1e-12)
        assert report["kl"] == pytest.approx(kl, rel=1e-12)
        assert report["loss"] == pytest.approx(report["recon"] + beta * report["kl"], rel=1e-15)
        assert report["loss"] == pytest.approx(recon + beta * kl, rel=1e-12)


def test_autoencoder_report_matches_an_independent_computation():
    rng = np.random.default_rng(8)
    for likelihood in ("l2", "bernoulli"):
        ae = Autoencoder(7, [5], 2, activation="tanh", dtype=np.float64, rng=rng, likelihood=likelihood)
        x = rng.uniform(0, 1, (4, 7))
        p = ae.params
        z = np.tanh(x @ p["enc0.W"] + p["enc0.b"]) @ p["enc1.W"] + p["enc1.b"]
        np.testing.assert_allclose(ae.encode(x), z, rtol=1e-12, atol=1e-14)
        logits = np.tanh(z @ p["dec0.W"] + p["dec0.b"]) @ p["dec1.W"] + p["dec1.b"]
        recon = per_example_recon(likelihood, logits, x).mean()
        report, _ = ae.loss_and_grads(x)
        assert set(report) == {"loss", "recon"}
        assert report["recon"] == pytest.approx(recon, rel=1e-12)
        assert report["loss"] == report["recon"]
        assert ae.loss(x) == pytest.approx(report, rel=1e-13)


def test_loss_and_grads_with_the_same_eps_is_deterministic_and_draws_nothing():
    rng = np.random.default_rng(9)
    vae = VAE(6, [5], 2, likelihood="bernoulli", activation="tanh", dtype=np.float64, rng=1)
    x, eps = rng.uniform(0, 1, (4, 6)), rng.standard_normal((4, 2))
    state = vae.rng.bit_generator.state
    r1, g1 = vae.loss_and_grads(x, eps)
    g1 = {k: v.copy() for k, v in g1.items()}
    r2, g2 = vae.loss_and_grads(x, eps)
    assert vae.rng.bit_generator.state == state        # a given eps means no draw at all
    assert r1 == r2
    for k in g1:
        np.testing.assert_array_equal(g1[k], g2[k], err_msg=k)
    # Without eps the model draws a fresh one each call: the results differ ...
    r3, _ = vae.loss_and_grads(x)
    r4, _ = vae.loss_and_grads(x)
    assert r3 != r4 and vae.rng.bit_generator.state != state
    # ... and are reproducible from the seed.
    again = VAE(6, [5], 2, likelihood="bernoulli", activation="tanh", dtype=np.float64, rng=1)
    assert again.loss_and_grads(x)[0] == r3


# --------------------------------------------------------------------------------------------
# float32 throughout
# --------------------------------------------------------------------------------------------


def _arrays_in(layer: Layer):
    for name, value in vars(layer).items():
        if isinstance(value, np.ndarray):
            yield name, value
        elif isinstance(value, dict):
            yield from ((f"{name}.{k}", v) for k, v in value.items() if isinstance(v, np.ndarray))


def _all_layers(model):
    parts = [model.encoder, getattr(model, "head", None), getattr(model, "reparam", None), model.decoder]
    for part in parts:
        if isinstance(part, Sequential):
            yield from part.layers
        elif part is not None:
            yield part


@pytest.mark.parametrize("act", ["relu", "leaky_relu", "tanh", "sigmoid", "softplus"])
@pytest.mark.parametrize("kind", ["vae", "ae"])
def test_no_float64_anywhere_in_a_float32_model(kind, act):
    rng = np.random.default_rng(0)
    if kind == "vae":
        model = VAE(6, [5, 4], 3, likelihood="bernoulli", activation=act, rng=1)
    else:
        model = Autoencoder(6, [5, 4], 3, activation=act, rng=1)
    assert model.dtype == np.float32                     # the default
    x = rng.uniform(0, 1, (4, 6))                        # float64 data, cast by the model
    eps = rng.standard_normal((4, 3))                    # float64 eps, cast too
    opt = Adam(model.params, lr=1e-3)
    for _ in range(2):
        report, grads = model.loss_and_grads(x, eps) if kind == "vae" else model.loss_and_grads(x)
        opt.step(grads)
        report, grads = model.loss_and_grads(x)          # the model's own draw of eps
        opt.step(grads)
    assert all(type(v) is float for v in report.values())
    for k in model.params:
        assert model.params[k].dtype == np.float32, k
        assert grads[k].dtype == np.float32, k
    assert all(a.dtype == np.float32 for a in [*opt.m.values(), *opt.v.values()])
    # every array any layer keeps (inputs, masks, outputs, sigma, eps) is float32 (or a boolean mask)
    checked = 0
    for layer in _all_layers(model):
        for name, a in _arrays_in(layer):
            assert a.dtype in (np.float32, np.bool_), f"{layer!r}.{name} is {a.dtype}"
            checked += 1
    assert checked >= 15                                  # W, b, grads, cached inputs and outputs
    enc = model.encode(x)
    for a in (enc if kind == "vae" else (enc,)):
        assert a.dtype == np.float32
    z = np.zeros((2, 3))                                 # float64 z
    assert model.decode(z).dtype == np.float32 and model.decode_logits(z).dtype == np.float32
    if kind == "vae":
        assert model.sample(3, rng=0).dtype == np.float32
        assert model.reconstruct(x).dtype == np.float32


# --------------------------------------------------------------------------------------------
# Overfitting a tiny batch
# --------------------------------------------------------------------------------------------


def _random_binary_images(n=16, d=64, seed=0):
    return (np.random.default_rng(seed).random((n, d)) < 0.5).astype(np.float32)


def _four_prototypes(n=16, d=64, seed=0):
    """16 binary images, 4 distinct patterns each repeated 4 times: low-entropy data (2 bits)."""
    protos = (np.random.default_rng(seed).random((4, d)) < 0.5).astype(np.float32)
    return protos[np.arange(n) % 4]


def _train(model, x, steps, lr):
    opt = Adam(model.params, lr=lr)
    for _ in range(steps):
        _, grads = model.loss_and_grads(x)
        opt.step(grads)


def _mean_report(vae: VAE, x, draws=50):
    reports = [vae.loss(x) for _ in range(draws)]
    return {k: float(np.mean([r[k] for r in reports])) for k in reports[0]}


def test_autoencoder_overfits_a_tiny_batch():
    # 16 random binary 64-pixel images, L2 loss. At init x_hat ~ 0.5, so the loss is ~64 * 0.25 = 16.
    x = _random_binary_images()
    ae = Autoencoder(64, [32], 4, activation="tanh", rng=0)
    before = ae.loss(x)["loss"]
    _train(ae, x, steps=300, lr=1e-2)
    after = ae.loss(x)["loss"]
    assert before > 10
    assert after < 0.1 * before, (before, after)


def test_vae_overfits_a_tiny_batch():
    # Full loss (recon + KL, beta = 1, Bernoulli likelihood), averaged over 50 draws of eps.
    # The KL term has a floor: to tell k distinct images apart the code must carry about log k
    # nats, in practice more (on 16 distinct random images a VAE of this size ends near 6 nats of
    # KL out of an initial ~50-60, which caps the drop near 88%). So the data here is low-entropy,
    # 4 distinct patterns (log 4 = 1.4 nats), on which the full loss honestly falls by > 90%.
    x = _four_prototypes()
    vae = VAE(64, [32], 4, likelihood="bernoulli", beta=1.0, activation="relu", rng=0)
    before = _mean_report(vae, x)
    _train(vae, x, steps=600, lr=3e-3)
    after = _mean_report(vae, x)
    assert before["loss"] > 40
    assert after["loss"] < 0.1 * before["loss"], (before, after)


def test_vae_reconstruction_term_overfits_distinct_images():
    # On 16 distinct random images the reconstruction term alone (beta = 1, full objective trained)
    # also falls by more than 90%; the KL term is what keeps the total above 10% there.
    x = _random_binary_images()
    vae = VAE(64, [32], 4, likelihood="bernoulli", beta=1.0, activation="relu", rng=0)
    before = _mean_report(vae, x)
    _train(vae, x, steps=600, lr=3e-3)
    after = _mean_report(vae, x)
    assert after["recon"] < 0.1 * before["recon"], (before, after)


# --------------------------------------------------------------------------------------------
# Bad input: a clear ValueError naming the expected and the actual shape or dtype
# --------------------------------------------------------------------------------------------


def _models(likelihood="l2"):
    return [VAE(6, [4], 2, likelihood=likelihood, rng=0), Autoencoder(6, [4], 2, rng=0, likelihood=likelihood)]


def _calls(model):
    yield "encode", model.encode
    yield "loss", model.loss
    yield "loss_and_grads", model.loss_and_grads
    if isinstance(model, VAE):
        yield "reconstruct", model.reconstruct


def _assert_all_calls_raise(x, pattern, likelihood="l2"):
    for model in _models(likelihood):
        for name, call in _calls(model):
            with pytest.raises(ValueError, match=pattern):
                call(x)


@pytest.mark.parametrize("shape", [(3, 5), (3, 7), (6,), (3, 6, 1), (2, 2, 3)])
def test_wrong_shape_is_a_clear_error(shape):
    # names the expected shape (N, 6) and the actual one
    _assert_all_calls_raise(np.full(shape, 0.5), re.escape("(N, 6)") + ".*" + re.escape(str(shape)))


def test_empty_batch_is_an_error():
    _assert_all_calls_raise(np.zeros((0, 6)), "empty")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_is_an_error(bad):
    x = np.full((3, 6), 0.5)
    x[1, 2] = bad
    _assert_all_calls_raise(x, "NaN or inf")


@pytest.mark.parametrize("dtype", [np.int64, np.uint8, np.int32, np.bool_])
def test_integer_input_is_an_error(dtype):
    # names the expected kind (floating point) and the actual dtype
    _assert_all_calls_raise(np.ones((3, 6), dtype=dtype), f"floating.*{np.dtype(dtype).name}")


@pytest.mark.parametrize("value", [255.0, -0.5, 1.0001])
def test_targets_outside_unit_interval_are_an_error_for_bernoulli(value):
    x = np.full((3, 6), 0.5)
    x[0, 0] = value
    _assert_all_calls_raise(x, re.escape("[0, 1]") + ".*" + "bernoulli", likelihood="bernoulli")


@pytest.mark.parametrize("bad, pattern", [(np.nan, "NaN or inf"), (np.inf, "NaN or inf"), (1.5, r"\[0, 1\]"),
                                          (-0.25, r"\[0, 1\]")])
def test_check_data_names_the_data_set_and_the_problem(bad, pattern):
    for model in _models():
        images = np.full((5, 6), 0.5, dtype=np.float32)
        model.check_data(images, "train_images")                    # fine: no error
        model.check_data(np.full((5, 6), 255, dtype=np.uint8))        # uint8 is divided by 255 later
        images[3, 4] = bad
        with pytest.raises(ValueError, match="train_images.*" + pattern):
            model.check_data(images, "train_images")
        for shape in [(0, 6), (5, 7), (6,)]:
            with pytest.raises(ValueError, match=re.escape("(N, 6)")):
                model.check_data(np.zeros(shape), "train_images")


@pytest.mark.parametrize("kind", ["vae", "ae"])
def test_the_twin_skips_the_checks_and_computes_the_same(kind):
    # fit checks its data once and steps on the fast twin, which checks nothing
    rng = np.random.default_rng(0)
    x = rng.random((4, 6)).astype(np.float32)
    eps = rng.standard_normal((4, 2)).astype(np.float32)
    results = []
    for twin in (False, True):
        model = VAE(6, [4], 2, rng=0) if kind == "vae" else Autoencoder(6, [4], 2, rng=0)
        step = fast.twin(model) if twin else model
        report, grads = step.loss_and_grads(x, eps) if kind == "vae" else step.loss_and_grads(x)
        results.append((report, {k: g.copy() for k, g in grads.items()}))
    assert results[0][0] == results[1][0]
    for k in results[0][1]:
        np.testing.assert_array_equal(results[0][1][k], results[1][1][k])
    # and the check is what stands between bad input and the model: without it, no error
    bad = np.full((4, 6), 255.0, dtype=np.float32)
    with pytest.raises(ValueError, match=re.escape("[0, 1]")):
        model.loss_and_grads(bad, eps) if kind == "vae" else model.loss_and_grads(bad)
    step.loss_and_grads(bad, eps) if kind == "vae" else step.loss_and_grads(bad)


def test_config_is_a_copy():
    model = VAE(6, [4], 2, rng=0)
    cfg = model.config()
    cfg["hidden_dims"].append(99)
    cfg["decoder_hidden_dims"].append(99)
    assert model.hidden_dims == [4] and model.decoder_hidden_dims == [4] and model.config()["hidden_dims"] == [4]


def test_non_finite_codes_draws_and_temperatures_are_errors():
    vae = VAE(6, [4], 2, rng=0)
    for bad in (np.nan, np.inf):
        z = np.zeros((3, 2))
        z[1, 0] = bad
        with pytest.raises(ValueError, match="z contains NaN or inf"):
            vae.decode(z)
        with pytest.raises(ValueError, match="eps contains NaN or inf"):
            vae.loss(np.full((3, 6), 0.5), eps=z)
    for t in (-1.0, np.nan, np.inf):
        with pytest.raises(ValueError, match="temperature"):
            vae.sample(3, rng=0, temperature=t)
    assert vae.sample(3, rng=0, temperature=0).shape == (3, 6)
    with pytest.raises(ValueError, match="batch_size"):
        vae.codes(np.full((3, 6), 0.5), batch_size=0)


@pytest.mark.parametrize("eps_shape", [(3, 3), (2, 2), (3,), (3, 2, 1), (6,)])
def test_eps_of_the_wrong_shape_is_an_error(eps_shape):
    vae = VAE(6, [4], 2, rng=0)
    x = np.full((3, 6), 0.5)
    pattern = re.escape("(3, 2)") + ".*" + re.escape(str(eps_shape))
    with pytest.raises(ValueError, match=pattern):
        vae.loss_and_grads(x, eps=np.zeros(eps_shape))
    with pytest.raises(ValueError, match=pattern):
        vae.loss(x, eps=np.zeros(eps_shape))


@pytest.mark.parametrize("model", _models(), ids=["vae", "ae"])
def test_latent_of_the_wrong_shape_is_an_error(model):
    with pytest.raises(ValueError, match=re.escape("(N, 2)") + ".*" + re.escape("(4, 3)")):
        model.decode(np.zeros((4, 3)))
    with pytest.raises(ValueError, match=re.escape("(N, 2)") + ".*" + re.escape("(2,)")):
        model.decode(np.zeros(2))


def test_bad_constructor_arguments_are_errors():
    with pytest.raises(ValueError, match="poisson"):          # ("gaussian" is a likelihood since issue 15)
        VAE(4, [3], 2, likelihood="poisson")
    with pytest.raises(ValueError, match="float16"):
        VAE(4, [3], 2, dtype=np.float16)
    with pytest.raises(ValueError, match="beta"):
        VAE(4, [3], 2, beta=-1.0)
    with pytest.raises(ValueError, match="latent_dim=0"):
        Autoencoder(4, [3], 0)
    with pytest.raises(ValueError, match="swish"):
        Autoencoder(4, [3], 2, activation="swish")
    with pytest.raises(TypeError):
        VAE(4, [3], 2, rng="seed")


# --------------------------------------------------------------------------------------------
# The pinned API
# --------------------------------------------------------------------------------------------


def _positional(cls):
    params = inspect.signature(cls).parameters.values()
    return [(p.name, p.default) for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]


def test_constructor_signatures():
    e = inspect.Parameter.empty
    assert _positional(VAE) == [("input_dim", e), ("hidden_dims", e), ("latent_dim", e), ("likelihood", "l2"),
                                ("beta", 1.0), ("activation", "relu"), ("dtype", np.float32), ("rng", None)]
    assert _positional(Autoencoder) == [("input_dim", e), ("hidden_dims", e), ("latent_dim", e),
                                        ("activation", "relu"), ("dtype", np.float32), ("rng", None)]
    vae = VAE(6, [4], 2, "bernoulli", 0.5, "tanh", np.float64, 3)          # all positional
    assert (vae.likelihood, vae.beta, vae.activation, vae.dtype) == ("bernoulli", 0.5, "tanh", np.float64)
    ae = Autoencoder(6, [4], 2, "tanh", np.float64, 3)
    assert (ae.activation, ae.dtype) == ("tanh", np.float64)


@pytest.mark.parametrize("cls", [VAE, Autoencoder])
def test_seeding(cls):
    a, b, c = cls(6, [5], 2, rng=42), cls(6, [5], 2, rng=42), cls(6, [5], 2, rng=43)
    g = cls(6, [5], 2, rng=np.random.default_rng(42))                    # a Generator works too
    assert list(a.params) == list(b.params) == list(c.params) == list(g.params)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k], err_msg=k)
        np.testing.assert_array_equal(a.params[k], g.params[k], err_msg=k)
    assert any(not np.array_equal(a.params[k], c.params[k]) for k in a.params)


@pytest.mark.parametrize("kind", ["vae", "ae"])
def test_params_are_live_arrays(kind):
    rng = np.random.default_rng(0)
    model = VAE(6, [5], 2, rng=1) if kind == "vae" else Autoencoder(6, [5], 2, rng=1)
    x = rng.uniform(0, 1, (4, 6)).astype(np.float32)
    arrays = dict(model.params)
    before = {k: v.copy() for k, v in arrays.items()}
    enc_before = model.encode(x)
    enc_before = enc_before[0].copy() if kind == "vae" else enc_before.copy()
    opt = Adam(model.params, lr=1e-2)
    _, grads = model.loss_and_grads(x, np.zeros((4, 2))) if kind == "vae" else model.loss_and_grads(x)
    assert set(grads) == set(model.params)
    for k in model.params:
        assert grads[k].shape == model.params[k].shape, k
    opt.step(grads)
    for k, v in model.params.items():
        assert v is arrays[k], k                                # the same array objects ...
        assert not np.array_equal(v, before[k]), k              # ... updated in place
    enc_after = model.encode(x)
    enc_after = enc_after[0] if kind == "vae" else enc_after
    assert not np.allclose(enc_after, enc_before)               # the layers see the update
    # writing into params is seen by the layers, too
    model.params["enc0.W"][...] = 0
    model.params["enc0.b"][...] = 0
    first = model.encoder.layers[0]
    assert isinstance(first, Dense) and np.shares_memory(first.params["W"], model.params["enc0.W"])
    assert (first.forward(x) == 0).all()


def test_encode_decode_and_report_types():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (5, 6))
    vae, ae = VAE(6, [4], 3, rng=0), Autoencoder(6, [4], 3, rng=0)
    out = vae.encode(x)
    assert isinstance(out, tuple) and len(out) == 2
    assert out[0].shape == out[1].shape == (5, 3)
    assert ae.encode(x).shape == (5, 3)
    for model in (vae, ae):
        x_hat = model.decode(rng.standard_normal((7, 3)))
        assert x_hat.shape == (7, 6) and ((x_hat > 0) & (x_hat < 1)).all()
    report, grads = vae.loss_and_grads(x)
    assert set(report) == {"loss", "recon", "kl"} and all(type(v) is float for v in report.values())
    assert grads.keys() == vae.params.keys() and all(grads[k] is vae.grads[k] for k in grads)
    report, grads = ae.loss_and_grads(x)
    assert set(report) == {"loss", "recon"} and all(type(v) is float for v in report.values())
    assert grads.keys() == ae.params.keys() and all(grads[k] is ae.grads[k] for k in grads)
    assert set(vae.loss(x)) == {"loss", "recon", "kl"} and set(ae.loss(x)) == {"loss", "recon"}


def test_decoder_mirrors_the_encoder():
    vae = VAE(784, [400, 200], 20)
    shapes = {k: v.shape for k, v in vae.params.items()}
    assert shapes == {"enc0.W": (784, 400), "enc0.b": (400,), "enc1.W": (400, 200), "enc1.b": (200,),
                      "head.W": (200, 40), "head.b": (40,),              # [mu | logvar]
                      "dec0.W": (20, 200), "dec0.b": (200,), "dec1.W": (200, 400), "dec1.b": (400,),
                      "dec2.W": (400, 784), "dec2.b": (784,)}
    ae = Autoencoder(784, [400, 200], 20)
    shapes = {k: v.shape for k, v in ae.params.items()}
    assert shapes == {"enc0.W": (784, 400), "enc0.b": (400,), "enc1.W": (400, 200), "enc1.b": (200,),
                      "enc2.W": (200, 20), "enc2.b": (20,),
                      "dec0.W": (20, 200), "dec0.b": (200,), "dec1.W": (200, 400), "dec1.b": (400,),
                      "dec2.W": (400, 784), "dec2.b": (784,)}
    assert vae.num_params == sum(v.size for v in vae.params.values())
    # an explicit decoder overrides the mirror
    custom = VAE(10, [8], 2, decoder_hidden_dims=[3, 4])
    assert [custom.params[f"dec{i}.W"].shape for i in range(3)] == [(2, 3), (3, 4), (4, 10)]


def test_grads_have_the_keys_and_shapes_of_params_after_backward():
    rng = np.random.default_rng(0)
    for model in (VAE(6, [5, 4], 2, rng=0), Autoencoder(6, [5, 4], 2, rng=0), VAE(6, [], 2, rng=0)):
        assert list(model.grads) == list(model.params)
        _, grads = model.loss_and_grads(rng.uniform(0, 1, (3, 6)))
        assert list(grads) == list(model.params)
        for k in grads:
            assert grads[k].shape == model.params[k].shape and np.isfinite(grads[k]).all(), k
        assert any(np.abs(g).max() > 0 for g in grads.values())
