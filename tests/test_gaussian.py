"""Tests for the Gaussian likelihood (issue 15), across the modules it touches: the loss in
npvae.losses, the models' sigma2 and decoder_output, training with fit, run folders (checkpoint,
resume, old configs), `npvae evaluate`, and the linear VAE trained by fit against the closed form
of npvae.ppca. (One file for one feature, beside the per-module files.)"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from npvae import evaluate as E
from npvae import fast, folders, losses, ppca, settings
from npvae.__main__ import main
from npvae.checkpoint import load_checkpoint, save_checkpoint
from npvae.gradcheck import check_function, check_model
from npvae.gaussian import SIGMA2_FLOOR
from npvae.models import VAE, Autoencoder, build_model
from npvae.optim import Adam
from npvae.train import fit

LOG_2PI = math.log(2 * math.pi)
SMALL = ["--train-size", "300", "--test-size", "100", "--hidden", "32", "--latent", "2", "--batch-size", "50"]


# --------------------------------------------------------------------------------------------
# The loss
# --------------------------------------------------------------------------------------------

def test_l2_loss_is_the_gaussian_with_sigma2_one_half_minus_its_constant():
    """sum_d (x - x_hat)^2 = -log N(x; x_hat, I/2) - (D/2) log pi, and the gradients agree."""
    rng = np.random.default_rng(0)
    logits, x = rng.standard_normal((6, 9)) * 2, rng.uniform(0, 1, (6, 9))
    mean = 1 / (1 + np.exp(-logits))
    half = np.log([0.5])
    const = 0.5 * 9 * math.log(math.pi)
    l2, dlogits = losses.l2_reconstruction(logits, x)
    gauss, dmean, _ = losses.gaussian_reconstruction(mean, x, half)
    assert gauss - const == pytest.approx(l2, rel=1e-13)
    np.testing.assert_allclose(losses.gaussian_per_example(mean, x, half) - const, losses.l2_per_example(logits, x),
                               rtol=1e-13)
    np.testing.assert_allclose(dmean * mean * (1 - mean), dlogits, rtol=1e-13)   # through the sigmoid
    # and the model: gaussian, sigma2 = 0.5 reports the L2 VAE's loss plus the constant, same gradients
    eps = rng.standard_normal((6, 2))
    l2_vae = VAE(9, [5], 2, dtype=np.float64, rng=3)
    g_vae = VAE(9, [5], 2, likelihood="gaussian", sigma2=0.5, dtype=np.float64, rng=3)
    (r1, g1), (r2, g2) = l2_vae.loss_and_grads(x, eps), g_vae.loss_and_grads(x, eps)
    assert r2["recon"] - const == pytest.approx(r1["recon"], rel=1e-13) and r2["kl"] == r1["kl"]
    for k in g1:
        np.testing.assert_allclose(g2[k], g1[k], rtol=1e-10, atol=1e-15)


def test_gaussian_loss_value_by_hand():
    x, mean, t = np.array([[1.0, 0.0]]), np.array([[0.5, 0.5]]), np.array([math.log(0.25)])
    # 0.5 * [(0.25 + 0.25) / 0.25 + 2 log 0.25 + 2 log 2 pi]
    expected = 0.5 * (2 + 2 * math.log(0.25) + 2 * LOG_2PI)
    value, dmean, dt = losses.gaussian_reconstruction(mean, x, t)
    assert value == pytest.approx(expected, rel=1e-14)
    np.testing.assert_allclose(dmean, [[-2.0, 2.0]])              # (m - x) / sigma^2
    np.testing.assert_allclose(dt, [0.5 * 2 - 0.5 * 0.5 / 0.25])  # D/2 - SSE / (2 sigma^2) = 0
    # it is the log-density: integrates (sums over a fine grid) to 1 in one dimension
    grid = np.linspace(-6, 6, 120001)[:, None]
    density = np.exp(-losses.gaussian_per_example(np.zeros_like(grid), grid, np.log([0.7])))
    assert np.sum(density) * (grid[1, 0] - grid[0, 0]) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("t", [-3.0, 0.0, 1.5])
def test_gaussian_loss_gradients_by_central_differences(t):
    rng = np.random.default_rng(1)
    rows = check_function("gaussian", lambda mean, log_sigma2, x: losses.gaussian_reconstruction(mean, x, log_sigma2),
                          {"mean": rng.standard_normal((5, 4)), "log_sigma2": np.array([t]),
                           "x": rng.standard_normal((5, 4))})
    assert [r.parameter for r in rows] == ["mean", "log_sigma2"]
    assert all(r.passed for r in rows), rows


def test_gaussian_per_example_broadcasts_over_k_decodes():
    rng = np.random.default_rng(2)
    mean, x, t = rng.standard_normal((3, 4, 6)), rng.standard_normal((3, 6)), np.array([-0.3])
    out = losses.gaussian_per_example(mean, x[:, None, :], t)
    assert out.shape == (3, 4)
    np.testing.assert_allclose(out[:, 1], losses.gaussian_per_example(mean[:, 1], x, t), rtol=1e-14)


# --------------------------------------------------------------------------------------------
# The models
# --------------------------------------------------------------------------------------------

def test_learned_sigma2_is_the_parameter_log_sigma2():
    vae = VAE(6, [4], 2, likelihood="gaussian", rng=0)
    assert list(vae.params)[-1] == "log_sigma2" and vae.params["log_sigma2"].shape == (1,)
    assert vae.params["log_sigma2"].dtype == np.float32 and vae.params["log_sigma2"][0] == 0   # sigma^2 = 1
    x = np.random.default_rng(0).uniform(0, 1, (5, 6)).astype(np.float32)
    _, grads = vae.loss_and_grads(x)
    assert grads.keys() == vae.params.keys()
    for sigma2 in ("optimal", 0.2):
        assert "log_sigma2" not in VAE(6, [4], 2, likelihood="gaussian", sigma2=sigma2, rng=0).params
    assert "log_sigma2" not in VAE(6, [4], 2, rng=0).params


@pytest.mark.parametrize("model_kind", ["vae", "ae"])
@pytest.mark.parametrize("sigma2, output", [("learned", "sigmoid"), ("learned", "linear"), ("optimal", "sigmoid"),
                                            ("optimal", "linear"), (0.05, "linear")])
def test_gaussian_model_gradients_by_central_differences(model_kind, sigma2, output):
    """Every parameter, log sigma^2 included; for "optimal" the numerical gradient moves sigma^2
    with the batch and still matches the fixed-sigma^2 backward pass (the envelope theorem)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 7)) if output == "linear" else rng.uniform(0, 1, (5, 7))
    kw = dict(likelihood="gaussian", sigma2=sigma2, decoder_output=output, activation="tanh", dtype=np.float64, rng=4)
    model = VAE(7, [5], 3, **kw) if model_kind == "vae" else Autoencoder(7, [5], 3, **kw)
    if sigma2 == "learned":
        model.params["log_sigma2"][...] = -0.8
    rows = check_model(model, x, rng.standard_normal((5, 3)) if model_kind == "vae" else None)
    assert all(r.passed for r in rows), [r for r in rows if not r.passed]


def test_optimal_sigma2_is_the_batch_mse_floored():
    vae = VAE(4, [3], 2, likelihood="gaussian", sigma2="optimal", decoder_output="linear", dtype=np.float64, rng=0)
    x, mean = np.ones((2, 4)), np.zeros((2, 4))
    assert vae.log_sigma2(mean, x) == pytest.approx([0.0])
    assert vae.log_sigma2(x, x) == pytest.approx([math.log(SIGMA2_FLOOR)])
    # the reported loss is the Gaussian at that sigma^2, so recon = 0.5 D [log MSE + 1 + log 2 pi]
    x = np.random.default_rng(1).standard_normal((8, 4))
    report = vae.loss(x, eps=np.zeros((8, 2)))
    mse = np.mean((vae.decode(vae.codes(x)) - x) ** 2)
    assert report["recon"] == pytest.approx(0.5 * 4 * (math.log(mse) + 1 + LOG_2PI), rel=1e-12)


def test_linear_decoder_output_decodes_the_mean_and_takes_any_reals():
    vae = VAE(5, [], 2, likelihood="gaussian", decoder_output="linear", dtype=np.float64, rng=0)
    z = np.random.default_rng(0).standard_normal((3, 2))
    np.testing.assert_array_equal(vae.decode(z), z @ vae.params["dec0.W"] + vae.params["dec0.b"])
    x = np.array([[-3.0, 250.0, 0.5, -0.1, 7.0]])
    vae.loss_and_grads(x)                                     # no [0, 1] check for a Gaussian
    vae.check_data(x)
    with pytest.raises(ValueError, match="NaN or inf"):
        vae.check_x(np.array([[np.inf, 0, 0, 0, 0]]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):      # the L2 and Bernoulli VAEs still check
        VAE(5, [], 2, rng=0).check_x(x)


@pytest.mark.parametrize("kwargs, message", [
    ({"sigma2": 0.0}, "sigma2"), ({"sigma2": -1.0}, "sigma2"), ({"sigma2": "big"}, "sigma2"),
    ({"sigma2": float("nan")}, "sigma2"), ({"sigma2": True}, "sigma2"),
    ({"decoder_output": "tanh"}, "decoder_output"),
    ({"likelihood": "l2", "decoder_output": "linear"}, "gaussian"),
    ({"likelihood": "bernoulli", "sigma2": 0.5}, "gaussian"),
])
def test_bad_gaussian_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VAE(4, [3], 2, **{"likelihood": "gaussian", **kwargs}, rng=0)


def test_config_round_trip_and_old_configs():
    for sigma2 in ("learned", "optimal", 0.25):
        model = VAE(6, [4], 2, likelihood="gaussian", sigma2=sigma2, decoder_output="linear", rng=0)
        again = build_model(model.config(), rng=0)
        assert (again.sigma2, again.decoder_output, again.likelihood) == (sigma2, "linear", "gaussian")
        assert again.params.keys() == model.params.keys()
        assert json.loads(json.dumps(model.config())) == model.config()
    old = {k: v for k, v in VAE(6, [4], 2, rng=0).config().items() if k not in ("sigma2", "decoder_output")}
    rebuilt = build_model(old, rng=0)
    assert (rebuilt.likelihood, rebuilt.sigma2, rebuilt.decoder_output) == ("l2", None, "sigmoid")


def test_fit_trains_a_gaussian_model_on_the_textbook_path():
    """fast.twin has no Gaussian: fit trains the textbook path by itself, and a learned sigma^2 moves."""
    rng = np.random.default_rng(5)
    x = rng.uniform(0, 1, (200, 10)).astype(np.float32)
    model = VAE(10, [8], 2, likelihood="gaussian", rng=0)
    assert fast.twin(model) is None
    opt = fast.make_optimizer("adam", model, 1e-2)
    assert isinstance(opt, Adam)
    history = fit(model, opt, x, epochs=3, batch_size=50, log=open("/dev/null", "w"))
    assert model.params["log_sigma2"][0] < -0.05 and history[-1]["train_loss"] < history[0]["train_loss"]


# --------------------------------------------------------------------------------------------
# Run folders and the command line
# --------------------------------------------------------------------------------------------

def test_train_gaussian_runs_resume_bitwise_identically(tmp_path, capsys):
    args = [*SMALL, "--no-figures", "--seed", "3", "--likelihood", "gaussian"]
    assert main(["train", *args, "--epochs", "1", "--out", str(tmp_path / "a")]) == 0
    assert main(["train", "--epochs", "2", "--out", str(tmp_path / "a"), "--resume", "--no-figures"]) == 0
    assert main(["train", *args, "--epochs", "2", "--out", str(tmp_path / "b")]) == 0
    a, b = load_checkpoint(tmp_path / "a" / "checkpoint.npz"), load_checkpoint(tmp_path / "b" / "checkpoint.npz")
    assert a.epoch == b.epoch == 2 and "log_sigma2" in a.params and "m.log_sigma2" in a.optimizer_state
    for k in b.params:
        assert np.array_equal(a.params[k], b.params[k]), k
    for k in b.optimizer_state:
        assert np.array_equal(a.optimizer_state[k], b.optimizer_state[k]), k
    assert [r["test_loss"] for r in a.history] == [r["test_loss"] for r in b.history]
    assert a.params["log_sigma2"][0] != 0                        # it trained


@pytest.mark.parametrize("sigma2, output", [("optimal", "linear"), ("0.05", "sigmoid")])
def test_train_options_sigma2_and_decoder_output(tmp_path, sigma2, output):
    out = tmp_path / "run"
    figures = [] if output == "linear" else ["--no-figures"]         # the figures of a linear output once
    assert main(["train", *SMALL, "--epochs", "1", "--likelihood", "gaussian", "--sigma2", sigma2,
                 "--decoder-output", output, "--out", str(out), *figures]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["sigma2"] == (sigma2 if sigma2 == "optimal" else float(sigma2)) and cfg["decoder_output"] == output
    model, _ = folders.load_run(out)
    assert (model.likelihood, model.sigma2, model.decoder_output) == ("gaussian", cfg["sigma2"], output)
    assert (out / "training_curves.png").exists() == (out / "samples.png").exists() == (not figures)
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2", "--sigma2", "learned"]) == 1


def test_train_refuses_sigma2_for_another_likelihood(tmp_path, capsys):
    assert main(["train", *SMALL, "--epochs", "1", "--sigma2", "0.5", "--out", str(tmp_path / "r")]) == 1
    assert "gaussian" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--sigma2", "-1"])


def test_run_name_shows_the_noise_level():
    cfg = {**settings.DEFAULTS, "likelihood": "gaussian", "sigma2": 0.1, "decoder_output": "linear"}
    assert settings.run_name(cfg) == "vae-gaussian-h400-z20-sigma2-0.1-linear"
    assert settings.run_name({**settings.DEFAULTS, "likelihood": "gaussian"}) == "vae-gaussian-h400-z20-sigma2-learned"
    assert settings.run_name(settings.DEFAULTS) == "vae-l2-h400-z20"


def test_a_checkpoint_without_the_new_settings_still_loads(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(out), "--no-figures"]) == 0
    ckpt = load_checkpoint(out / "checkpoint.npz")
    ckpt.config = {k: v for k, v in ckpt.config.items() if k not in ("sigma2", "decoder_output")}
    save_checkpoint(out / "checkpoint.npz", ckpt)
    model, _ = folders.load_run(out)
    assert model.likelihood == "l2" and model.decoder_output == "sigmoid"
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2", "--no-figures"]) == 0


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------

def linear_gaussian_vae(d=6, z=2, sigma2=0.3, seed=0):
    """A linear Gaussian VAE set to the exact pPCA fit of some data and its best encoder."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((300, d)) @ rng.standard_normal((d, d)) * 0.5 + 1.0
    fit_ = ppca.fit_ppca(x, z, sigma2)
    A, a = ppca.optimal_encoder(fit_.W, fit_.b, fit_.sigma2)
    model = VAE(d, [], z, likelihood="gaussian", sigma2=sigma2, decoder_output="linear", dtype=np.float64, rng=0)
    for key, value in (("head.W", A), ("head.b", a), ("dec0.W", fit_.W), ("dec0.b", fit_.b)):
        model.params[key][...] = value
    return model, x


def test_evaluate_elbo_and_iwae_of_a_linear_vae_against_the_exact_values():
    """The Monte Carlo ELBO matches npvae.ppca's exact ELBO, and at the pPCA optimum (q = the
    true posterior) every importance weight equals p(x): IWAE = log p(x) exactly, for any K."""
    model, x = linear_gaussian_vae()
    arrays = ppca.linear_vae_arrays(model, np.log(0.3))
    exact_elbo, exact_ll = arrays.elbo(x), arrays.log_likelihood(x)
    np.testing.assert_allclose(exact_elbo, exact_ll, atol=1e-9)
    e = E.elbo(model, x, n_draws=400, rng=0)
    assert -e["neg_elbo"] == pytest.approx(exact_elbo.mean(), abs=4 * e["neg_elbo_std_error"] / 5 + 0.02)
    np.testing.assert_allclose(E.log_px_iwae(model, x, k=3, rng=1), exact_ll, rtol=1e-9)
    assert E.nll_constant("gaussian", 6) == 0.0
    # a worse encoder: the IWAE estimate climbs from the ELBO towards log p(x), never above (on average)
    model.params["head.b"][2:] += 1.0
    gap = exact_ll.mean() - ppca.linear_vae_arrays(model, np.log(0.3)).elbo(x).mean()
    iwae = E.log_px_iwae(model, x, k=200, rng=2).mean()
    assert exact_ll.mean() - 0.3 * gap < iwae < exact_ll.mean() + 0.01


def test_evaluate_optimal_uses_the_reconstruction_mse():
    model = VAE(6, [4], 2, likelihood="gaussian", sigma2="optimal", decoder_output="linear", dtype=np.float64, rng=0)
    x = np.random.default_rng(1).standard_normal((50, 6))
    t = E.evaluation_log_sigma2(model, x)
    assert t == pytest.approx([math.log(np.mean((E.reconstructions(model, x) - x) ** 2))], rel=1e-12)
    # the ELBO's reconstruction term at z = mu under that sigma^2 is 0.5 D [1 + log 2 pi sigma^2]
    assert E.elbo(model, x, n_draws=1, rng=0)["recon_at_mu"] == pytest.approx(0.5 * 6 * (1 + LOG_2PI + t[0]), rel=1e-12)


def test_npvae_evaluate_a_gaussian_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--likelihood", "gaussian", "--out", str(out), "--no-figures"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--k", "4", "--limit", "20", "--no-classifier"]) == 0
    text = capsys.readouterr().out
    assert "not comparable with a Bernoulli NLL" in text and "N(x; mean, sigma^2 I)" in text
    saved = json.loads((out / "eval.json").read_text())
    model, _ = folders.load_run(out)
    assert saved["sigma2"] == pytest.approx(math.exp(model.params["log_sigma2"][0]), rel=1e-6)
    assert saved["nll_constant"] == 0 and saved["neg_elbo_density"] == saved["neg_elbo"]
    assert saved["nll_iwae"] is not None and saved["sigma2_setting"] == "learned"


# --------------------------------------------------------------------------------------------
# The linear VAE trained by fit against probabilistic PCA in closed form
# --------------------------------------------------------------------------------------------

def ppca_data(rng, n, d=20, true_dims=3, sigma2=0.1):
    """x = z W + b + noise from a known pPCA model (as in tests/test_ppca.py)."""
    W = rng.standard_normal((true_dims, d)) * np.array([[2.0], [1.5], [1.0]])[:true_dims]
    b = rng.standard_normal(d)
    return rng.standard_normal((n, true_dims)) @ W + b + math.sqrt(sigma2) * rng.standard_normal((n, d))


def train_linear_vae(x, z, sigma2, *, epochs, lr=3e-3, final_lr=1e-5, hold=0.75, seed=0):
    """VAE(D, [], Z, gaussian, linear output) trained by fit with Adam: lr for the first `hold` of
    the epochs, then an exponential decay to final_lr (the encoder's fine tuning needs it)."""
    model = VAE(x.shape[1], [], z, likelihood="gaussian", sigma2=sigma2, decoder_output="linear",
                dtype=np.float64, rng=seed)
    held = int(hold * epochs)

    def schedule(epoch):
        return lr if epoch <= held else lr * (final_lr / lr) ** ((epoch - held) / (epochs - held))

    fit(model, Adam(model.params, lr=lr), x, epochs=epochs, batch_size=128, rng=seed, lr_schedule=schedule,
        log=open("/dev/null", "w"))
    return model


@pytest.mark.slow
def test_linear_vae_trained_by_fit_reaches_probabilistic_pca():
    """Issue 15's targets on a known pPCA model (D 20, 3 true dims, Z 5, N 5000), trained with
    npvae's own fit: the learned sigma^2 within 2 % of the closed form, the exact ELBO within
    0.05 nats per example of the pPCA log-likelihood; with sigma^2 fixed between l_2 and l_3,
    exactly the 2 predicted active units (the other 3 collapse to the prior)."""
    x = ppca_data(np.random.default_rng(16), 5000)
    best = ppca.fit_ppca(x, 5)
    model = train_linear_vae(x, 5, "learned", epochs=GAUSS_EPOCHS)
    arrays = ppca.linear_vae_arrays(model)
    elbo = arrays.elbo(x).mean()
    print(f"learned: sigma2 {arrays.sigma2:.5f} vs {best.sigma2:.5f}; ELBO {elbo:.4f} vs {best.log_likelihood:.4f}")
    assert abs(arrays.sigma2 / best.sigma2 - 1) < 0.02
    assert best.log_likelihood - 0.05 < elbo <= best.log_likelihood + 1e-9

    sigma2 = math.sqrt(best.eigenvalues[1] * best.eigenvalues[2])
    fixed = ppca.fit_ppca(x, 5, sigma2)
    assert fixed.active == 2
    model = train_linear_vae(x, 5, sigma2, epochs=300, seed=1)
    assert E.active_units(model, x) == 2
    elbo = ppca.linear_vae_arrays(model, model.log_sigma2()).elbo(x).mean()
    print(f"fixed {sigma2:.4f}: ELBO {elbo:.4f} vs {fixed.log_likelihood:.4f}")
    assert fixed.log_likelihood - 0.05 < elbo <= fixed.log_likelihood + 1e-9


GAUSS_EPOCHS = 2000


def test_linear_vae_loss_and_grads_match_the_hand_written_reference_of_test_ppca():
    """The model's Gaussian loss and gradients against an independent, hand-written computation
    (tests/test_ppca.py's gaussian_vae_loss_and_grads), learned and fixed sigma^2."""
    from test_ppca import gaussian_vae_loss_and_grads
    rng = np.random.default_rng(7)
    x, eps = rng.standard_normal((9, 6)) + 0.5, rng.standard_normal((9, 3))
    for sigma2 in ("learned", 0.4):
        model = VAE(6, [], 3, likelihood="gaussian", sigma2=sigma2, decoder_output="linear", dtype=np.float64, rng=8)
        if sigma2 == "learned":
            model.params["log_sigma2"][...] = -0.9
        p = {"A": model.params["head.W"], "a": model.params["head.b"], "W": model.params["dec0.W"],
             "b": model.params["dec0.b"], "t": model.log_sigma2().copy()}
        loss, grads = gaussian_vae_loss_and_grads(p, x, eps, learn_sigma2=sigma2 == "learned")
        report, ours = model.loss_and_grads(x, eps)
        assert report["loss"] == pytest.approx(loss, rel=1e-12)
        for key, name in (("A", "head.W"), ("a", "head.b"), ("W", "dec0.W"), ("b", "dec0.b"), ("t", "log_sigma2")):
            if name in ours:
                np.testing.assert_allclose(ours[name], grads[key], rtol=1e-10, atol=1e-14)
