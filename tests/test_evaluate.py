"""Tests for npvae.evaluate: ELBO, the IWAE log-likelihood, active units, the digit classifier
and its cache, and `evaluate_run` / the `npvae evaluate` command functions.

The full classifier (784-512-512-10 on all of MNIST) is trained only by the test marked slow.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npvae import classifier as C
from npvae import evaluate as E
from npvae import gradcheck, losses
from npvae.layers import sigmoid
from npvae.models import VAE, Autoencoder
from npvae.optim import Adam

TINY_SPEC = C.ClassifierSpec(sizes=(784, 16, 10), epochs=2, lr=3e-3, batch_size=128, train_size=2000, seed=3)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def latent_1d_data(n, likelihood, seed=0):
    """Images of 6 pixels generated from a 1-D latent (binary for Bernoulli, continuous for L2)."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 1))
    a = np.array([[3.0, -2.0, 1.5, -3.0, 2.5, 0.5]])
    b = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 0.0])
    p = sigmoid(z * a + b)
    if likelihood == "bernoulli":
        return (rng.random(p.shape) < p).astype(np.float64)
    return np.clip(p + 0.05 * rng.standard_normal(p.shape), 0, 1)


def exact_log_px(model, x, lo=-10.0, hi=10.0, points=20001):
    """log p(x) = log integral p(x|z) N(z; 0, 1) dz for a 1-D latent, on a grid, in log space.

    p(x|z) is computed independently of npvae.evaluate: Bernoulli from the binary cross-entropy,
    L2 from the Gaussian density N(x; sigmoid(logits), 1/2 I) written out in full.
    """
    zs = np.linspace(lo, hi, points)
    logits = model.decoder.forward(zs[:, None])                     # (G, D), float64
    if model.likelihood == "bernoulli":
        log_lik = -np.stack([losses.bernoulli_per_example(logits, np.broadcast_to(xi, logits.shape)) for xi in x])
    else:
        var = 0.5
        x_hat = sigmoid(logits)
        log_lik = np.stack([np.sum(-0.5 * np.log(2 * np.pi * var) - (xi - x_hat) ** 2 / (2 * var), axis=1)
                            for xi in x])
    log_joint = log_lik - 0.5 * zs ** 2 - 0.5 * np.log(2 * np.pi)  # (N, G)
    m = log_joint.max(axis=1, keepdims=True)
    dz = (hi - lo) / (points - 1)
    return (m + np.log(np.exp(log_joint - m).sum(axis=1, keepdims=True) * dz))[:, 0]


def trained_tiny_vae(likelihood, steps=600, seed=0):
    model = VAE(6, [16], 1, likelihood=likelihood, activation="tanh", dtype=np.float64, rng=seed)
    opt = Adam(model.params, lr=1e-2)
    data = latent_1d_data(512, likelihood)
    rng = np.random.default_rng(seed + 1)
    for _ in range(steps):
        model.loss_and_grads(data[rng.integers(0, 512, 64)])
        opt.step(model.grads)
    return model, data


def random_images(n, d, seed=0, binary=False):
    rng = np.random.default_rng(seed)
    x = rng.random((n, d))
    return (x < 0.3).astype(np.float32) if binary else x.astype(np.float32)


class StubClassifier:
    """A 'classifier' that returns fixed probabilities, to test the metrics by hand."""

    def __init__(self, proba_row):
        self.row = np.asarray(proba_row, dtype=np.float64)

    def predict_proba(self, x):
        return np.tile(self.row, (len(x), 1))


# --------------------------------------------------------------------------------------------
# The likelihood constant and log-mean-exp
# --------------------------------------------------------------------------------------------


def test_l2_density_constant_by_hand():
    # (D/2) log(pi) for D = 784: 392 * 1.1447298858494002
    c = E.nll_constant("l2", 784)
    assert c == pytest.approx(392 * 1.1447298858494002, abs=1e-9)
    assert c == pytest.approx(448.734115, abs=1e-6)
    assert E.nll_constant("bernoulli", 784) == 0.0
    # -log N(x; x_hat, I/2) written out equals the L2 loss plus that constant.
    rng = np.random.default_rng(0)
    x, logits = rng.random((3, 784)), rng.standard_normal((3, 784))
    x_hat = sigmoid(logits)
    neg_log_density = -np.sum(-0.5 * np.log(2 * np.pi * 0.5) - (x - x_hat) ** 2 / (2 * 0.5), axis=1)
    np.testing.assert_allclose(neg_log_density, losses.l2_per_example(logits, x) + c, rtol=1e-12)


def test_logmeanexp_is_stable():
    a = np.array([[-1e5, -1e5 - math.log(3)], [1e4, 1e4], [-np.inf, -np.inf], [-np.inf, 0.0]])
    with np.errstate(divide="ignore", over="ignore"):
        naive = np.log(np.mean(np.exp(a), axis=1))
    assert not np.isfinite(naive[:2]).any()           # the naive formula under/overflows
    out = E.logmeanexp(a, axis=1)
    np.testing.assert_allclose(out[:2], [-1e5 + math.log((1 + 1 / 3) / 2), 1e4], rtol=1e-12)
    assert out[2] == -np.inf and out[3] == pytest.approx(math.log(0.5))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-50, 50), min_size=1, max_size=20), st.floats(-1e6, 1e6))
def test_logmeanexp_matches_naive_and_shifts(values, shift):
    a = np.array(values)
    assert E.logmeanexp(a) == pytest.approx(np.log(np.mean(np.exp(a))), rel=1e-9, abs=1e-9)
    assert E.logmeanexp(a + shift) == pytest.approx(E.logmeanexp(a) + shift, rel=1e-9, abs=1e-6)


# --------------------------------------------------------------------------------------------
# ELBO and IWAE
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("likelihood", ["bernoulli", "l2"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_iwae_with_k1_equals_elbo_for_the_same_draws(likelihood, dtype):
    model = VAE(10, [8], 3, likelihood=likelihood, dtype=dtype, rng=0)
    x = random_images(40, 10, binary=likelihood == "bernoulli")
    eps = np.random.default_rng(1).standard_normal((40, 1, 3))
    neg_elbo = E.elbo_per_example(model, x, n_draws=1, eps=eps, kl_estimator="sampled")["neg_elbo"]
    log_px = E.log_px_iwae(model, x, k=1, eps=eps)
    np.testing.assert_allclose(-log_px, neg_elbo + E.nll_constant(likelihood, 10), rtol=1e-12, atol=1e-12)
    # The reconstruction part matches the training loss at the same z.
    mu, logvar = model.encode(x)
    z = mu + np.exp(0.5 * logvar) * eps[:, 0].astype(dtype)
    recon = losses.RECONSTRUCTION_PER_EXAMPLE[likelihood](model.decode_logits(z), x)
    got = E.elbo_per_example(model, x, n_draws=1, eps=eps)
    np.testing.assert_allclose(got["recon"], recon, rtol=1e-4 if dtype == np.float32 else 1e-10)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-10)   # float64 vs float32 KL
    np.testing.assert_allclose(got["kl"], losses.kl_per_example(mu, logvar), **tol)


def test_l2_nll_is_neg_elbo_plus_the_density_constant():
    """For a 784-pixel L2 model the NLL (K = 1) is recon + KL + (D/2) log pi = ... + 448.734."""
    model = VAE(784, [16], 2, likelihood="l2", rng=0)
    x = random_images(20, 784)
    eps = np.random.default_rng(2).standard_normal((20, 1, 2))
    parts = E.elbo_per_example(model, x, n_draws=1, eps=eps, kl_estimator="sampled")
    nll = -E.log_px_iwae(model, x, k=1, eps=eps)
    np.testing.assert_allclose(nll, parts["recon"] + parts["kl"] + 392 * math.log(math.pi), rtol=1e-12)
    assert np.all(nll - parts["neg_elbo"] == pytest.approx(448.734115, abs=1e-5))


def test_analytic_and_sampled_kl_agree_on_average():
    model = VAE(10, [8], 3, likelihood="bernoulli", dtype=np.float64, rng=0)
    x = random_images(50, 10, binary=True)
    analytic = E.elbo(model, x, n_draws=400, rng=0)
    sampled = E.elbo(model, x, n_draws=400, rng=0, kl_estimator="sampled")
    assert analytic["n_draws"] == 400
    assert sampled["kl"] == pytest.approx(analytic["kl"], abs=0.02)
    assert analytic["neg_elbo"] == pytest.approx(analytic["recon"] + analytic["kl"])
    assert np.isfinite(analytic["recon_at_mu"]) and analytic["neg_elbo_std_error"] > 0


def test_iwae_does_not_depend_on_batching():
    model = VAE(10, [8], 3, likelihood="bernoulli", rng=0)
    x = random_images(13, 10, binary=True)
    eps = np.random.default_rng(3).standard_normal((13, 37, 3))
    ref = E.log_px_iwae(model, x, k=37, eps=eps)
    for batch_size, chunk_rows in ((1, 1), (4, 10), (5, 100), (500, 5000)):
        np.testing.assert_allclose(E.log_px_iwae(model, x, k=37, eps=eps, batch_size=batch_size,
                                                 chunk_rows=chunk_rows), ref, rtol=1e-12)
    # The same seed gives the same estimate; the draws are not the model's generator.
    state = model.rng.bit_generator.state
    assert np.array_equal(E.log_px_iwae(model, x, 20, rng=5), E.log_px_iwae(model, x, 20, rng=5))
    assert model.rng.bit_generator.state == state


def test_iwae_is_non_decreasing_in_k():
    model = VAE(12, [8], 2, likelihood="bernoulli", dtype=np.float64, rng=0)
    x = random_images(200, 12, binary=True)
    means = [E.log_px_iwae(model, x, k, rng=np.random.default_rng(10 + k)).mean() for k in (1, 10, 100)]
    assert means[0] < means[1] < means[2], means
    # K = 1 is the one-draw ELBO: its mean agrees with the ELBO's
    assert means[0] == pytest.approx(-E.elbo(model, x, n_draws=50, rng=1)["neg_elbo"], abs=0.3)


@pytest.mark.parametrize("likelihood", ["bernoulli", "l2"])
def test_iwae_is_finite_for_very_unlikely_images(likelihood):
    model = VAE(784, [16], 2, likelihood=likelihood, rng=0)
    for layer in model.decoder.dense_layers:
        layer.params["W"] *= 1e3                     # saturated decoder: logits of +-1e4 and more
    x = np.stack([np.ones(784), np.zeros(784), (np.arange(784) % 2).astype(float)]).astype(np.float32)
    log_px = E.log_px_iwae(model, x, k=200, rng=0)
    assert np.isfinite(log_px).all()
    if likelihood == "bernoulli":
        assert log_px.max() < -700                   # exp() of these log-weights underflows to 0
    parts = E.elbo(model, x, n_draws=3, rng=0)
    assert all(np.isfinite(v) for v in parts.values())


@pytest.mark.parametrize("likelihood", ["bernoulli", "l2"])
def test_iwae_k5000_matches_numerical_integration(likelihood):
    """A 1-D latent: log p(x) by integration over z in [-10, 10] (20001 points) vs K = 5000."""
    model, data = trained_tiny_vae(likelihood)
    x = data[:8]
    exact = exact_log_px(model, x)
    est = E.log_px_iwae(model, x, k=5000, rng=0)
    assert np.abs(est - exact).max() < 0.1, (est, exact)
    assert abs(est.mean() - exact.mean()) < 0.1
    # the one-draw ELBO lies below log p(x) (on average): a bound, not an estimate
    assert -E.elbo(model, x, n_draws=200, rng=1)["neg_elbo"] - E.nll_constant(likelihood, 6) < exact.mean() + 0.01


@pytest.mark.parametrize("likelihood", ["bernoulli", "l2"])
def test_iwae_closes_the_gap_of_a_poor_encoder(likelihood):
    """q(z|x) = N(0, 4) for every x, far from a sharp posterior: the ELBO is nats off, K = 5000 is not."""
    model = VAE(6, [16], 1, likelihood=likelihood, activation="tanh", dtype=np.float64, rng=0)
    model.decoder.dense_layers[0].params["W"][...] = 4.0      # z moves every pixel: a peaked posterior
    for layer in [*model.encoder.dense_layers, model.head]:
        layer.params["W"][...] = 0
    model.head.params["b"][...] = [0.0, math.log(4.0)]       # [mu | logvar]
    x = latent_1d_data(8, likelihood)
    exact = exact_log_px(model, x)
    gap = exact.mean() - (-E.elbo(model, x, n_draws=200, rng=1)["neg_elbo"] - E.nll_constant(likelihood, 6))
    est = E.log_px_iwae(model, x, k=5000, rng=0)
    assert gap > 0.5
    assert np.abs(est - exact).max() < 0.1, (est, exact)


def test_argument_checks():
    model = VAE(10, [8], 3, rng=0)
    x = random_images(4, 10)
    with pytest.raises(ValueError, match="eps must have shape"):
        E.log_px_iwae(model, x, k=5, eps=np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match="eps must have shape"):
        E.elbo(model, x, n_draws=2, eps=np.zeros((4, 3)))
    with pytest.raises(ValueError, match="kl_estimator"):
        E.elbo(model, x, kl_estimator="guess")
    with pytest.raises(TypeError, match="needs a VAE"):
        E.log_px_iwae(Autoencoder(10, [8], 3, rng=0), x, k=5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        E.log_px_iwae(model, x * 255, k=5)


# --------------------------------------------------------------------------------------------
# Active units
# --------------------------------------------------------------------------------------------


def test_active_units_zero_for_an_encoder_that_ignores_its_input():
    model = VAE(10, [8], 4, rng=0)
    for layer in [*model.encoder.dense_layers, model.head]:
        layer.params["W"][...] = 0
    model.head.params["b"][...] = 0.7                 # mu is the same constant for every image
    count, var = E.active_units(model, random_images(300, 10), return_variances=True)
    assert count == 0
    assert var.shape == (4,) and np.all(var == 0)


def test_active_units_all_for_an_identity_like_encoder():
    z_dim = 5
    model = VAE(10, [], z_dim, rng=0)                 # no hidden layers: [mu | logvar] = x W + b
    W = np.zeros((10, 2 * z_dim), np.float32)
    W[np.arange(z_dim), np.arange(z_dim)] = 1         # mu_u = x_u: variance 1/12 for uniform pixels
    model.head.params["W"][...] = W
    x = random_images(500, 10)
    count, var = E.active_units(model, x, return_variances=True)
    assert count == z_dim
    np.testing.assert_allclose(var, x[:, :z_dim].astype(np.float64).var(axis=0), rtol=1e-5)
    assert np.all(var > 0.05)
    # a threshold above every variance counts none; the criterion is a strict '>'
    assert E.active_units(model, x, threshold=1.0) == 0
    assert E.active_units(model, x, threshold=float(var.min())) == z_dim - 1


# --------------------------------------------------------------------------------------------
# Softmax cross-entropy (the classifier's loss)
# --------------------------------------------------------------------------------------------


def test_softmax_cross_entropy_gradient_and_values():
    rng = np.random.default_rng(0)
    rows = gradcheck.check_function("softmax_cross_entropy", losses.softmax_cross_entropy,
                                    {"logits": rng.standard_normal((6, 10)) * 3, "labels": rng.integers(0, 10, 6)})
    assert rows and all(r.passed for r in rows), rows
    loss, d = losses.softmax_cross_entropy(np.array([[0.0, 0.0]]), np.array([0]))
    assert loss == pytest.approx(math.log(2))
    np.testing.assert_allclose(d, [[-0.5, 0.5]])
    loss, d = losses.softmax_cross_entropy(np.array([[1000.0, -1000.0], [0.0, 1000.0]]), np.array([0, 0]))
    assert loss == pytest.approx(1000 / 2) and np.isfinite(d).all()


# --------------------------------------------------------------------------------------------
# Classifier metrics with stub classifiers
# --------------------------------------------------------------------------------------------


def test_sample_quality_and_class_entropy_by_hand():
    model = VAE(784, [16], 2, rng=0)
    sure = np.zeros(10)
    sure[3] = 1
    q = E.sample_quality(model, StubClassifier(sure), n=250, rng=0, batch_size=100)
    assert q["class_histogram"] == [0, 0, 0, 250, 0, 0, 0, 0, 0, 0]
    assert q["confidence"] == pytest.approx(1.0) and q["class_entropy"] == 0.0 and q["n"] == 250
    assert math.copysign(1.0, q["class_entropy"]) == 1.0          # 0, not -0 (printed as -0.000)
    assert E.class_entropy(np.full(10, 7)) == pytest.approx(math.log(10))
    assert E.class_entropy([5, 5, 0]) == pytest.approx(math.log(2))


def test_reconstruction_accuracy_uses_the_reconstructions():
    model = Autoencoder(784, [16], 2, rng=0)
    seen = []

    class Recorder(StubClassifier):
        def predict_proba(self, x):
            seen.append(np.array(x))
            return super().predict_proba(x)

    proba = np.full(10, 0.05)
    proba[1] = 0.55
    x = random_images(30, 784)
    y = np.array([1] * 20 + [2] * 10)
    assert E.reconstruction_accuracy(model, Recorder(proba), x, y) == pytest.approx(20 / 30)
    np.testing.assert_allclose(seen[0], model.decode(model.encode(x)), rtol=1e-6)


# --------------------------------------------------------------------------------------------
# The classifier and its cache (a tiny architecture; the real one only in the slow test)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_classifier_file(tmp_path_factory):
    """The bytes of a cache file for TINY_SPEC, trained once for the module."""
    path = tmp_path_factory.mktemp("clf") / "tiny.npz"
    C.save_classifier(C.train_classifier(TINY_SPEC, progress=False), path)
    return path.read_bytes()


@pytest.fixture
def tiny_cache(tmp_path, monkeypatch, tiny_classifier_file):
    """NPVAE_CACHE_DIR in tmp_path, TINY_SPEC as the default, its file already in the cache."""
    monkeypatch.setenv("NPVAE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(C, "DEFAULT_CLASSIFIER", TINY_SPEC)
    path = C.classifier_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(tiny_classifier_file)
    return tmp_path / "cache"


def test_classifier_is_trained_once_then_loaded_from_the_cache(tiny_cache, monkeypatch):
    path = C.classifier_path()
    assert path.parent == tiny_cache / "classifier"
    path.unlink()
    clf = C.get_classifier(progress=False)             # no file: trains and writes it
    assert path.exists() and clf.info["source"] == "trained" and clf.info["path"] == str(path)
    assert 0.6 < clf.test_accuracy <= 1
    probe = np.random.default_rng(0).random((5, 784)).astype(np.float32)

    def no_training(*a, **k):
        raise AssertionError("trained again")
    monkeypatch.setattr(C, "train_classifier", no_training)
    again = C.get_classifier(progress=False)
    assert again.info["source"] == "cache" and again.test_accuracy == clf.test_accuracy
    np.testing.assert_array_equal(again.logits(probe), clf.logits(probe))
    p = again.predict_proba(probe)
    assert p.shape == (5, 10) and np.allclose(p.sum(axis=1), 1)
    with np.load(path, allow_pickle=False) as npz:        # plain arrays only
        assert set(npz.files) == {"meta", "param/0.W", "param/0.b", "param/1.W", "param/1.b"}


def test_classifier_training_is_deterministic(tiny_cache):
    cached = C.load_classifier(C.classifier_path(), TINY_SPEC)       # trained in another call
    again = C.train_classifier(TINY_SPEC, progress=False)
    for la, lb in zip(cached.net.dense_layers, again.net.dense_layers):
        np.testing.assert_array_equal(la.params["W"], lb.params["W"])
        np.testing.assert_array_equal(la.params["b"], lb.params["b"])
    assert cached.test_accuracy == again.test_accuracy


def _corrupt_truncate(path):
    path.write_bytes(path.read_bytes()[:200])


def _corrupt_garbage(path):
    path.write_bytes(b"not a zip file at all")


def _corrupt_weights(path):
    with np.load(path, allow_pickle=False) as npz:
        members = {k: npz[k] for k in npz.files}
    members["param/0.W"] = members["param/0.W"] + 1      # the recorded SHA-256 no longer matches
    np.savez(path, **members)


def _other_architecture(path):
    with np.load(path, allow_pickle=False) as npz:
        members = {k: npz[k] for k in npz.files}
    members["param/0.W"] = members["param/0.W"][:, :8]   # a 784-8-10 layer under the 784-16-10 name
    np.savez(path, **members)


def _other_recipe(path):
    other = C.Classifier(C._build_net(TINY_SPEC, 0), C.ClassifierSpec(sizes=(784, 16, 10), epochs=1))
    C.save_classifier(other, path)                        # right shapes, made for another spec


def _object_array(path):
    with np.load(path, allow_pickle=False) as npz:
        members = {k: npz[k] for k in npz.files}
    members["param/0.b"] = np.array([{"evil": 1}], dtype=object)
    np.savez(path, **members)


def test_a_classifier_cached_by_an_older_npvae_is_not_reused():
    # the recipe's revision is part of the cache key, so the file name differs and it is retrained
    older = dataclasses.replace(C.DEFAULT_CLASSIFIER, revision=C.DEFAULT_CLASSIFIER.revision - 1)
    assert older.key() != C.DEFAULT_CLASSIFIER.key() and older.file_name() != C.DEFAULT_CLASSIFIER.file_name()


@pytest.mark.parametrize("damage", [_corrupt_truncate, _corrupt_garbage, _corrupt_weights, _other_architecture,
                                    _other_recipe, _object_array])
def test_a_bad_cache_file_is_rebuilt(tiny_cache, damage):
    import io
    path = C.classifier_path()
    good = C.load_classifier(path, TINY_SPEC)
    damage(path)
    with pytest.raises(C.ClassifierCacheError):
        C.load_classifier(path, TINY_SPEC)
    log = io.StringIO()
    rebuilt = C.get_classifier(progress=log)
    assert "unusable, retraining" in log.getvalue()
    assert rebuilt.info["source"] == "trained"
    assert C.load_classifier(path, TINY_SPEC).info["source"] == "cache"     # the file is good again
    np.testing.assert_array_equal(rebuilt.net.dense_layers[0].params["W"], good.net.dense_layers[0].params["W"])


@pytest.mark.slow
def test_full_classifier_reaches_97_5_percent(tmp_path, monkeypatch):
    monkeypatch.setenv("NPVAE_CACHE_DIR", str(tmp_path))
    clf = C.get_classifier(progress=False)
    assert clf.spec == C.ClassifierSpec()
    assert clf.test_accuracy >= 0.975
    from npvae.data import load_mnist
    x, y = load_mnist("test")
    assert clf.accuracy(x, y) == pytest.approx(clf.test_accuracy)
    assert C.get_classifier(progress=False).info["source"] == "cache"


# --------------------------------------------------------------------------------------------
# Run folders and the command
# --------------------------------------------------------------------------------------------


def _train_tiny_run(out, *extra):
    from npvae.__main__ import main
    code = main(["train", "--train-size", "300", "--test-size", "100", "--hidden", "32", "--latent", "2",
                 "--epochs", "1", "--out", str(out), "--no-figures", *extra])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    return {"vae": _train_tiny_run(base / "vae"),
            "ae": _train_tiny_run(base / "ae", "--model", "ae"),
            "dyn": _train_tiny_run(base / "dyn", "--likelihood", "bernoulli", "--binarize", "dynamic")}


def test_evaluate_run_writes_eval_json(tiny_runs):
    run = tiny_runs["vae"]
    res = E.evaluate_run(run, k=50, classifier=False, progress=False)
    saved = json.loads((run / "eval.json").read_text())
    for key in ("neg_elbo", "recon", "kl", "nll_iwae", "iwae_k", "active_units", "recon_at_mu",
                "elbo_draws", "nll_constant", "neg_elbo_density", "latent_variances", "notes"):
        assert key in saved, key
    assert saved["iwae_k"] == 50 and saved["n_images"] == 100 and saved["elbo_draws"] == E.DEFAULT_DRAWS
    assert saved["neg_elbo"] == pytest.approx(saved["recon"] + saved["kl"])
    assert saved["nll_constant"] == pytest.approx(448.734115, abs=1e-6)        # the default L2 likelihood
    assert saved["nll_iwae"] <= saved["neg_elbo_density"] + 0.5                 # a tighter bound
    assert 0 <= saved["active_units"] <= 2 and len(saved["latent_variances"]) == 2
    assert res["nll_iwae"] == saved["nll_iwae"]
    table = E.format_table(res)
    assert "NLL, IWAE K=50" in table and "448.734" in table and "active units" in table


def test_evaluate_run_with_a_tiny_classifier(tiny_runs, tiny_cache):
    res = E.evaluate_run(tiny_runs["vae"], k=5, n_draws=2, limit=40, n_samples=300, progress=False, write=False)
    assert res["n_images"] == 40 and "eval_json" not in res
    assert 0 <= res["recon_accuracy"] <= 1 and 0.1 <= res["sample_confidence"] <= 1
    assert 0 <= res["sample_class_entropy"] <= math.log(10) + 1e-12
    assert sum(res["sample_class_histogram"]) == 300
    assert "samples: class entropy" in E.format_table(res)
    assert C.classifier_path().exists()          # trained once and cached in NPVAE_CACHE_DIR


def test_evaluate_run_autoencoder_reports_recon_only(tiny_runs):
    res = E.evaluate_run(tiny_runs["ae"], k=10, classifier=False, progress=False)
    saved = json.loads((tiny_runs["ae"] / "eval.json").read_text())
    assert saved["model"] == "ae" and saved["recon"] > 0
    for key in ("neg_elbo", "kl", "nll_iwae", "iwae_k", "active_units"):
        assert saved[key] is None
    assert any("autoencoder" in n for n in saved["notes"])
    assert "an autoencoder has no" in E.format_table(res)


def test_dynamic_binarization_is_evaluated_on_one_fixed_draw(tiny_runs):
    a = E.evaluate_run(tiny_runs["dyn"], k=5, n_draws=2, classifier=False, progress=False, write=False)
    b = E.evaluate_run(tiny_runs["dyn"], k=5, n_draws=2, classifier=False, progress=False, write=False)
    assert a["nll_iwae"] == b["nll_iwae"] and "fixed stochastic binarization" in a["data"]
    x, _, _ = E._evaluation_images({"data_dir": None, "test_size": 50, "binarize": "dynamic"}, "test")
    assert set(np.unique(x)) <= {0.0, 1.0}
    assert "standard MNIST NLL" in " ".join(a["notes"])


def test_cli_functions(tiny_runs, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    E.add_arguments(parser)
    args = parser.parse_args([str(tiny_runs["vae"]), "--k", "20", "--draws", "2", "--no-classifier"])
    assert (args.k, args.split, args.draws, args.seed, args.no_classifier) == (20, "test", 2, 0, True)
    assert parser.parse_args(["r"]).k == 5000
    assert E.run(args) == 0
    out = capsys.readouterr().out
    assert "NLL, IWAE K=20" in out and "negative ELBO" in out
    # a folder without a checkpoint, and one that does not exist: a clear message, exit code 1
    (tmp_path / "empty").mkdir()
    for bad in (tmp_path / "empty", tmp_path / "missing"):
        assert E.run(parser.parse_args([str(bad), "--no-classifier"])) == 1
        err = capsys.readouterr().err
        assert err.startswith("npvae evaluate: ") and "run folder" in err
    with pytest.raises(SystemExit):
        parser.parse_args(["r", "--split", "valid"])


def test_evaluate_a_checkpoint_file_writes_into_its_folder(tiny_runs, tmp_path):
    # RUN may be the checkpoint file itself: eval.json goes beside it, not into "checkpoint.npz/"
    run = tmp_path / "copy"
    run.mkdir()
    (run / "checkpoint.npz").write_bytes((tiny_runs["vae"] / "checkpoint.npz").read_bytes())
    res = E.evaluate_run(run / "checkpoint.npz", k=5, n_draws=2, limit=20, classifier=False, progress=False)
    assert (run / "eval.json").is_file() and res["eval_json"] == str(run / "eval.json")
