"""Tests of npvae.cvae: the label join, the CVAE, the quadrant task's models and the Gaussian-to-Gaussian KL."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from npvae import CVAE, VAE, Adam, fit, gradcheck, losses
from npvae.__main__ import main
from npvae.checkpoint import load_checkpoint
from npvae.cvae import Baseline, LabelJoin, StructuredCVAE, hidden_bernoulli, masked_input, one_hot, quadrant_mask
from npvae.evaluate import elbo, log_px_iwae

f64 = np.float64


# -- gradient checks ---------------------------------------------------------------------------

def test_label_join_gradient_splits_back_and_drops_the_label():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((5, 4)), np.array([0, 2, 1, 2, 0])
    join = LabelJoin(3)
    out = join.forward(x, y)
    assert out.shape == (5, 7)
    assert np.array_equal(out[:, :4], x) and np.array_equal(out[:, 4:], np.eye(3)[y])
    dout = rng.standard_normal((5, 7))
    assert np.array_equal(join.backward(dout), dout[:, :4])
    rows = gradcheck.check_label_join(x, y, 3, rng)
    assert all(r.passed for r in rows), rows


@pytest.mark.parametrize("likelihood", ["l2", "bernoulli"])
def test_cvae_gradients_match_central_differences(likelihood):
    rng = np.random.default_rng(1)
    model = CVAE(6, [5, 4], 3, num_classes=4, likelihood=likelihood, beta=0.6, activation="tanh", dtype=f64, rng=2)
    x, y, eps = rng.uniform(0, 1, (5, 6)), rng.integers(0, 4, 5), rng.standard_normal((5, 3))
    rows = gradcheck.check_conditional_model(model, x, y, eps)
    assert len(rows) == len(model.params) and all(r.passed for r in rows), rows


def test_structured_cvae_and_baseline_gradients_match_central_differences():
    rng = np.random.default_rng(3)
    images = rng.uniform(0, 1, (4, 16))
    baseline = Baseline(quadrant_mask(3, side=4), 16, [6, 5], dtype=f64, rng=rng)
    model = StructuredCVAE(baseline, [6, 5], 3, rng=rng)
    rows = gradcheck.check_conditional_model(baseline, images)
    rows += gradcheck.check_conditional_model(model, images, rng.standard_normal((4, 3)))
    assert all(r.passed for r in rows), rows
    assert not set(baseline.params) & set(model.params)     # the baseline is fixed, not trained with the CVAE


def test_run_all_covers_the_conditional_models():
    components = {r.component for r in gradcheck.run_all()}
    assert {"LabelJoin(3)", "kl_gaussians", "CVAE(l2)", "CVAE(bernoulli)", "Baseline(quadrants)",
            "StructuredCVAE"} <= components


# -- the Gaussian-to-Gaussian KL ---------------------------------------------------------------

def test_kl_gaussians_matches_a_monte_carlo_estimate():
    rng = np.random.default_rng(4)
    mu_q, logvar_q = np.array([[0.3, -1.0, 2.0]]), np.array([[0.5, -0.7, 0.1]])
    mu_p, logvar_p = np.array([[-0.2, 0.4, 1.5]]), np.array([[-0.3, 0.6, 0.9]])
    kl = losses.kl_gaussians(mu_q, logvar_q, mu_p, logvar_p)[0]
    z = mu_q + np.exp(0.5 * logvar_q) * rng.standard_normal((400_000, 3))

    def log_normal(z, mu, logvar):
        return -0.5 * np.sum(np.log(2 * np.pi) + logvar + (z - mu) ** 2 / np.exp(logvar), axis=1)

    samples = log_normal(z, mu_q, logvar_q) - log_normal(z, mu_p, logvar_p)
    assert abs(samples.mean() - kl) < 4 * samples.std() / np.sqrt(len(samples))
    assert kl == pytest.approx(samples.mean(), rel=0.01)


def test_kl_gaussians_is_zero_for_equal_gaussians_and_reduces_to_the_standard_normal_kl():
    rng = np.random.default_rng(5)
    mu, logvar = rng.standard_normal((6, 4)) * 3, rng.standard_normal((6, 4)) * 3
    kl, *grads = losses.kl_gaussians(mu, logvar, mu, logvar)
    assert kl == 0.0
    assert all(np.array_equal(g, np.zeros_like(g)) for g in grads)
    kl0, dmu, dlogvar, _, _ = losses.kl_gaussians(mu, logvar, np.zeros_like(mu), np.zeros_like(logvar))
    ref = losses.kl_standard_normal(mu, logvar)
    assert kl0 == pytest.approx(ref[0], rel=1e-12)
    np.testing.assert_allclose(dmu, ref[1], rtol=1e-12)
    np.testing.assert_allclose(dlogvar, ref[2], rtol=1e-12)
    assert losses.kl_gaussians(mu + 0.1, logvar, mu, logvar)[0] > 0


def test_kl_gaussians_gradcheck():
    rng = np.random.default_rng(6)
    inputs = {k: rng.standard_normal((3, 2)) for k in ("mu_q", "logvar_q", "mu_p", "logvar_p")}
    rows = gradcheck.check_function("kl_gaussians", losses.kl_gaussians, inputs)
    assert len(rows) == 4 and all(r.passed for r in rows), rows


def test_prior_network_sampler_has_the_moments_of_its_gaussian():
    # z = mu_p + exp(0.5 logvar_p) eps: its mean is mu_p and its variance exp(logvar_p) (not exp(logvar_p)^2).
    rng = np.random.default_rng(7)
    baseline = Baseline(quadrant_mask(1, side=4), 16, [8], dtype=f64, rng=rng)
    model = StructuredCVAE(baseline, [8], 3, rng=rng)
    for layer in (model.prior.head,):
        layer.params["b"][3:] = [-1.0, 0.5, 1.2]             # log-variances far from 0: a wrong sigma shows
    x = np.repeat(rng.uniform(0, 1, (1, 16)), 200_000, axis=0)
    mu, logvar = model.prior_gaussian(x[:1])
    z = model.sample_prior(x, rng=np.random.default_rng(8))
    n = len(z)
    np.testing.assert_allclose(z.mean(axis=0), mu[0], atol=5 * np.sqrt(np.exp(logvar[0]) / n).max())
    np.testing.assert_allclose(z.var(axis=0), np.exp(logvar[0]), rtol=0.02)


# -- the quadrant task's pieces ----------------------------------------------------------------

def test_quadrant_masks_show_the_pinned_quadrants():
    one, two, three = (quadrant_mask(k).reshape(28, 28) for k in (1, 2, 3))
    assert one.sum() == 196 and one[14:, :14].all()                   # bottom-left
    assert two.sum() == 392 and two[:, :14].all()                     # the left half
    assert three.sum() == 588 and not three[14:, 14:].any()           # all but bottom-right
    x = np.full((2, 784), 0.5, np.float32)
    assert set(np.unique(masked_input(x, quadrant_mask(1)))) == {-1.0, 0.5}
    with pytest.raises(ValueError, match="n_visible must be 1, 2 or 3"):
        quadrant_mask(4)


def test_hidden_bernoulli_counts_only_the_hidden_pixels():
    rng = np.random.default_rng(9)
    visible = quadrant_mask(2, side=4)
    logits, x = rng.standard_normal((3, 16)), rng.uniform(0, 1, (3, 16))
    loss, dlogits = hidden_bernoulli(logits, x, visible)
    assert loss == pytest.approx(losses.bernoulli_per_pixel(logits, x)[:, ~visible].sum() / 3)
    assert np.all(dlogits[:, visible] == 0)
    changed = logits.copy()
    changed[:, visible] += 5                                         # visible logits do not matter
    assert hidden_bernoulli(changed, x, visible)[0] == loss


# -- the CVAE: checks, shapes, training --------------------------------------------------------

def small_cvae(**kw):
    return CVAE(12, [8], 3, num_classes=4, rng=0, **kw)


def test_sample_decode_and_encode_shapes():
    model = small_cvae()
    assert model.sample(5, y=2, rng=0).shape == (5, 12)
    assert model.sample(4, y=np.array([0, 1, 2, 3]), rng=0).shape == (4, 12)
    z = np.zeros((3, 3), np.float32)
    out = model.decode(z, [0, 1, 3])
    assert out.shape == (3, 12) and out.dtype == np.float32 and (out >= 0).all() and (out <= 1).all()
    mu, logvar = model.encode(np.full((3, 12), 0.5, np.float32), np.array([1, 1, 0]))
    assert mu.shape == logvar.shape == (3, 3)
    assert model.params["enc0.W"].shape == (12 + 4, 8) and model.params["dec0.W"].shape == (3 + 4, 8)
    # the label changes the decode: one z, two digits
    assert not np.array_equal(model.decode(z[:1], [0]), model.decode(z[:1], [1]))


@pytest.mark.parametrize("y, pattern", [
    ([0, 4, 1], re.escape("y must lie in [0, 4) (num_classes=4), got values in [0, 4]")),
    ([0, -1, 1], re.escape("y must lie in [0, 4)")),
    ([0, 1], re.escape("y must have shape (3,), one label per row, got shape (2,)")),
    ([[0, 1, 2]], re.escape("y must have shape (3,)")),
    ([0.0, 1.0, 2.0], "y must be integer class labels"),
    ([True, False, True], "y must be integer class labels"),
])
def test_bad_labels_are_refused_with_a_clear_error(y, pattern):
    model = small_cvae()
    x = np.full((3, 12), 0.5, np.float32)
    for call in (lambda: model.encode(x, y), lambda: model.decode(np.zeros((3, 3)), y),
                 lambda: model.loss_and_grads(x, y), lambda: model.sample(3, y=y)):
        with pytest.raises(ValueError, match=pattern):
            call()


def test_sample_refuses_a_label_out_of_range():
    with pytest.raises(ValueError, match=re.escape("y must lie in [0, 4)")):
        small_cvae().sample(2, y=7)


def test_fit_needs_labels_for_a_cvae_and_refuses_them_for_a_vae():
    x = np.full((20, 12), 0.5, np.float32)
    cvae = small_cvae()
    with pytest.raises(ValueError, match="conditional model needs them"):
        fit(cvae, Adam(cvae.params), x, epochs=1)
    vae = VAE(12, [8], 3, rng=0)
    with pytest.raises(ValueError, match="labels="):
        fit(vae, Adam(vae.params), x, epochs=1, labels=np.zeros(20, int))
    with pytest.raises(ValueError, match=re.escape("labels must have shape (20,)")):
        fit(cvae, Adam(cvae.params), x, epochs=1, labels=np.zeros(19, int))
    with pytest.raises(ValueError, match="eval_labels"):
        fit(cvae, Adam(cvae.params), x, epochs=1, labels=np.zeros(20, int), eval_images=x)


def prototype_data(n_per_class=8, d=12, classes=4, seed=0):
    """Each label has its own image (one block of pixels lit), plus a little noise."""
    rng = np.random.default_rng(seed)
    protos = np.zeros((classes, d), np.float32)
    for c in range(classes):
        protos[c, c * (d // classes):(c + 1) * (d // classes)] = 1
    y = np.repeat(np.arange(classes), n_per_class)
    x = np.clip(protos[y] + rng.uniform(-0.05, 0.05, (len(y), d)), 0, 1).astype(np.float32)
    return x, y, protos


def test_a_cvae_overfits_a_tiny_batch_and_draws_the_digit_it_is_asked_for():
    x, y, protos = prototype_data()
    model = CVAE(12, [16], 2, num_classes=4, likelihood="bernoulli", rng=0)
    first = model.loss(x, y, eps=np.zeros((len(x), 2), np.float32))["recon"]
    history = fit(model, Adam(model.params, lr=1e-2), x, labels=y, epochs=150, batch_size=len(x),
                  rng=0, log=open("/dev/null", "w"))
    assert history[-1]["train_loss"] < 0.3 * history[0]["train_loss"]
    assert model.loss(x, y, eps=np.zeros((len(x), 2), np.float32))["recon"] < 0.3 * first
    # the label alone picks the image: samples of label c look like prototype c
    for c in range(4):
        samples = model.sample(50, y=c, rng=1)
        assert np.abs(samples.mean(axis=0) - protos[c]).max() < 0.25, c


def test_fit_shuffles_the_labels_with_the_images():
    # A conditional fit sees the same batches (x, y) as a manual loop over the same permutation.
    from npvae.data import minibatch_indices
    x, y, _ = prototype_data()
    a, b = small_cvae(), small_cvae()
    fit(a, Adam(a.params), x, labels=y, epochs=2, batch_size=5, rng=3, log=open("/dev/null", "w"), fast=False)
    opt, rng = Adam(b.params), np.random.default_rng(3)
    for _ in range(2):
        for idx in minibatch_indices(len(x), 5, rng):
            _, grads = b.loss_and_grads(x[idx], y[idx])
            opt.step(grads)
    for k in a.params:
        assert np.array_equal(a.params[k], b.params[k]), k


# -- the command line: train, resume, sample, evaluate -----------------------------------------

SMALL = ["--model", "cvae", "--train-size", "300", "--test-size", "100", "--hidden", "32", "--latent", "2",
         "--batch-size", "50", "--seed", "3"]


def test_cvae_run_resumes_bitwise(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["train", *SMALL, "--warmup", "2", "--epochs", "2", "--out", str(a), "--no-figures"]) == 0
    assert main(["train", "--epochs", "4", "--out", str(a), "--resume", "--no-figures"]) == 0
    assert main(["train", *SMALL, "--warmup", "2", "--epochs", "4", "--out", str(b), "--no-figures"]) == 0
    ca, cb = load_checkpoint(a / "checkpoint.npz"), load_checkpoint(b / "checkpoint.npz")
    assert ca.epoch == cb.epoch == 4 and ca.config["model"] == "cvae"
    for k in cb.params:
        assert np.array_equal(ca.params[k], cb.params[k]), k
    for k in cb.optimizer_state:
        assert np.array_equal(ca.optimizer_state[k], cb.optimizer_state[k]), k
    assert [r["test_loss"] for r in ca.history] == [r["test_loss"] for r in cb.history]
    assert [r["beta"] for r in ca.history] == [0.0, 0.5, 1.0, 1.0]                  # the warm-up


@pytest.mark.slow
def test_cvae_run_writes_its_figures_and_samples_a_digit(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    a = tmp_path / "a"
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(a)]) == 0
    for name in ("style_grid.png", "analogy.png", "reconstructions.png", "samples.png", "training_curves.png"):
        assert (a / name).stat().st_size > 0, name
    capsys.readouterr()
    assert main(["sample", str(a), "--digit", "7"]) == 0
    assert (a / "samples_digit7.png").exists()
    assert main(["sample", str(a), "--digit", "10"]) == 1
    assert "--digit must be a label in [0, 10)" in capsys.readouterr().err


def test_sample_digit_on_a_vae_run_is_refused(tmp_path, capsys):
    out = tmp_path / "vae"
    assert main(["train", *SMALL[2:], "--epochs", "1", "--out", str(out), "--no-figures"]) == 0
    capsys.readouterr()
    assert main(["sample", str(out), "--digit", "3"]) == 1
    assert "--digit needs a conditional model" in capsys.readouterr().err


def test_evaluate_a_cvae_run_bounds_log_p_x_given_y(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(out), "--no-figures"]) == 0
    assert main(["evaluate", str(out), "--k", "50", "--limit", "40", "--no-classifier"]) == 0
    res = json.loads((out / "eval.json").read_text())
    assert res["model"] == "cvae"
    assert res["nll_iwae"] <= res["neg_elbo_density"] + 1.0     # the IWAE bound is the tighter one (up to noise)
    assert "log p(x | y)" in " ".join(res["notes"])


def test_iwae_with_k_1_is_the_sampled_elbo_for_a_cvae():
    rng = np.random.default_rng(10)
    model = CVAE(12, [8], 3, num_classes=4, likelihood="bernoulli", rng=0, dtype=f64)
    x, y = rng.uniform(0, 1, (6, 12)), rng.integers(0, 4, 6)
    eps = rng.standard_normal((6, 1, 3))
    e = elbo(model, x, n_draws=1, eps=eps, kl_estimator="sampled", y=y)
    assert -log_px_iwae(model, x, 1, eps=eps, y=y).mean() == pytest.approx(e["neg_elbo"], rel=1e-12)
    with pytest.raises(ValueError, match="pass the images' labels"):
        elbo(model, x)
    with pytest.raises(ValueError, match="labels y= are for a conditional model"):
        elbo(VAE(12, [8], 3, rng=0), x, y=y)


def test_one_hot():
    assert np.array_equal(one_hot(np.array([2, 0]), 3), [[0, 0, 1], [1, 0, 0]])


def test_the_committed_quadrant_results_have_the_pinned_form():
    """demos/figures/quadrants.json, from the full run of demos/quadrants.py (issue 16 pins its form):
    {"1": {"baseline", "cvae_elbo", "cvae_iw"}, "2": ..., "3": ...}, nats per test image. The
    importance-sampled estimate is a tighter bound than the ELBO, and more visible quadrants leave
    less to predict; and quadrants_runs.json says it was the full run, not --quick."""
    figures = Path(__file__).resolve().parent.parent / "demos" / "figures"
    results = json.loads((figures / "quadrants.json").read_text())
    assert list(results) == ["1", "2", "3"]
    for case in results.values():
        assert set(case) == {"baseline", "cvae_elbo", "cvae_iw"}
        assert all(isinstance(v, float) and 0 < v < 784 * math.log(2) * 10 for v in case.values())
        assert case["cvae_iw"] < case["cvae_elbo"]
    for key in ("baseline", "cvae_elbo", "cvae_iw"):
        assert results["1"][key] > results["2"][key] > results["3"][key]
    runs = json.loads((figures / "quadrants_runs.json").read_text())
    assert runs["quick"] is False and runs["sizes"] == {"train": 60000, "val": 10000, "test": 10000, "max_epochs": 100}
    for n in results:
        assert (figures / f"quadrants_{n}.png").stat().st_size > 10_000


def test_a_gaussian_cvae_is_refused_at_once_and_writes_nothing(tmp_path, capsys):
    # It used to be built (with a log_sigma2 parameter even) and then fail at its first batch with
    # KeyError: 'gaussian', leaving a half-made run folder behind.
    with pytest.raises(ValueError, match="a CVAE's likelihood is one of .*'gaussian'"):
        CVAE(6, [5], 2, num_classes=3, likelihood="gaussian")
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--likelihood", "gaussian", "--epochs", "1", "--out", str(out)]) == 1
    assert "a CVAE's likelihood is one of" in capsys.readouterr().err
    assert not out.exists()
