"""Run folders against real processes (issue 14): two trainers on one folder, kill -9, SIGTERM, a full disk.

Each test starts `python -m npvae train` in a subprocess, as a user would, and waits for it to reach
the state it needs (a lock held, an epoch saved) by watching the run folder.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from npvae.checkpoint import load_checkpoint

SMALL = ["--train-size", "100", "--test-size", "40", "--hidden", "16", "--latent", "2", "--batch-size", "50",
         "--no-figures"]
REPO = Path(__file__).resolve().parent.parent
LOCK = ".npvae.lock"          # the run folder's lock file (npvae.LOCK), holding the trainer's PID


def npvae(*args: str, env: dict | None = None) -> subprocess.Popen:
    """`python ARGS` (say, -m npvae train ...) from the repository root, its output captured as text."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OPENBLAS_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=REPO)


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
    return proc.returncode, out, err


def epochs_saved(out: Path) -> int:
    try:
        return len(json.loads((out / "history.json").read_text()))
    except (OSError, ValueError):
        return 0


def start_training(out: Path, *extra: str, locked: bool = False) -> subprocess.Popen:
    """A trainer of 100000 epochs, returned once it has saved an epoch (and holds the folder's lock)."""
    proc = npvae("-m", "npvae", "train", *SMALL, "--epochs", "100000", "--out", str(out), *extra)
    deadline = time.time() + 120

    def holds_lock() -> bool:
        try:
            return (out / LOCK).read_text().strip() == str(proc.pid)
        except OSError:
            return False
    while not (epochs_saved(out) >= 1 and (holds_lock() or not locked)):
        assert proc.poll() is None, finish(proc)
        assert time.time() < deadline, "the trainer did not save an epoch in 120 s"
        time.sleep(0.05)
    return proc


def test_a_second_trainer_is_refused_naming_the_first(tmp_path):
    out = tmp_path / "run"
    first = start_training(out, "--seed", "1", locked=True)
    try:
        code, _, err = finish(npvae("-m", "npvae", "train", *SMALL, "--epochs", "3", "--seed", "2",
                                    "--out", str(out), "--overwrite"))
        assert code == 1 and f"process {first.pid} is training into it" in err, err
        assert first.poll() is None                                  # the first one trains on, undisturbed
        first.send_signal(signal.SIGTERM)
        assert finish(first)[0] == 143
    finally:
        first.kill()
    # everything in the folder is the first trainer's
    assert load_checkpoint(out / "checkpoint.npz").config["seed"] == 1
    assert json.loads((out / "config.json").read_text())["seed"] == 1
    assert json.loads((out / "history.json").read_text()) == load_checkpoint(out / "checkpoint.npz").history
    assert not (out / LOCK).exists()


def test_kill_9_leaves_a_run_that_resumes_and_the_next_npvae_tidies_up(tmp_path):
    out = tmp_path / "run"
    proc = start_training(out)
    proc.send_signal(signal.SIGKILL)
    finish(proc)
    stale_lock = (out / LOCK).exists()                # a killed process cannot remove its lock file
    (out / ".checkpoint.npz.0a1b2c3d.tmp").write_bytes(b"PK\x03\x04 cut")    # as a kill mid-write leaves it
    done = load_checkpoint(out / "checkpoint.npz").epoch
    code, _, err = finish(npvae("-m", "npvae", "train", "--out", str(out), "--resume", "--epochs", str(done + 1),
                                "--no-figures"))
    assert code == 0, err
    assert load_checkpoint(out / "checkpoint.npz").epoch == done + 1
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.npz", "config.json", "history.csv", "history.json"]
    assert stale_lock                                  # ... and it did not stand in the way


def test_sigterm_keeps_the_checkpoint_and_prints_a_pasteable_resume_command(tmp_path):
    out = tmp_path / "my run"                          # a space: the printed command must quote it
    proc = start_training(out)
    proc.send_signal(signal.SIGTERM)
    code, printed, err = finish(proc)
    assert code == 143, (printed, err)
    done = load_checkpoint(out / "checkpoint.npz").epoch
    assert f"The checkpoint of epoch {done} is in {out / 'checkpoint.npz'}" in printed
    command = printed.split("Resume with: ")[1].splitlines()[0]
    argv = shlex.split(command)
    assert argv == ["npvae", "train", "--out", str(out), "--resume", "--epochs", "100000"]
    argv[-1] = str(done + 1)
    code, _, err = finish(npvae("-m", *argv, "--no-figures"))
    assert code == 0, err
    assert load_checkpoint(out / "checkpoint.npz").epoch == done + 1


# Runs `npvae train` on a disk that fills up while the FAIL-th checkpoint is written (1: epoch 0):
# np.savez writes half an archive into the temporary file, then fails as a write to a full disk does.
_DISK_FULL = textwrap.dedent("""
    import errno, os, sys
    import numpy as np
    calls = [0]
    def savez(file, *args, **kwargs):
        calls[0] += 1
        if calls[0] >= int(os.environ["FAIL"]):
            file.write(b"PK\\x03\\x04 half an archive")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_savez(file, *args, **kwargs)
    real_savez, np.savez = np.savez, savez
    from npvae.__main__ import main
    sys.exit(main(sys.argv[1:]))
""")


def test_a_full_disk_gives_one_line_and_loses_nothing(tmp_path):
    out = tmp_path / "run"
    code, printed, err = finish(npvae("-c", _DISK_FULL, "train", *SMALL, "--epochs", "3", "--out", str(out),
                                      env={"FAIL": "3"}))
    assert code == 1 and "Traceback" not in err and err.count("\n") == 1, err
    assert f"{out / 'checkpoint.npz'}: No space left on device (free some disk space)" in err
    assert "Resume with: npvae train --out" in printed
    ckpt = load_checkpoint(out / "checkpoint.npz")
    assert ckpt.epoch == 1 and json.loads((out / "history.json").read_text()) == ckpt.history
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp") or p.name == LOCK]
    code, _, err = finish(npvae("-m", "npvae", "train", "--out", str(out), "--resume", "--epochs", "3",
                                "--no-figures"))
    assert code == 0, err


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("mount") is None,
                    reason="mounting a tmpfs needs root")
def test_a_full_tmpfs_gives_one_line_and_loses_nothing(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        out = disk / "run"
        code, _, err = finish(npvae("-m", "npvae", "train", *SMALL, "--epochs", "1", "--out", str(out)))
        assert code == 0, err
        before = (out / "checkpoint.npz").read_bytes()
        filler = disk / "filler"
        try:                                          # fill the disk to the last byte
            with open(filler, "wb", buffering=0) as f:
                while True:
                    f.write(bytes(4096))
        except OSError:
            pass
        code, _, err = finish(npvae("-m", "npvae", "train", "--out", str(out), "--resume", "--epochs", "2",
                                    "--no-figures"))
        assert code == 1 and "Traceback" not in err and "No space left on device" in err, err
        assert (out / "checkpoint.npz").read_bytes() == before
        assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
        filler.unlink()
        code, _, err = finish(npvae("-m", "npvae", "train", "--out", str(out), "--resume", "--epochs", "2",
                                    "--no-figures"))
        assert code == 0, err
    finally:
        subprocess.run(["umount", str(disk)])
