"""Run folders on disk: their files, their lock, the temporary files a killed npvae leaves, and
writing and reading a run (checkpoint and history).

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

import contextlib
import csv
import errno
import io
import json
import math
import os
import re
from pathlib import Path

import numpy as np

from .checkpoint import (Checkpoint, CheckpointError, atomic_write_text, check_architecture, load_checkpoint,
                         save_checkpoint)
from .cvae import CVAE
from .models import VAE, Autoencoder
from .settings import DEFAULTS, build_run_model, check_run_metadata, model_config

CHECKPOINT = "checkpoint.npz"
LOCK = ".npvae.lock"
# Everything `npvae train` and `npvae evaluate` write into a run folder: --overwrite removes them.
RUN_FILES = (CHECKPOINT, "config.json", "history.csv", "history.json", "eval.json", "reconstructions.png",
             "samples.png", "interpolation.png", "training_curves.png", "latent.png", "style_grid.png", "analogy.png",
             *(f"samples_digit{d}.png" for d in range(10)))


class RunInUse(RuntimeError):
    """Another process is training into the run folder (it holds the folder's lock)."""


def run_folder(run: str | Path) -> Path:
    """The folder of a run given as its folder or as its checkpoint file."""
    run = Path(run)
    return run.parent if run.is_file() else run


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
    """Write the checkpoint (atomically) and the history files (config.json is written once, by
    runs.train_run, before the first epoch).

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
