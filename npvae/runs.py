"""`npvae train`: train a run from its settings into its folder, or resume it from its checkpoint,
then draw its figures. Its settings are npvae.settings, its folder npvae.folders, its figures
npvae.figures.
"""

from __future__ import annotations

import contextlib
import errno
import json
import shlex
import sys
import time
from pathlib import Path
from typing import TextIO

import numpy as np

from .checkpoint import atomic_write_text, load_checkpoint
from .cvae import CVAE
from .data import load_mnist_uint8
from . import fast
from .figures import require_matplotlib, write_figures
from .folders import CHECKPOINT, RUN_FILES, check_new_run_folder, load_run, locked, save_run, write_history
from .progress import Progress
from .settings import CHANGEABLE_ON_RESUME, DEFAULTS, build_run_model, model_config, run_name
from .train import check_settings, fit, iwae_lr


def _absolute(path: str) -> str:
    """A data folder as an absolute path (~ expanded), as the run's config stores it."""
    return str(Path(path).expanduser().resolve())


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
    The folder is locked while training (see `folders.locked`), and settings, data and matplotlib
    (unless figures=False) are checked before anything is written. Raises TrainingDiverged,
    CheckpointError, RunInUse, FileExistsError (a run or other files in the way), ValueError,
    ImportError or OSError.
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
