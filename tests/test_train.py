"""Tests for the training loop, run folders, checkpoints in use, and the `npvae train` command."""

from __future__ import annotations

import csv
import io
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from npvae import folders, runs, settings
from npvae.__main__ import main
from npvae.checkpoint import CheckpointError, load_checkpoint
from npvae.models import VAE, Autoencoder
from npvae.optim import Adam
from npvae.train import (Progress, TrainingDiverged, beta_at, clip_grad_norm, evaluate_loss, fit,
                         format_epoch, to_batch)

SMALL = ["--train-size", "300", "--test-size", "100", "--hidden", "32", "--latent", "2", "--batch-size", "50"]


def tiny_data(n=64, d=12, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, d), dtype=np.uint8)


def all_params(model):
    """Every parameter of the model, as one new flat array."""
    return np.concatenate([p.ravel() for p in model.params.values()])


def tiny_fit(epochs, history=None, model=None, opt=None, data_rng=None, **kw):
    x = tiny_data()
    model = model or VAE(12, [8], 3, rng=1)
    opt = opt or Adam(model.params, lr=1e-2)
    data_rng = data_rng or np.random.default_rng(2)
    h = fit(model, opt, x, epochs=epochs, batch_size=10, rng=data_rng, eval_images=x[:20], history=history,
            log=io.StringIO(), **kw)
    return model, opt, data_rng, h


# --------------------------------------------------------------------------------------------
# fit and its pieces
# --------------------------------------------------------------------------------------------


def test_warmup_schedule_rises_linearly_from_zero():
    assert [beta_at(e, 2.0, 4) for e in range(1, 7)] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.0]
    assert [beta_at(e, 1.0, 0) for e in (1, 2)] == [1.0, 1.0]


def test_fit_records_warmup_beta_in_history_and_restores_full_beta():
    model, _, _, history = tiny_fit(4, warmup=2)
    assert [row["beta"] for row in history] == [0.0, 0.5, 1.0, 1.0]
    assert model.beta == 1.0
    # with beta = 0 in epoch 1 the loss is the reconstruction alone
    assert history[0]["train_loss"] == pytest.approx(history[0]["train_recon"])


def test_history_rows_have_the_documented_columns():
    _, _, _, history = tiny_fit(2)
    assert list(history[0]) == ["epoch", "train_loss", "train_recon", "train_kl", "test_loss", "test_recon",
                                "test_kl", "beta", "lr", "seconds"]
    for row in history:
        assert row["train_loss"] == pytest.approx(row["train_recon"] + row["beta"] * row["train_kl"])
        assert row["test_loss"] == pytest.approx(row["test_recon"] + row["beta"] * row["test_kl"])


def test_same_seed_same_run_and_different_seed_different_run():
    a = all_params(tiny_fit(2)[0])
    b = all_params(tiny_fit(2)[0])
    c = all_params(tiny_fit(2, data_rng=np.random.default_rng(99))[0])
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_resume_in_memory_is_bitwise_identical():
    straight = all_params(tiny_fit(6)[0])
    model, opt, data_rng, history = tiny_fit(3)
    model2, _, _, _ = tiny_fit(6, history=history, model=model, opt=opt, data_rng=data_rng)
    assert np.array_equal(all_params(model2), straight)


def test_nan_loss_stops_with_epoch_and_batch_named():
    model = VAE(12, [8], 3, rng=1)
    model.params["dec1.b"][...] = np.nan
    with pytest.raises(TrainingDiverged, match=r"epoch 1, batch 1.*lower learning rate"):
        tiny_fit(2, model=model)


@pytest.mark.parametrize("images, pattern", [
    (np.full((30, 12), 255.0, dtype=np.float32), r"train_images must have values in \[0, 1\].*got values in \[(0|255), 255\]"),
    (np.full((30, 12), np.nan), "train_images contains NaN or inf"),
    (np.zeros((30, 13), dtype=np.uint8), re.escape("train_images must have shape (N, 12)")),
])
def test_fit_checks_the_whole_training_set_before_the_first_step(images, pattern):
    # fit checks its data once, up front (and then skips the per-batch checks): a bad image in
    # the last batch is found before any step changes the model.
    model = VAE(12, [8], 3, rng=1)
    before = all_params(model)
    good = images.copy()
    good[:-1] = 0                          # only the last image (the last batch) is bad
    for data in (images, good) if images.shape[1] == 12 else (images,):
        with pytest.raises(ValueError, match=pattern):
            fit(model, Adam(model.params, lr=1e-2), data, epochs=1, batch_size=10,
                rng=np.random.default_rng(0), log=io.StringIO())
    np.testing.assert_array_equal(all_params(model), before)


def test_to_batch_scales_uint8_and_reuses_buffer():
    images = np.array([[0, 255], [51, 102]], dtype=np.uint8)
    buf = np.empty((2, 2), dtype=np.float32)
    out = to_batch(images, np.array([1, 0]), np.dtype(np.float32), out=buf)
    assert out.dtype == np.float32 and np.shares_memory(out, buf)
    assert np.allclose(out, [[0.2, 0.4], [0.0, 1.0]])


def test_clip_grad_norm():
    g = np.array([3.0, 4.0], dtype=np.float32)
    assert clip_grad_norm(g, 1.0) == pytest.approx(5.0)
    assert np.allclose(g, [0.6, 0.8]) and g.dtype == np.float32
    g2 = np.array([0.3, 0.4])
    clip_grad_norm(g2, 1.0)
    assert np.allclose(g2, [0.3, 0.4])


@pytest.mark.parametrize("bad, pattern", [({"epochs": -1}, "epochs must be >= 0"), ({"batch_size": 0}, "batch_size"),
                                          ({"warmup": -1}, "warmup must be >= 0"), ({"clip": -1.0}, "clip must be"),
                                          ({"clip": 0.0}, "clip must be"), ({"clip": float("nan")}, "clip must be")])
def test_fit_refuses_settings_that_cannot_train(bad, pattern):
    model = VAE(12, [8], 3, rng=1)
    kw = {"epochs": 1, "batch_size": 10, **bad}
    with pytest.raises(ValueError, match=pattern):
        fit(model, Adam(model.params, lr=1e-2), tiny_data(), rng=np.random.default_rng(0), log=io.StringIO(), **kw)


@pytest.mark.parametrize("beta", [-1.0, float("nan"), float("inf")])
def test_fit_refuses_a_kl_weight_the_model_would_refuse(beta):
    model = VAE(12, [8], 3, rng=1)
    with pytest.raises(ValueError, match="beta must be"):
        fit(model, Adam(model.params, lr=1e-2), tiny_data(), epochs=1, batch_size=10, beta=beta,
            rng=np.random.default_rng(0), log=io.StringIO())


def test_to_batch_takes_dtype_names_and_refuses_a_buffer_of_another_dtype():
    images = tiny_data()
    x = to_batch(images, np.arange(3), "float32")
    assert x.dtype == np.float32 and to_batch(images, np.arange(3), np.float64).dtype == np.float64
    with pytest.raises(ValueError, match="out has dtype float64"):
        to_batch(images, np.arange(3), np.float32, out=np.empty((5, 12)))


def test_evaluate_loss_takes_a_seed_and_refuses_nothing_to_evaluate():
    model = VAE(12, [8], 3, rng=1)
    x = tiny_data()
    assert evaluate_loss(model, x, rng=3) == evaluate_loss(model, x, rng=np.random.default_rng(3))
    with pytest.raises(ValueError, match="batch_size"):
        evaluate_loss(model, x, batch_size=0)
    with pytest.raises(ValueError, match="at least one image"):
        evaluate_loss(model, x[:0])


def test_clip_grad_norm_scales_a_gradient_whose_squares_overflow_float32():
    # 10 entries of 1e19: the sum of squares (1e39) overflows float32; the norm is 1e19 sqrt(10)
    g = np.full(10, 1e19, dtype=np.float32)
    assert clip_grad_norm(g, 1.0) == pytest.approx(1e19 * 10 ** 0.5, rel=1e-6)
    np.testing.assert_allclose(g, np.full(10, 10 ** -0.5), rtol=1e-6)    # scaled to norm 1, not zeroed
    assert g.dtype == np.float32


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")  # made to diverge
@pytest.mark.parametrize("stop", ["diverged", "interrupted"])
def test_fit_gives_the_full_beta_back_when_it_stops_early(stop):
    # During a warm-up, fit sets model.beta epoch by epoch; a fit that ends early must still
    # leave the full beta, or a later fit on the same model would take the warm-up's value as full.
    model = VAE(12, [8], 3, beta=2.0, rng=1)

    def on_epoch_end(history):
        if len(history) == 1:
            raise KeyboardInterrupt
    kw = dict(on_epoch_end=on_epoch_end) if stop == "interrupted" else dict(lr_schedule=lambda e: 1e30)
    with pytest.raises(KeyboardInterrupt if stop == "interrupted" else TrainingDiverged):
        fit(model, Adam(model.params, lr=1e-2), tiny_data(), epochs=4, batch_size=10, warmup=3,
            rng=np.random.default_rng(0), log=io.StringIO(), **kw)
    assert model.beta == 2.0


def test_evaluate_loss_is_a_weighted_mean_over_batches():
    model = VAE(12, [8], 3, rng=1)
    x = tiny_data(25)
    eps = np.random.default_rng(5).standard_normal((25, 3), dtype=np.float32)
    whole = model.loss(x.astype(np.float32) / 255, eps=eps)
    batched = evaluate_loss(model, x, batch_size=10, rng=np.random.default_rng(5))
    # the same draws in the same order: the batched figures are the weighted mean of the whole
    assert batched["loss"] == pytest.approx(whole["loss"], rel=1e-5)
    assert batched["kl"] == pytest.approx(whole["kl"], rel=1e-5)


def test_autoencoder_history_has_no_kl():
    x = tiny_data()
    model = Autoencoder(12, [8], 3, rng=0)
    h = fit(model, Adam(model.params), x, epochs=1, batch_size=16, rng=np.random.default_rng(0), log=io.StringIO())
    assert "train_kl" not in h[0] and "beta" not in h[0]
    assert "kl" not in format_epoch(h[0])


def test_progress_plain_lines_when_not_a_terminal():
    stream = io.StringIO()
    p = Progress(stream)
    assert not p.live
    for b in range(1, 9):
        p.batch(1, 2, b, 8, 1.0, 0.1 * b)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4 and "\r" not in stream.getvalue()     # one line per quarter
    assert lines[-1].startswith("  epoch 1/2: 8/8 batches")


def test_progress_live_bar_on_a_terminal():
    stream = io.StringIO()
    p = Progress(stream, live=True)
    p.batch(1, 2, 3, 8, 1.0, 0.3)
    assert stream.getvalue().startswith("\repoch 1/2 [") and "3/8 batches" in stream.getvalue()
    assert "s left" in stream.getvalue()


# --------------------------------------------------------------------------------------------
# Run folders and the command line
# --------------------------------------------------------------------------------------------


def test_train_command_writes_everything(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "epoch   1" in printed and "epoch   2" in printed and "Figures:" in printed
    for name in ("checkpoint.npz", "history.csv", "history.json", "config.json", "reconstructions.png",
                 "samples.png", "interpolation.png", "training_curves.png", "latent.png"):
        assert (out / name).is_file(), name
        assert str(out / name) in printed or name in ("config.json",)
    with open(out / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert list(rows[0]) == ["epoch", "train_loss", "train_recon", "train_kl", "test_loss", "test_recon",
                             "test_kl", "beta", "lr", "seconds"]
    assert json.loads((out / "history.json").read_text())[1]["epoch"] == 2
    assert json.loads((out / "config.json").read_text())["latent"] == 2
    assert load_checkpoint(out / "checkpoint.npz").epoch == 2
    for name in ("sample", "reconstruct", "interpolate"):
        assert main([name, str(out), "--out", str(tmp_path / name)]) == 0
        assert len(list((tmp_path / name).glob("*.png"))) == 1


@pytest.mark.parametrize("option, value", [("--clip", "-1"), ("--clip", "0"), ("--clip", "nan"), ("--lr", "0"),
                                           ("--warmup", "-5"), ("--epochs", "0"), ("--beta", "-1"),
                                           ("--beta", "inf")])
def test_train_refuses_bad_numbers_before_doing_anything(option, value, tmp_path, capsys):
    # a negative clipping norm would climb the loss, 0 would freeze the model: refused up front
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        main(["train", *SMALL, option, value, "--out", str(out)])
    assert e.value.code == 2 and option in capsys.readouterr().err and not out.exists()


def test_train_run_checks_settings_and_data_before_writing(tmp_path, monkeypatch):
    # the library path (no argparse): nothing is written for settings or data that cannot train
    cfg = {"train_size": 50, "test_size": 20, "hidden": [8], "latent": 2, "epochs": 1}
    for bad, pattern in (({"epochs": -1}, "epochs must be >= 0"), ({"warmup": -2}, "warmup must be >= 0"),
                         ({"clip": 0.0}, "clip must be a finite number > 0")):
        with pytest.raises(ValueError, match=pattern):
            runs.train_run({**cfg, **bad}, tmp_path / "a", stream=io.StringIO())
        assert not (tmp_path / "a").exists()
    # images of 10 x 10 pixels in a data folder: refused before an epoch-0 checkpoint exists
    from npvae.data import write_idx
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("t10k", 30)):
        write_idx(data / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 10, 10), dtype=np.uint8))
        write_idx(data / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, n, dtype=np.uint8))
    with pytest.raises(ValueError, match=re.escape("the training images must have shape (N, 784)")):
        runs.train_run({**cfg, "data_dir": str(data)}, tmp_path / "b", stream=io.StringIO())
    assert not (tmp_path / "b" / "checkpoint.npz").exists()


def test_small_test_sets_give_every_figure_they_can(tmp_path, capsys):
    # 5 test images: 2 interpolation rows instead of 6; 1 test image: no interpolation at all
    small = [a for a in SMALL if a not in ("--test-size", "100")]
    out5 = tmp_path / "five"
    assert main(["train", *small, "--test-size", "5", "--epochs", "1", "--out", str(out5)]) == 0
    assert (out5 / "interpolation.png").is_file() and (out5 / "latent.png").is_file()
    out1 = tmp_path / "one"
    assert main(["train", *small, "--test-size", "1", "--epochs", "1", "--out", str(out1)]) == 0
    assert (out1 / "training_curves.png").is_file() and not (out1 / "interpolation.png").exists()
    capsys.readouterr()
    assert main(["interpolate", str(out1)]) == 1
    assert "at least 2 test images" in capsys.readouterr().err


def test_figure_commands_accept_a_checkpoint_file(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(out), "--no-figures"]) == 0
    for name, png in (("sample", "samples.png"), ("reconstruct", "reconstructions.png"),
                      ("interpolate", "interpolation.png")):
        assert main([name, str(out / "checkpoint.npz")]) == 0
        assert (out / png).is_file()


def test_a_relative_data_dir_is_stored_absolute(tmp_path, monkeypatch):
    # the run's other commands (figures, evaluate, --resume) must find the data from any folder
    import npvae.data
    bundled = Path(npvae.data.__file__).parent / "datasets" / "mnist"
    monkeypatch.chdir(bundled.parent)
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--data-dir", "mnist", "--out", str(out), "--no-figures"]) == 0
    assert json.loads((out / "config.json").read_text())["data_dir"] == str(bundled.resolve())
    monkeypatch.chdir(tmp_path)
    assert main(["reconstruct", str(out)]) == 0
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2", "--data-dir", str(bundled),
                 "--no-figures"]) == 0


def test_overwrite_removes_the_replaced_runs_files(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(out)]) == 0
    (out / "eval.json").write_text("{}")                       # as `npvae evaluate` would have left it
    assert main(["train", *[a if a != "2" else "3" for a in SMALL], "--epochs", "1", "--out", str(out),
                 "--overwrite", "--no-figures"]) == 0
    assert not (out / "eval.json").exists() and not (out / "latent.png").exists()   # the 2-D run's figure
    assert json.loads((out / "config.json").read_text())["latent"] == 3
    (out / "notes.txt").write_text("mine")                     # files npvae does not write stay
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(out), "--overwrite", "--no-figures"]) == 0
    assert (out / "notes.txt").read_text() == "mine"


def test_resume_to_fewer_epochs_than_trained_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "2", "--out", str(out), "--no-figures"]) == 0
    assert main(["train", "--out", str(out), "--resume", "--epochs", "1"]) == 1
    assert "trained 2 epochs already" in capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["epochs"] == 2


def test_train_refuses_to_overwrite_a_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(out), "--no-figures"]) == 0
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(out), "--no-figures"]) == 1
    assert "--resume" in capsys.readouterr().err


def test_resume_from_disk_is_bitwise_identical(tmp_path, capsys):
    args = [*SMALL, "--no-figures", "--seed", "3"]
    assert main(["train", *args, "--epochs", "4", "--out", str(tmp_path / "a")]) == 0
    assert "Trained 4 epochs in " in capsys.readouterr().out
    assert main(["train", "--epochs", "8", "--out", str(tmp_path / "a"), "--resume", "--no-figures"]) == 0
    assert "Trained epochs 5-8 in " in capsys.readouterr().out          # not "Trained 8 epochs"
    assert main(["train", *args, "--epochs", "8", "--out", str(tmp_path / "b")]) == 0
    a, b = load_checkpoint(tmp_path / "a" / "checkpoint.npz"), load_checkpoint(tmp_path / "b" / "checkpoint.npz")
    assert a.epoch == b.epoch == 8
    for k in b.params:
        assert np.array_equal(a.params[k], b.params[k]), k
    for k in b.optimizer_state:
        assert np.array_equal(a.optimizer_state[k], b.optimizer_state[k]), k
    assert [r["test_loss"] for r in a.history] == [r["test_loss"] for r in b.history]


def test_resume_with_different_architecture_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(out), "--no-figures"]) == 0
    assert main(["train", "--hidden", "64", "--epochs", "2", "--out", str(out), "--resume"]) == 1
    assert "hidden" in capsys.readouterr().err


def test_corrupt_checkpoint_gives_a_clear_error(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(out), "--no-figures"]) == 0
    ckpt = out / "checkpoint.npz"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    assert main(["sample", str(out)]) == 1
    err = capsys.readouterr().err
    assert str(ckpt) in err and "truncated" in err
    with pytest.raises(CheckpointError, match="no checkpoint"):
        folders.load_run(tmp_path / "nowhere")


def test_checkpoint_from_another_architecture_is_refused(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(out), "--no-figures"]) == 0
    ckpt = load_checkpoint(out / "checkpoint.npz")
    ckpt.config["hidden"] = [40]
    from npvae.checkpoint import save_checkpoint
    save_checkpoint(out / "checkpoint.npz", ckpt)
    with pytest.raises(CheckpointError, match="another architecture"):
        folders.load_run(out)


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")  # made to diverge
def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(out), "--no-figures",
                 "--likelihood", "bernoulli"]) == 0
    before = (out / "checkpoint.npz").read_bytes()
    # the learning rate may change on resume (the remedy the message suggests); 1e6 diverges
    assert main(["train", "--epochs", "3", "--out", str(out), "--resume", "--no-figures", "--lr", "1e6"]) == 1
    err = capsys.readouterr().err
    assert "epoch 2, batch" in err and "--lr" in err and "--clip" in err
    assert (out / "checkpoint.npz").read_bytes() == before


def test_run_name_tells_settings_apart():
    base = dict(settings.DEFAULTS)
    assert settings.run_name(base) == "vae-l2-h400-z20"
    assert settings.run_name({**base, "model": "ae", "likelihood": "bernoulli"}) == "ae-bernoulli-h400-z20"
    assert settings.run_name({**base, "beta": 4.0, "seed": 2}) == "vae-l2-h400-z20-beta4-seed2"


def test_ctrl_c_saves_a_resumable_checkpoint_and_exits_130(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "npvae", "train", *SMALL, "--epochs", "100000",
                             "--out", str(out), "--no-figures"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            # a shell running us in the background may have left SIGINT ignored
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 60
        while time.time() < deadline:     # wait until at least one epoch is complete
            if (out / "history.json").exists() and json.loads((out / "history.json").read_text() or "[]"):
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, output
    assert "Resume with: npvae train --out" in output
    done = load_checkpoint(out / "checkpoint.npz").epoch
    assert done >= 1
    assert main(["train", "--out", str(out), "--resume", "--epochs", str(done + 1), "--no-figures"]) == 0
    assert load_checkpoint(out / "checkpoint.npz").epoch == done + 1


def test_iwae_schedule_stages():
    from npvae.train import iwae_lr
    # stage i lasts 3^i epochs at 1e-3 * 10^(-i/7): epochs 1 | 2-4 | 5-13 | 14-40 | ... | 1094-3280
    assert iwae_lr(1) == pytest.approx(1e-3)
    assert iwae_lr(2) == iwae_lr(4) == pytest.approx(1e-3 * 10 ** (-1 / 7))
    assert iwae_lr(5) == iwae_lr(13) == pytest.approx(1e-3 * 10 ** (-2 / 7))
    assert iwae_lr(40) == pytest.approx(1e-3 * 10 ** (-3 / 7)) and iwae_lr(41) < iwae_lr(40)
    assert iwae_lr(3280) == iwae_lr(5000) == pytest.approx(1e-4)


def test_iwae_preset_sets_the_papers_model_and_schedule(tmp_path):
    out = tmp_path / "iwae"
    assert main(["train", "--preset", "iwae-mnist", "--train-size", "100", "--test-size", "50", "--epochs", "2",
                 "--out", str(out), "--no-figures"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["hidden"], cfg["latent"], cfg["activation"], cfg["likelihood"], cfg["binarize"], cfg["batch_size"],
            cfg["adam_eps"]) == ([200, 200], 50, "tanh", "bernoulli", "dynamic", 20, 1e-4)
    history = json.loads((out / "history.json").read_text())
    assert [row["lr"] for row in history] == pytest.approx([1e-3, 1e-3 * 10 ** (-1 / 7)])
    # the preset's folder name, plus what this run changes (a run with other settings must not
    # land in the folder of the preset's own run)
    assert settings.run_name(cfg) == "iwae-mnist-trainsize100"
    preset = {**settings.DEFAULTS, **settings.PRESETS["iwae-mnist"], "preset": "iwae-mnist"}
    assert settings.run_name(preset) == "iwae-mnist"
    assert settings.run_name({**preset, "seed": 1}) == "iwae-mnist-seed1"
    assert settings.run_name({**preset, "hidden": [16], "latent": 2, "epochs": 3280}) == "iwae-mnist-h16-z2"
