"""Run folders: what `npvae train` writes (checkpoint, history, config, figures) and reads back.

A run folder holds
    checkpoint.npz   parameters, optimizer state, generator states, epoch, history, config
    config.json      the run's settings (the same as in the checkpoint)
    history.csv      one row per epoch, with a header naming each column
    history.json     the same rows as JSON
    *.png            the standard figures
The checkpoint is rewritten (atomically) after every epoch, so a run can always be resumed.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
import time
from pathlib import Path
from typing import TextIO

import numpy as np

from .checkpoint import Checkpoint, CheckpointError, atomic_write_text, load_checkpoint, save_checkpoint
from .data import load_mnist_uint8, to_float
from .models import VAE, Autoencoder, build_model
from . import fast
from .progress import Progress
from .train import check_settings, fit, iwae_lr

CHECKPOINT = "checkpoint.npz"
# Everything `npvae train` and `npvae evaluate` write into a run folder: --overwrite removes them.
RUN_FILES = (CHECKPOINT, "config.json", "history.csv", "history.json", "eval.json", "reconstructions.png",
             "samples.png", "interpolation.png", "training_curves.png", "latent.png")

# The seed's model: a VAE with the L2 reconstruction loss plus KL, 784-400-20, ReLU, Adam 1e-3,
# batch 128, 10 epochs, on the bundled MNIST.
DEFAULTS: dict = {
    "model": "vae", "likelihood": "l2", "hidden": [400], "latent": 20, "activation": "relu",
    "beta": 1.0, "warmup": 0, "epochs": 10, "batch_size": 128, "lr": 1e-3, "optimizer": "adam",
    "clip": None, "seed": 0, "dtype": "float32", "data_dir": None, "binarize": "none",
    "train_size": None, "test_size": None, "schedule": "constant", "adam_eps": 1e-8, "preset": None,
    "sigma2": "learned", "decoder_output": "sigmoid",     # likelihood "gaussian" only
}

# Named settings. "iwae-mnist" is the one-stochastic-layer VAE of Burda, Grosse and
# Salakhutdinov, "Importance Weighted Autoencoders" (2015): 784-200-200-50 with tanh, Bernoulli
# likelihood on dynamically binarized MNIST, Adam (eps 1e-4), batch 20, and their schedule of
# 3280 epochs (`--epochs 3280`); by default only its first four stages, 1 + 3 + 9 + 27 = 40 epochs.
PRESETS: dict[str, dict] = {
    "iwae-mnist": {"model": "vae", "likelihood": "bernoulli", "hidden": [200, 200], "latent": 50,
                   "activation": "tanh", "binarize": "dynamic", "batch_size": 20, "lr": 1e-3,
                   "schedule": "iwae", "adam_eps": 1e-4, "epochs": 40},
}
# Settings a resumed run may change: the epoch to train up to, and the remedies for a diverging
# run (a lower learning rate, gradient clipping). Every other setting must match the run's.
CHANGEABLE_ON_RESUME = ("epochs", "lr", "clip")


def positive_int(text: str) -> int:
    """An argparse type for the command line's counts (epochs, sizes, samples)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def nonnegative_int(text: str) -> int:
    """An argparse type for counts that may be 0 (the warm-up's epochs)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    """An argparse type for a finite number > 0 (learning rate, clipping norm)."""
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def nonnegative_float(text: str) -> float:
    """An argparse type for a finite number >= 0 (the KL weight beta)."""
    value = float(text)
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


# The settings a run's folder name shows when they differ from the defaults (or the preset's).
_NAMED_SETTINGS = ("activation", "binarize", "warmup", "seed", "dtype", "lr", "batch_size", "optimizer",
                   "train_size", "clip")


def run_name(cfg: dict) -> str:
    """A folder name that tells the settings apart, e.g. "vae-l2-h400-z20", or for a preset its
    name and what differs from it, e.g. "iwae-mnist-h16-trainsize200"."""
    def hidden(h):
        return "h" + "x".join(map(str, h))
    if cfg.get("preset"):
        name, base = cfg["preset"], {**DEFAULTS, **PRESETS[cfg["preset"]]}
        parts = [("model", str), ("likelihood", str), ("hidden", hidden), ("latent", lambda z: f"z{z}"),
                 ("beta", lambda b: f"beta{b:g}")]
        for key, show in parts:
            if cfg[key] != base[key]:
                name += "-" + show(cfg[key])
    else:
        name, base = f"{cfg['model']}-{cfg['likelihood']}-{hidden(cfg['hidden'])}-z{cfg['latent']}", DEFAULTS
        if cfg["model"] == "vae" and cfg["beta"] != 1:
            name += f"-beta{cfg['beta']:g}"
    if cfg.get("likelihood") == "gaussian":       # its noise level and output, e.g. "-sigma2-optimal-linear"
        s2 = cfg["sigma2"]
        name += f"-sigma2-{s2}" if isinstance(s2, str) else f"-sigma2-{s2:g}"
        name += "-linear" if cfg["decoder_output"] == "linear" else ""
    for key in _NAMED_SETTINGS:
        if cfg[key] != base[key]:
            name += f"-{key.replace('_', '')}{cfg[key]}"
    if cfg["data_dir"]:
        name += "-" + Path(cfg["data_dir"]).name
    return name


def _absolute(path: str) -> str:
    """A data folder as an absolute path (~ expanded), as the run's config stores it."""
    return str(Path(path).expanduser().resolve())


def run_folder(run: str | Path) -> Path:
    """The folder of a run given as its folder or as its checkpoint file."""
    run = Path(run)
    return run.parent if run.is_file() else run


def model_config(cfg: dict) -> dict:
    """The arguments of `build_model` for a run's settings."""
    return {"model": cfg["model"], "input_dim": 784, "hidden_dims": list(cfg["hidden"]),
            "latent_dim": cfg["latent"], "likelihood": cfg["likelihood"], "beta": cfg["beta"],
            "activation": cfg["activation"], "dtype": cfg["dtype"], "sigma2": cfg["sigma2"],
            "decoder_output": cfg["decoder_output"]}


def make_run_optimizer(cfg: dict, model):
    """The run's optimizer: a fused one (npvae.fast), so that the checkpoint holds its exact state."""
    settings = {"eps": cfg["adam_eps"]} if cfg["optimizer"] == "adam" else {}
    return fast.make_optimizer(cfg["optimizer"], model, cfg["lr"], **settings)


def load_data(cfg: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train images uint8, test images uint8, test labels) for a run, trimmed to the subset sizes."""
    x_train, _ = load_mnist_uint8("train", cfg["data_dir"])
    x_test, y_test = load_mnist_uint8("test", cfg["data_dir"])
    if cfg["train_size"]:
        x_train = x_train[:cfg["train_size"]]
    if cfg["test_size"]:
        x_test, y_test = x_test[:cfg["test_size"]], y_test[:cfg["test_size"]]
    return x_train, x_test, y_test


# --------------------------------------------------------------------------------------------
# Writing and reading a run folder
# --------------------------------------------------------------------------------------------


def write_history(out: Path, history: list[dict]) -> None:
    """history.csv (header row, one row per epoch; empty cells where a run has no such column) and history.json."""
    columns: list[str] = []
    for row in history:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(out / "history.csv", buf.getvalue())
    atomic_write_text(out / "history.json", json.dumps(history, indent=1) + "\n")


def save_run(out: Path, model, optimizer, rngs: dict[str, np.random.Generator], history: list[dict],
             cfg: dict) -> None:
    """Write the checkpoint (atomically), the history files and config.json."""
    save_checkpoint(out / CHECKPOINT, Checkpoint(
        params=dict(model.params), optimizer_state=optimizer.state_dict(),
        rng_state={k: g.bit_generator.state for k, g in rngs.items()},
        epoch=len(history), history=history, config=cfg))
    write_history(out, history)


def load_run(run_dir: str | Path) -> tuple[Autoencoder | VAE, Checkpoint]:
    """Rebuild the model of a run folder from its checkpoint. Returns (model, checkpoint)."""
    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT if run_dir.is_dir() else run_dir
    if not path.exists():
        raise CheckpointError(f"{path}: no checkpoint here; is {run_dir} a run folder written by `npvae train`?")
    ckpt = load_checkpoint(path)
    cfg = {**DEFAULTS, **ckpt.config}
    model = build_model(model_config(cfg), rng=cfg["seed"])
    expected = {k: (v.shape, v.dtype) for k, v in model.params.items()}
    ckpt = load_checkpoint(path, expected_params=expected)     # checks names, shapes and dtypes
    for k, v in ckpt.params.items():
        model.params[k][...] = v
    if "model" in ckpt.rng_state:
        model.rng.bit_generator.state = ckpt.rng_state["model"]
    return model, ckpt


# --------------------------------------------------------------------------------------------
# The standard figures
# --------------------------------------------------------------------------------------------


def _codes(model, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """The point in latent space of each image (uint8 or float): mu for a VAE, z for an AE. (N, Z)."""
    # uint8 images are converted a batch at a time, not all at once (31 MB for the test set)
    return np.concatenate([model.codes(as_float(images[s:s + batch_size]))
                           for s in range(0, len(images), batch_size)])


def figure_reconstruct(model, x_test: np.ndarray, out: Path, n: int = 12) -> Path:
    from . import plots
    x = as_float(x_test[:n])
    recon = model.decode(_codes(model, x))
    return plots.reconstructions(x, recon, out / "reconstructions.png",
                                 title=f"Test images (top) and their reconstructions (bottom), {type(model).__name__}")


def figure_sample(model, out: Path, rng: np.random.Generator, n: int = 100) -> Path:
    from . import plots
    z = rng.standard_normal((n, model.latent_dim)).astype(model.dtype)
    what = "samples from the prior N(0, I)" if isinstance(model, VAE) else "decodes of z ~ N(0, I) (an AE has no prior)"
    return plots.image_grid(model.decode(z), out / "samples.png", ncols=10, title=f"{type(model).__name__}: {what}")


def figure_interpolate(model, x_test: np.ndarray, out: Path, pairs: int = 6, steps: int = 10) -> Path:
    from . import plots
    pairs = min(pairs, len(x_test) // 2)             # a small test set gives fewer rows
    if pairs < 1:
        raise ValueError(f"an interpolation needs at least 2 test images, the run has {len(x_test)}")
    codes = _codes(model, x_test[:2 * pairs])
    a, b = codes[0::2], codes[1::2]                                   # (pairs, Z) each
    t = np.linspace(0, 1, steps, dtype=model.dtype)[None, :, None]    # (1, steps, 1)
    path = (1 - t) * a[:, None, :] + t * b[:, None, :]                # (pairs, steps, Z)
    images = model.decode(path.reshape(-1, model.latent_dim)).reshape(pairs, steps, -1)
    return plots.interpolation_grid(images, out / "interpolation.png",
                                    title=f"Linear interpolation between the codes of two test images, {type(model).__name__}")


def write_figures(model, history: list[dict], x_test: np.ndarray, y_test: np.ndarray, out: Path,
                  seed: int = 0) -> list[Path]:
    """All standard figures of a run; the 2-D latent scatter only when Z = 2."""
    from . import plots
    rng = np.random.default_rng(seed)
    paths = [figure_reconstruct(model, x_test, out), figure_sample(model, out, rng),
             *([figure_interpolate(model, x_test, out)] if len(x_test) >= 2 else []),
             plots.training_curves(history, out / "training_curves.png",
                                   **({"recon_ylabel": "nats per image, -log N(x; mean, sigma^2 I)"}
                                      if model.likelihood == "gaussian" else {"likelihood": model.likelihood}),
                                   title=f"{type(model).__name__} ({model.likelihood}): the two losses per epoch")]
    if model.latent_dim == 2:
        paths.append(plots.latent_scatter(_codes(model, x_test), y_test, out / "latent.png",
                                          title="Test set in latent space, coloured by digit"))
    return paths


def as_float(images: np.ndarray) -> np.ndarray:
    """uint8 pixels as float32 in [0, 1]; floats unchanged."""
    return to_float(images) if images.dtype == np.uint8 else images


# --------------------------------------------------------------------------------------------
# `npvae train`
# --------------------------------------------------------------------------------------------


def train_run(cfg: dict, out: str | Path | None = None, *, resume: bool = False, overwrite: bool = False,
              figures: bool = True, stream: TextIO | None = None) -> Path:
    """Train a run from its settings, writing everything into `out` (default runs/<name>).

    With resume=True, continue the run in `out` from its checkpoint up to cfg["epochs"] epochs.
    Raises TrainingDiverged, CheckpointError, or FileExistsError (a finished run in the way).
    """
    stream = stream if stream is not None else sys.stdout
    cfg = {**DEFAULTS, **cfg}
    if cfg["data_dir"]:     # an absolute path, so the run's commands work from any folder
        cfg["data_dir"] = _absolute(cfg["data_dir"])
    check_settings(epochs=cfg["epochs"], batch_size=cfg["batch_size"], warmup=cfg["warmup"], clip=cfg["clip"],
                   beta=cfg["beta"])
    out = Path(out) if out is not None else Path("runs") / run_name(cfg)
    ckpt_path = out / CHECKPOINT
    seeds = np.random.SeedSequence(cfg["seed"]).spawn(2)
    if resume:
        model, ckpt = load_run(out)
        saved = {**DEFAULTS, **ckpt.config}
        if saved["data_dir"]:      # runs written before data_dir was stored resolved
            saved["data_dir"] = _absolute(saved["data_dir"])
        given = cfg.get("_given", ())
        differ = [k for k in given if k not in CHANGEABLE_ON_RESUME and cfg[k] != saved[k]]
        if differ:
            raise ValueError(f"cannot resume {out} with different settings: "
                             + ", ".join(f"{k}={cfg[k]!r} (the run has {saved[k]!r})" for k in differ))
        cfg = {**saved, **{k: cfg[k] for k in CHANGEABLE_ON_RESUME if k in given}}
        if cfg["epochs"] < ckpt.epoch:
            raise ValueError(f"{out} has trained {ckpt.epoch} epochs already; --epochs gives the epoch to "
                             f"train up to, so it must be at least {ckpt.epoch}")
        optimizer = make_run_optimizer(cfg, model)
        optimizer.load_state_dict(ckpt.optimizer_state)
        data_rng = np.random.default_rng(seeds[1])
        data_rng.bit_generator.state = ckpt.rng_state["data"]
        history = ckpt.history
        stream.write(f"Resuming {out} after epoch {ckpt.epoch}, training to epoch {cfg['epochs']}\n")
    else:
        if ckpt_path.exists() and not overwrite:
            raise FileExistsError(f"{out} already holds a run. Continue it with --resume (and --epochs N "
                                  f"for more epochs), choose another folder with --out, or pass --overwrite.")
        model = build_model(model_config(cfg), rng=np.random.default_rng(seeds[0]))
        optimizer = make_run_optimizer(cfg, model)
        data_rng = np.random.default_rng(seeds[1])
        history = []
    cfg.pop("_given", None)
    x_train, x_test, y_test = load_data(cfg)
    model.check_data(x_train, "the training images")    # before anything is written
    if overwrite and not resume and ckpt_path.exists():
        for name in RUN_FILES:                      # the replaced run's files would mislead
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.json", json.dumps(cfg, indent=1) + "\n")

    rngs = {"model": model.rng, "data": data_rng}
    save = lambda h: save_run(out, model, optimizer, rngs, h, cfg)   # noqa: E731
    if not history:
        save(history)     # epoch 0: even a run interrupted in its first epoch can be resumed
    stream.write(f"Training {type(model).__name__} {784}-{'-'.join(map(str, cfg['hidden']))}-{cfg['latent']} "
                 f"({cfg['likelihood']} likelihood, {model.num_params:,} parameters) on {len(x_train):,} images, "
                 f"testing on {len(x_test):,}; run folder {out}\n")
    start, first = time.perf_counter(), len(history) + 1
    try:
        history = fit(model, optimizer, x_train, epochs=cfg["epochs"], batch_size=cfg["batch_size"],
                      rng=data_rng, eval_images=x_test, beta=cfg["beta"], warmup=cfg["warmup"],
                      clip=cfg["clip"], binarization=cfg["binarize"], history=history,
                      lr_schedule=(lambda e: iwae_lr(e, cfg["lr"])) if cfg["schedule"] == "iwae" else None,
                      eval_seed=cfg["seed"], on_epoch_end=save, progress=Progress(stream), log=stream)
    except KeyboardInterrupt:
        done = len(load_checkpoint(ckpt_path).history)
        stream.write(f"\nInterrupted. The checkpoint of epoch {done} is in {ckpt_path}.\n"
                     f"Resume with: npvae train --out {out} --resume --epochs {cfg['epochs']}\n")
        raise
    trained = (f"{cfg['epochs']} epochs" if first == 1 else
               f"epochs {first}-{cfg['epochs']}" if first <= cfg["epochs"] else "no more epochs")
    stream.write(f"Trained {trained} in {time.perf_counter() - start:.1f} s.\n")
    if figures:
        paths = write_figures(model, history, x_test, y_test, out, seed=cfg["seed"])
        stream.write("Figures:\n" + "".join(f"  {p}\n" for p in paths))
    stream.write(f"Checkpoint: {ckpt_path}\nHistory: {out / 'history.csv'}, {out / 'history.json'}\n")
    return out
