"""Run folders: what `npvae train` writes (checkpoint, history, config, figures) and reads back.

A run folder holds
    checkpoint.npz   parameters, optimizer state, generator states, epoch, history, config
    config.json      the run's settings (the same as in the checkpoint)
    history.csv      one row per epoch, with a header naming each column
    history.json     the same rows as JSON
    *.png            the standard figures
    .npvae.lock      while a process trains into the folder: its PID (see `locked`)
The checkpoint is rewritten (atomically) after every epoch, so a run can always be resumed.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import errno
import io
import json
import math
import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Callable, TextIO

import numpy as np

from .checkpoint import (Checkpoint, CheckpointError, atomic_write_text, check_architecture, load_checkpoint,
                         save_checkpoint)
from .cvae import CVAE
from .data import as_float, in_batches, load_mnist_uint8
from .models import VAE, Autoencoder, build_model
from . import fast
from .progress import Progress
from .train import check_settings, fit, iwae_lr

CHECKPOINT = "checkpoint.npz"
LOCK = ".npvae.lock"
# Everything `npvae train` and `npvae evaluate` write into a run folder: --overwrite removes them.
RUN_FILES = (CHECKPOINT, "config.json", "history.csv", "history.json", "eval.json", "reconstructions.png",
             "samples.png", "interpolation.png", "training_curves.png", "latent.png", "style_grid.png", "analogy.png",
             *(f"samples_digit{d}.png" for d in range(10)))

# The study note's model (the note npvae started from: a VAE with the L2 loss plus KL): 784-400-20,
# ReLU, Adam 1e-3, batch 128, 10 epochs, on the bundled MNIST.
DEFAULTS: dict = {
    "model": "vae", "likelihood": "l2", "hidden": [400], "latent": 20, "activation": "relu",
    "beta": 1.0, "warmup": 0, "epochs": 10, "batch_size": 128, "lr": 1e-3, "optimizer": "adam",
    "clip": None, "seed": 0, "dtype": "float32", "data_dir": None, "binarize": "none",
    "train_size": None, "test_size": None, "schedule": "constant", "adam_eps": 1e-8, "preset": None,
    "sigma2": "learned", "decoder_output": "sigmoid",     # likelihood "gaussian" only
    "threads": None,    # the BLAS threads it trained with (they change the matrix products' rounding)
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
CHANGEABLE_ON_RESUME = ("epochs", "lr", "clip", "threads")
# The settings that take one of a few names: the command line's choices, and what a checkpoint may hold.
CHOICES: dict[str, tuple] = {
    "model": ("vae", "ae", "cvae"), "likelihood": ("l2", "bernoulli", "gaussian"),
    "decoder_output": ("sigmoid", "linear"),
    "activation": ("relu", "leaky_relu", "tanh", "sigmoid", "softplus"), "optimizer": ("adam", "sgd"),
    "dtype": ("float32", "float64"), "binarize": ("none", "static", "dynamic"), "schedule": ("constant", "iwae"),
    "preset": (None, *PRESETS),
}


class RunInUse(RuntimeError):
    """Another process is training into the run folder (it holds the folder's lock)."""


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


def _whole(value, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _finite(value, least: float, strict: bool) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and (value > least if strict else value >= least))


# What each numeric or free-form setting of a run must be: (description, test).
_SETTING_RULES: dict[str, tuple[str, Callable[[object], bool]]] = {
    "hidden": ("a list of integers >= 1", lambda v: isinstance(v, list) and all(_whole(h, 1) for h in v)),
    "latent": ("an integer >= 1", lambda v: _whole(v, 1)),
    "beta": ("a finite number >= 0", lambda v: _finite(v, 0, strict=False)),
    "warmup": ("an integer >= 0", lambda v: _whole(v, 0)),
    "epochs": ("an integer >= 0", lambda v: _whole(v, 0)),
    "batch_size": ("an integer >= 1", lambda v: _whole(v, 1)),
    "lr": ("a finite number > 0", lambda v: _finite(v, 0, strict=True)),
    "clip": ("null or a finite number > 0", lambda v: v is None or _finite(v, 0, strict=True)),
    "seed": ("an integer >= 0", lambda v: _whole(v, 0)),
    "data_dir": ("null or a folder name", lambda v: v is None or isinstance(v, str)),
    "train_size": ("null or an integer >= 1", lambda v: v is None or _whole(v, 1)),
    "test_size": ("null or an integer >= 1", lambda v: v is None or _whole(v, 1)),
    "adam_eps": ("a finite number > 0", lambda v: _finite(v, 0, strict=True)),
    "threads": ("null or an integer >= 1", lambda v: v is None or _whole(v, 1)),
    "sigma2": ("'learned', 'optimal' or a finite number > 0",
               lambda v: v in ("learned", "optimal") or _finite(v, 0, strict=True)),
}


def check_run_metadata(path: Path, ckpt: Checkpoint) -> None:
    """Refuse a checkpoint whose config, generator states or history a run cannot use (say, edited
    by hand): CheckpointError naming the file, the member and the entry."""
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{path}: member 'meta': {what}; the file was edited or damaged, so the run "
                               f"cannot be used as it is")
    cfg = {**DEFAULTS, **ckpt.config}
    for key, choices in CHOICES.items():
        if cfg[key] not in choices:
            raise bad(f"config {key!r} must be one of {list(choices)}, got {cfg[key]!r}")
    for key, (what, ok) in _SETTING_RULES.items():
        if not ok(cfg[key]):
            raise bad(f"config {key!r} must be {what}, got {cfg[key]!r}")
    for name in ("model", "data"):
        try:
            np.random.PCG64().state = ckpt.rng_state[name]
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise bad(f"rng_state[{name!r}] is not the state of a numpy PCG64 generator "
                      f"({type(exc).__name__}: {exc})") from None
    if len(ckpt.history) != ckpt.epoch:
        raise bad(f"history has {len(ckpt.history)} rows but epoch is {ckpt.epoch}")
    for i, row in enumerate(ckpt.history):
        if not isinstance(row, dict) or row.get("epoch") != i + 1:
            raise bad(f"history row {i} must be an object with \"epoch\": {i + 1}, got {row!r}")
        odd = [k for k, v in row.items() if not _finite(v, -math.inf, strict=True)]
        if odd:
            raise bad(f"history row {i} ({odd[0]!r}) must hold finite numbers only, got {row[odd[0]]!r}")


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
        if cfg["model"] in ("vae", "cvae") and cfg["beta"] != 1:
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
            "decoder_output": cfg["decoder_output"], **({"num_classes": 10} if cfg["model"] == "cvae" else {})}


def build_run_model(config: dict, rng=None):
    """build_model, and for a conditional run (config["model"] == "cvae") the CVAE."""
    return CVAE.from_config(config, rng) if config.get("model") == "cvae" else build_model(config, rng)


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


def load_train_labels(cfg: dict) -> np.ndarray:
    """The labels of a run's training images (a conditional run trains on them)."""
    _, y_train = load_mnist_uint8("train", cfg["data_dir"])
    return y_train[:cfg["train_size"]] if cfg["train_size"] else y_train


# --------------------------------------------------------------------------------------------
# Writing and reading a run folder
# --------------------------------------------------------------------------------------------


# atomic_write's temporary files of a run's files (".checkpoint.npz.1a2b3c4d.tmp"): a killed process
# leaves them behind.
_TEMP_FILE = re.compile(r"\.(" + "|".join(map(re.escape, RUN_FILES)) + r")\.[0-9a-f]{8}\.tmp")


def _acquire_lock(path: Path) -> int:
    """Take the lock file `path` (an exclusive flock, held by the returned open descriptor) and write
    our PID into it, or raise RunInUse naming the holder's PID. The kernel drops the lock of a process
    that dies, however it dies, so a lock file left behind by a killed process is simply taken over."""
    try:
        import fcntl
    except ImportError:          # no flock (Windows): the folder is not locked
        fcntl = None
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # The holder unlinks the file when it lets go: if we locked a file no longer at `path`, try again.
            with contextlib.suppress(FileNotFoundError):
                if os.path.samestat(os.fstat(fd), os.stat(path)):
                    os.ftruncate(fd, 0)
                    os.write(fd, f"{os.getpid()}\n".encode())
                    return fd
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip()
            os.close(fd)
            raise RunInUse(f"{path.parent} is in use: process {holder or '(PID not yet written)'} is training into "
                           f"it (it holds {path}). Wait for it to finish, stop it, or choose another folder "
                           f"with --out.") from None
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


@contextlib.contextmanager
def locked(out: Path):
    """Hold the lock of the run folder `out` for the block (RunInUse if another process holds it).

    The folder is created if missing (and removed again if the block leaves it empty, say after a
    refused setting), and temporary files left there by a killed npvae are removed.
    """
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(out))
    created = []                                 # innermost first
    folder = out
    while not folder.exists() and folder != folder.parent:
        created.append(folder)
        folder = folder.parent
    out.mkdir(parents=True, exist_ok=True)
    try:
        fd = _acquire_lock(out / LOCK)
        try:
            for path in out.iterdir():
                if _TEMP_FILE.fullmatch(path.name):
                    path.unlink(missing_ok=True)
            yield
        finally:
            with contextlib.suppress(OSError):     # before letting go (see _acquire_lock); Windows cannot
                (out / LOCK).unlink(missing_ok=True)    # remove an open file, and keeps it
            os.close(fd)
    finally:
        for folder in created:
            with contextlib.suppress(OSError):      # not empty: the run's files are in it
                folder.rmdir()


def remove_stale_files(folder: Path) -> None:
    """Remove the temporary files a killed npvae left in a run folder, unless a process trains into it
    (its temporary files are in use) or the folder cannot be written (nothing to do then)."""
    with contextlib.suppress(RunInUse, OSError), locked(folder):
        pass


def check_new_run_folder(out: Path, overwrite: bool) -> None:
    """A new run goes into a folder that is new, empty, or holds an npvae run (which only --overwrite
    replaces). A folder holding other files needs --overwrite, and even then keeps them (FileExistsError)."""
    if (out / CHECKPOINT).exists():
        if not overwrite:
            raise FileExistsError(f"{out} already holds a run. Continue it with --resume (and --epochs N "
                                  f"for more epochs), choose another folder with --out, or pass --overwrite.")
        return
    others = sorted(p.name for p in out.iterdir() if p.name != LOCK) if out.is_dir() else []
    if others and not overwrite:
        shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
        raise FileExistsError(f"{out} holds files that are not an npvae run ({shown}). Choose a new or empty "
                              f"folder with --out, or pass --overwrite to write the run there anyway (files of "
                              f"the same names as the run's, such as config.json, are replaced; no other file "
                              f"is touched).")


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


def _not_finite(params: dict[str, np.ndarray]) -> str | None:
    """The name of the first parameter holding NaN or inf, or None."""
    return next((name for name, value in params.items() if not np.isfinite(value).all()), None)


def save_run(out: Path, model, optimizer, rngs: dict[str, np.random.Generator], history: list[dict],
             cfg: dict) -> None:
    """Write the checkpoint (atomically), the history files and config.json.

    A diverged epoch (NaN or inf in a parameter or in its train or test loss) is never saved:
    CheckpointError, and the checkpoint of the epoch before stays.
    """
    last = history[-1] if history else {}
    losses = [f"{key} {last[key]}" for key in ("train_loss", "test_loss") if key in last
              and not math.isfinite(last[key])]
    name = _not_finite(model.params)
    if losses or name:
        what = ", ".join(losses) if losses else f"parameter {name} holds NaN or inf"
        raise CheckpointError(f"training diverged at epoch {len(history)} ({what}): not saved; {out / CHECKPOINT} "
                              f"keeps epoch {len(history) - 1}. Try a lower learning rate (--lr), gradient-norm "
                              f"clipping (--clip 5) or a KL warm-up (--warmup 5).")
    save_checkpoint(out / CHECKPOINT, Checkpoint(
        params=dict(model.params), optimizer_state=optimizer.state_dict(),
        rng_state={k: g.bit_generator.state for k, g in rngs.items()},
        epoch=len(history), history=history, config=cfg))
    write_history(out, history)


def load_run(run_dir: str | Path) -> tuple[Autoencoder | VAE | CVAE, Checkpoint]:
    """Rebuild the model of a run folder from its checkpoint. Returns (model, checkpoint).

    Raises CheckpointError naming the file for a checkpoint that cannot be used: damaged, from
    another architecture, with settings, generator states or history a run cannot have, or with
    NaN or inf in a parameter. Removes temporary files a killed npvae left in the folder.
    """
    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT if run_dir.is_dir() else run_dir
    if not path.exists():
        raise CheckpointError(f"{path}: no checkpoint here; is {run_dir} a run folder written by `npvae train`?")
    remove_stale_files(path.parent)
    ckpt = load_checkpoint(path)
    check_run_metadata(path, ckpt)
    cfg = {**DEFAULTS, **ckpt.config}
    model = build_run_model(model_config(cfg), rng=cfg["seed"])
    check_architecture(path, ckpt.params, {k: (v.shape, v.dtype) for k, v in model.params.items()})
    name = _not_finite(ckpt.params)
    if name:
        raise CheckpointError(f"{path}: parameter {name} holds NaN or inf: the run diverged and its model "
                              f"cannot be used. Train it again (npvae train --overwrite) with a lower --lr or --clip.")
    for k, v in ckpt.params.items():
        model.params[k][...] = v
    model.rng.bit_generator.state = ckpt.rng_state["model"]
    return model, ckpt


# --------------------------------------------------------------------------------------------
# The standard figures
# --------------------------------------------------------------------------------------------


def _codes(model, images: np.ndarray) -> np.ndarray:
    """The point in latent space of each image (uint8 or float): mu for a VAE, z for an AE. (N, Z)."""
    # uint8 images are converted a batch at a time, not all at once (31 MB for the test set)
    return in_batches(lambda batch: model.codes(as_float(batch)), images)


def figure_reconstruct(model, x_test: np.ndarray, out: Path, n: int = 12, y_test: np.ndarray | None = None) -> Path:
    from . import plots
    x = as_float(x_test[:n])
    recon = model.reconstruct(x, y_test[:n]) if isinstance(model, CVAE) else model.decode(_codes(model, x))
    return plots.reconstructions(x, recon, out / "reconstructions.png",
                                 title=f"Test images (top) and their reconstructions (bottom), {type(model).__name__}")


def figure_sample(model, out: Path, rng: np.random.Generator, n: int = 100, digit: int | None = None) -> Path:
    from . import plots
    if isinstance(model, CVAE):
        return figure_conditional_samples(model, out, rng, n, digit)
    if digit is not None:
        raise ValueError(f"--digit needs a conditional model (npvae train --model cvae); this run is a "
                         f"{type(model).__name__}")
    z = rng.standard_normal((n, model.latent_dim)).astype(model.dtype)
    what = "samples from the prior N(0, I)" if isinstance(model, VAE) else "decodes of z ~ N(0, I) (an AE has no prior)"
    return plots.image_grid(model.decode(z), out / "samples.png", ncols=10, title=f"{type(model).__name__}: {what}")


def figure_conditional_samples(model: CVAE, out: Path, rng: np.random.Generator, n: int = 100,
                               digit: int | None = None) -> Path:
    """samples.png of a CVAE: n samples of one digit, or (digit None) rows of each digit, own z each."""
    from . import plots
    c = model.num_classes
    if digit is not None:
        if isinstance(digit, bool) or not isinstance(digit, (int, np.integer)) or not 0 <= digit < c:
            raise ValueError(f"--digit must be a label in [0, {c}), got {digit!r}")
        y = np.full(n, digit)
        title = f"CVAE: samples of the digit {digit}, z ~ N(0, I)"
    else:
        y = np.repeat(np.arange(c), max(1, n // c))
        title = "CVAE: samples of each digit (one row each), a new z ~ N(0, I) for every image"
    z = rng.standard_normal((len(y), model.latent_dim)).astype(model.dtype)
    name = "samples.png" if digit is None else f"samples_digit{digit}.png"
    return plots.image_grid(model.decode(z, y), out / name, ncols=10 if digit is not None else len(y) // c,
                            title=title)


def figure_style_grid(model: CVAE, out: Path, rng: np.random.Generator, ncols: int = 12,
                      name: str = "style_grid.png") -> Path:
    """The style grid: a row per digit, a column per z ~ N(0, I), one z shared by a whole column."""
    from . import plots
    c = model.num_classes
    z = rng.standard_normal((ncols, model.latent_dim)).astype(model.dtype)
    images = model.decode(np.tile(z, (c, 1)), np.repeat(np.arange(c), ncols))        # row-major: digit, then z
    return plots.image_grid(images, out / name, nrows=c, ncols=ncols,
                            row_labels=[str(d) for d in range(c)],
                            title="CVAE style grid: each column decodes one z with every label")


def figure_analogy(model: CVAE, x_test: np.ndarray, y_test: np.ndarray, out: Path, n: int = 8,
                   name: str = "analogy.png") -> Path:
    """The analogies: a test image (left), then its code z = mu(x, y) decoded with each label 0..C-1."""
    from . import plots
    c = model.num_classes
    x, y = as_float(x_test[:n]), np.asarray(y_test[:n])
    mu = model.codes(x, y)                                                             # (n, Z)
    decodes = model.decode(np.repeat(mu, c, axis=0), np.tile(np.arange(c), len(x))).reshape(len(x), c, -1)
    rows = [np.concatenate([x[i:i + 1], np.ones_like(x[i:i + 1]), decodes[i]]) for i in range(len(x))]
    return plots.image_rows(rows, out / name, row_labels=[f"{int(d)}" for d in y],
                            title="CVAE analogies: a test image (left, its label at the side), its code "
                                  "decoded with the labels 0-9")


def figure_interpolate(model, x_test: np.ndarray, out: Path, pairs: int = 6, steps: int = 10) -> Path:
    from . import plots
    if isinstance(model, CVAE):
        raise ValueError("interpolate draws VAE and AE runs; a CVAE run's figures are style_grid.png and "
                         "analogy.png (npvae train --model cvae writes them)")
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
                  seed: int = 0, stream: TextIO | None = None) -> list[Path]:
    """All standard figures of a run; the 2-D latent scatter only when Z = 2.

    Interrupted (Ctrl-C), it says on `stream` which figures are missing and how to redraw them.
    """
    from . import plots
    rng = np.random.default_rng(seed)
    if isinstance(model, CVAE):
        figures = [("reconstructions.png", lambda: figure_reconstruct(model, x_test, out, y_test=y_test)),
                   ("samples.png", lambda: figure_sample(model, out, rng)),
                   ("style_grid.png", lambda: figure_style_grid(model, out, rng)),
                   ("analogy.png", lambda: figure_analogy(model, x_test, y_test, out))]
    else:
        figures = [("reconstructions.png", lambda: figure_reconstruct(model, x_test, out)),
                   ("samples.png", lambda: figure_sample(model, out, rng))]
        if len(x_test) >= 2:
            figures.append(("interpolation.png", lambda: figure_interpolate(model, x_test, out)))
    curves_units = ({"recon_ylabel": "nats per image, -log N(x; mean, sigma^2 I)"} if model.likelihood == "gaussian"
                    else {"likelihood": model.likelihood})
    figures.append(("training_curves.png", lambda: plots.training_curves(
        history, out / "training_curves.png", **curves_units, title=curves_title(model))))
    if model.latent_dim == 2 and not isinstance(model, CVAE):
        figures.append(("latent.png", lambda: plots.latent_scatter(
            _codes(model, x_test), y_test, out / "latent.png", title="Test set in latent space, coloured by digit")))
    paths: list[Path] = []
    try:
        for _, draw in figures:
            paths.append(draw())
    except KeyboardInterrupt:
        (out / figures[len(paths)][0]).unlink(missing_ok=True)     # half written, or from before
        if stream is not None:
            missing = ", ".join(name for name, _ in figures[len(paths):])
            stream.write(f"\nInterrupted while drawing the figures: {missing} not written (the checkpoint is "
                         f"complete). Redraw them with: {shlex.join(['npvae', 'figures', str(out)])}\n")
        raise
    return paths


def require_matplotlib() -> None:
    """Raise ImportError, before any training, if the figures cannot be drawn."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError("figures need matplotlib: pip install 'npvae[plot]', or pass --no-figures to train "
                          "without them") from None


LOSS_NAMES = {"l2": "L2 loss", "bernoulli": "Bernoulli loss", "gaussian": "Gaussian loss"}


def curves_title(model) -> str:
    """The training figure's title, e.g. "VAE, L2 loss: reconstruction and KL per epoch" (spelled
    out: "VAE (l2)" reads like "VAE (12)")."""
    what = "reconstruction and KL per epoch" if isinstance(model, (VAE, CVAE)) else "the loss per epoch"
    return f"{type(model).__name__}, {LOSS_NAMES.get(model.likelihood, model.likelihood)}: {what}"


def epochs_trained(first: int, last: int) -> str:
    """How `npvae train` names the epochs it trained: "1 epoch", "10 epochs", "epoch 5",
    "epochs 5-8" (a resumed run), or "no more epochs"."""
    if first > last:
        return "no more epochs"
    if first == 1:
        return f"{last} epoch" + ("s" if last != 1 else "")
    return f"epoch {first}" if first == last else f"epochs {first}-{last}"


# --------------------------------------------------------------------------------------------
# `npvae train`
# --------------------------------------------------------------------------------------------


def train_run(cfg: dict, out: str | Path | None = None, *, resume: bool = False, overwrite: bool = False,
              figures: bool = True, stream: TextIO | None = None, given: tuple[str, ...] | list[str] = ()) -> Path:
    """Train a run from its settings, writing everything into `out` (default runs/<name>).

    With resume=True, continue the run in `out` from its checkpoint up to cfg["epochs"] epochs;
    `given` names the settings the user gave (the command line's options): on resume, those of
    CHANGEABLE_ON_RESUME replace the run's own, and any other that differs from the run's is refused.
    The folder is locked while training (see `locked`), and settings, data and matplotlib (unless
    figures=False) are checked before anything is written. Raises TrainingDiverged, CheckpointError,
    RunInUse, FileExistsError (a run or other files in the way), ValueError, ImportError or OSError.
    """
    stream = stream if stream is not None else sys.stdout
    cfg = {**DEFAULTS, **cfg}
    if cfg["data_dir"]:     # an absolute path, so the run's commands work from any folder
        cfg["data_dir"] = _absolute(cfg["data_dir"])
    check_settings(epochs=cfg["epochs"], batch_size=cfg["batch_size"], warmup=cfg["warmup"], clip=cfg["clip"],
                   beta=cfg["beta"])
    if figures:
        require_matplotlib()
    out = Path(out) if out is not None else Path("runs") / run_name(cfg)
    with locked(out):
        return _train_locked(cfg, out, resume=resume, overwrite=overwrite, figures=figures, stream=stream,
                             given=tuple(given))


def resume_command(out: Path, epochs: int) -> str:
    """The shell command that continues the run in `out`, quoted for pasting."""
    return shlex.join(["npvae", "train", "--out", str(out), "--resume", "--epochs", str(epochs)])


def _train_locked(cfg: dict, out: Path, *, resume: bool, overwrite: bool, figures: bool, stream: TextIO,
                  given: tuple[str, ...]) -> Path:
    """train_run's work, while it holds the folder's lock."""
    ckpt_path = out / CHECKPOINT
    seeds = np.random.SeedSequence(cfg["seed"]).spawn(2)
    if resume:
        model, ckpt = load_run(out)
        saved = {**DEFAULTS, **ckpt.config}
        if saved["data_dir"]:      # runs written before data_dir was stored resolved
            saved["data_dir"] = _absolute(saved["data_dir"])
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
        check_new_run_folder(out, overwrite)
        model = build_run_model(model_config(cfg), rng=np.random.default_rng(seeds[0]))
        optimizer = make_run_optimizer(cfg, model)
        data_rng = np.random.default_rng(seeds[1])
        history = []
    x_train, x_test, y_test = load_data(cfg)
    model.check_data(x_train, "the training images")    # before anything is written
    model.check_data(x_test, "the test images")
    labels = ({"labels": load_train_labels(cfg), "eval_labels": y_test} if isinstance(model, CVAE) else {})
    if overwrite and not resume and ckpt_path.exists():
        for name in RUN_FILES:                      # the replaced run's files would mislead
            (out / name).unlink(missing_ok=True)

    rngs = {"model": model.rng, "data": data_rng}
    save = lambda h: save_run(out, model, optimizer, rngs, h, cfg)   # noqa: E731
    if not history:
        save(history)     # epoch 0: even a run interrupted in its first epoch can be resumed
    atomic_write_text(out / "config.json", json.dumps(cfg, indent=1) + "\n")
    stream.write(f"Training {type(model).__name__} {model.input_dim}-{'-'.join(map(str, cfg['hidden']))}-{cfg['latent']} "
                 f"({cfg['likelihood']} likelihood, {model.num_params:,} parameters) on {len(x_train):,} images, "
                 f"testing on {len(x_test):,}; run folder {out}\n")
    start, first = time.perf_counter(), len(history) + 1
    try:
        history = fit(model, optimizer, x_train, epochs=cfg["epochs"], batch_size=cfg["batch_size"],
                      rng=data_rng, eval_images=x_test, beta=cfg["beta"], warmup=cfg["warmup"],
                      clip=cfg["clip"], binarization=cfg["binarize"], history=history,
                      lr_schedule=(lambda e: iwae_lr(e, cfg["lr"])) if cfg["schedule"] == "iwae" else None,
                      eval_seed=cfg["seed"], on_epoch_end=save, progress=Progress(stream), log=stream,
                      **labels)
    except (KeyboardInterrupt, OSError) as exc:
        kept = load_checkpoint(ckpt_path)
        with contextlib.suppress(OSError):   # an interrupted save may have left the history files behind
            write_history(out, kept.history)
        why = "Interrupted" if isinstance(exc, KeyboardInterrupt) else f"Stopped ({describe_os_error(exc)})"
        stream.write(f"\n{why}. The checkpoint of epoch {kept.epoch} is in {ckpt_path}.\n"
                     f"Resume with: {resume_command(out, cfg['epochs'])}\n")
        raise
    trained = epochs_trained(first, cfg["epochs"])
    stream.write(f"Trained {trained} in {time.perf_counter() - start:.1f} s.\n")
    if figures:
        paths = write_figures(model, history, x_test, y_test, out, seed=cfg["seed"], stream=stream)
        stream.write("Figures:\n" + "".join(f"  {p}\n" for p in paths))
    stream.write(f"Checkpoint: {ckpt_path}\nHistory: {out / 'history.csv'}, {out / 'history.json'}\n")
    return out


def describe_os_error(exc: OSError) -> str:
    """One line for a failed file operation: the file, what went wrong, and what to do about it."""
    advice = {errno.ENOSPC: "free some disk space", errno.EDQUOT: "free some disk space (quota)",
              errno.EACCES: "check the folder's permissions", errno.EPERM: "check the folder's permissions",
              errno.EROFS: "the file system is read-only: choose a writable folder",
              errno.ENOTDIR: "a file stands where a folder is needed"}.get(exc.errno)
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}" + (f" ({advice})" if advice else "")
