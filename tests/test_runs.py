"""Tests for run folders under attack (issue 14): diverged epochs, bad data, a missing matplotlib,
folders that hold other files, non-finite or hand-edited checkpoints, failed writes, stale
temporary files, the resume command, Ctrl-C during the figures, and the folder's lock.

The tests that need real processes (two trainers, kill -9, SIGTERM, a full disk) are in
tests/test_runs_processes.py.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest

from npvae import figures, folders, runs, settings
from npvae.__main__ import main
from npvae.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from npvae.data import write_idx
from npvae.models import VAE
from npvae.optim import Adam
from npvae.train import fit

SMALL = ["--train-size", "100", "--test-size", "40", "--hidden", "16", "--latent", "2", "--batch-size", "50"]


def train(out: Path, *extra: str) -> int:
    return main(["train", *SMALL, "--epochs", "1", "--out", str(out), "--no-figures", *extra])


@pytest.fixture
def run(tmp_path) -> Path:
    out = tmp_path / "run"
    assert train(out) == 0
    return out


def idx_folder(folder: Path, train_side: int = 28, test_side: int = 28, n_train: int = 64, n_test: int = 16) -> Path:
    """A data folder of random IDX images (n, side, side) and labels."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n, side in (("train", n_train, train_side), ("t10k", n_test, test_side)):
        write_idx(folder / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, side, side), dtype=np.uint8))
        write_idx(folder / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, n, dtype=np.uint8))
    return folder


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


# --------------------------------------------------------------------------------------------
# 1. A diverged epoch is never saved
# --------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::RuntimeWarning")          # made to diverge
@pytest.mark.parametrize("option, value", [("--lr", "1e30"), ("--beta", "1e300")])
def test_a_diverged_epoch_is_never_saved(option, value, tmp_path, capsys):
    # the case: one batch per epoch, so that epoch 1 ends with parameters of 1e30 or NaN
    out = tmp_path / "run"
    code = main(["train", *SMALL, "--batch-size", "128", "--epochs", "2", "--out", str(out), "--no-figures",
                 option, value])
    assert code != 0
    if (out / "checkpoint.npz").exists():          # (a beta refused up front writes nothing at all)
        ckpt = load_checkpoint(out / "checkpoint.npz")
        assert all(np.isfinite(v).all() for v in ckpt.params.values())
        assert all(np.isfinite([row["train_loss"], row["test_loss"]]).all() for row in ckpt.history), ckpt.history
        assert json.loads((out / "history.json").read_text()) == ckpt.history
    assert "Traceback" not in capsys.readouterr().err


def test_save_run_refuses_non_finite_parameters_and_keeps_the_checkpoint(run):
    model, ckpt = folders.load_run(run)
    before = (run / "checkpoint.npz").read_bytes()
    optimizer = runs.make_run_optimizer({**settings.DEFAULTS, **ckpt.config}, model)
    rngs = {"model": model.rng, "data": np.random.default_rng(0)}
    history = [*ckpt.history, {**ckpt.history[-1], "epoch": 2}]
    model.params["dec0.W"][0, 0] = np.inf
    with pytest.raises(CheckpointError, match=r"diverged at epoch 2 \(parameter dec0.W holds NaN or inf\).*--lr"):
        folders.save_run(run, model, optimizer, rngs, history, ckpt.config)
    model.params["dec0.W"][0, 0] = 0
    with pytest.raises(CheckpointError, match="diverged at epoch 2 .test_loss nan"):
        folders.save_run(run, model, optimizer, rngs, [*ckpt.history, {**history[-1], "test_loss": float("nan")}],
                      ckpt.config)
    assert (run / "checkpoint.npz").read_bytes() == before


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_fit_never_hands_a_diverged_epoch_to_on_epoch_end():
    x = np.random.default_rng(0).integers(0, 256, (64, 12), dtype=np.uint8)
    model = VAE(12, [8], 2, rng=0)
    seen = []
    with pytest.raises(Exception, match="diverge|loss became"):
        fit(model, Adam(model.params, lr=1e30), x, epochs=3, batch_size=64, rng=np.random.default_rng(0),
            eval_images=x, on_epoch_end=lambda h: seen.append(h[-1]), log=io.StringIO())
    assert all(np.isfinite([row["train_loss"], row["test_loss"]]).all() for row in seen)


# --------------------------------------------------------------------------------------------
# 2. The test images are checked before anything is written
# --------------------------------------------------------------------------------------------


def test_test_images_of_another_size_are_refused_before_anything_is_written(tmp_path, capsys):
    data = idx_folder(tmp_path / "data", test_side=16)
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--hidden", "16", "--latent", "2", "--data-dir", str(data),
                 "--out", str(out), "--no-figures"]) == 1
    assert "the test images must have shape (N, 784)" in one_line_error(capsys)
    assert not out.exists()                       # no checkpoint, config or history: nothing to refuse a rerun
    idx_folder(data)                              # the data set mended: the same command now trains
    assert main(["train", "--epochs", "1", "--hidden", "16", "--latent", "2", "--data-dir", str(data),
                 "--out", str(out), "--no-figures"]) == 0


def test_fit_checks_eval_images_before_the_first_step():
    x = np.random.default_rng(0).integers(0, 256, (64, 12), dtype=np.uint8)
    model = VAE(12, [8], 2, rng=0)
    before = {k: v.copy() for k, v in model.params.items()}
    with pytest.raises(ValueError):
        fit(model, Adam(model.params, lr=1e-2), x, epochs=1, batch_size=16, rng=np.random.default_rng(0),
            eval_images=x[:, :10], log=io.StringIO())
    assert all(np.array_equal(before[k], model.params[k]) for k in before)     # not one step taken


# --------------------------------------------------------------------------------------------
# 3. matplotlib is checked before training
# --------------------------------------------------------------------------------------------


def test_no_matplotlib_is_refused_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)         # `import matplotlib` raises ImportError
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(out)]) == 1
    err = one_line_error(capsys)
    assert "matplotlib" in err and "--no-figures" in err
    assert not out.exists()
    assert train(out) == 0                                       # --no-figures needs no matplotlib


# --------------------------------------------------------------------------------------------
# 4. A run folder is locked while a process trains into it (two real processes: test_runs_processes.py)
# --------------------------------------------------------------------------------------------


def test_a_locked_folder_is_refused_naming_the_holder(tmp_path, capsys):
    out = tmp_path / "run"
    with folders.locked(out):
        assert json.loads((out / folders.LOCK).read_text()) == os.getpid()
        assert train(out) == 1
        err = one_line_error(capsys)
        assert f"process {os.getpid()} is training into it" in err
        assert not (out / "checkpoint.npz").exists()
    assert not (out / folders.LOCK).exists()
    assert train(out) == 0 and not (out / folders.LOCK).exists()


def test_a_lock_file_left_by_a_dead_process_does_not_block(run):
    (run / folders.LOCK).write_text("999999999\n")                   # as a process killed with -9 leaves it
    assert main(["train", "--out", str(run), "--resume", "--epochs", "2", "--no-figures"]) == 0
    assert load_checkpoint(run / "checkpoint.npz").epoch == 2


# --------------------------------------------------------------------------------------------
# 5. --out at a folder holding other files
# --------------------------------------------------------------------------------------------


def test_a_folder_of_other_files_is_refused_and_overwrite_keeps_them(tmp_path, capsys):
    project = tmp_path / "myproject"
    project.mkdir()
    (project / "config.json").write_text("mine")
    (project / "notes.txt").write_text("mine too")
    assert train(project) == 1
    err = one_line_error(capsys)
    assert "not an npvae run" in err and "config.json" in err and "--overwrite" in err
    assert (project / "config.json").read_text() == "mine" and sorted(os.listdir(project)) == ["config.json",
                                                                                             "notes.txt"]
    assert train(project, "--overwrite") == 0
    assert (project / "notes.txt").read_text() == "mine too"          # npvae never deletes another's files
    empty = tmp_path / "empty"
    empty.mkdir()
    assert train(empty) == 0                                          # an empty folder is fine


# --------------------------------------------------------------------------------------------
# 6. Non-finite parameters are an error in every command that loads a run
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_every_command_refuses_a_run_with_non_finite_parameters(bad, run, capsys):
    ckpt = load_checkpoint(run / "checkpoint.npz")
    ckpt.params["head.W"][0, 0] = bad
    save_checkpoint(run / "checkpoint.npz", ckpt)
    for argv in (["evaluate", str(run), "--no-classifier", "--k", "2", "--limit", "5"], ["sample", str(run)],
                 ["figures", str(run)], ["train", "--out", str(run), "--resume", "--epochs", "2"]):
        assert main(argv) == 1, argv
        err = one_line_error(capsys)
        assert str(run / "checkpoint.npz") in err and "head.W holds NaN or inf" in err, argv
    assert not (run / "eval.json").exists()


# --------------------------------------------------------------------------------------------
# 7. A failed file operation is one line and exit status 1
# --------------------------------------------------------------------------------------------


def test_out_under_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "some_file").write_text("x")
    for out in (tmp_path / "some_file" / "sub", tmp_path / "some_file"):
        assert train(out) == 1
        assert "Not a directory (a file stands where a folder is needed)" in one_line_error(capsys)


def test_a_folder_that_cannot_be_written_is_one_line_and_loses_nothing(run, capsys, monkeypatch):
    before = (run / "checkpoint.npz").read_bytes()
    real_open = os.open

    def read_only(path, flags, *args):        # as on a read-only run folder (root ignores chmod)
        if Path(path).parent == run and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args)
    monkeypatch.setattr(os, "open", read_only)
    for extra in (["--resume", "--epochs", "2"], [*SMALL, "--epochs", "1", "--overwrite"]):
        assert main(["train", "--out", str(run), "--no-figures", *extra]) == 1
        err = one_line_error(capsys)
        assert "Permission denied (check the folder's permissions)" in err and "--resume" in err
    assert (run / "checkpoint.npz").read_bytes() == before


# --------------------------------------------------------------------------------------------
# 8. Stale temporary files are removed when npvae next opens the folder
# --------------------------------------------------------------------------------------------


def test_stale_temporary_files_are_removed_when_the_folder_is_opened(run):
    stale = [".checkpoint.npz.0123abcd.tmp", ".history.csv.deadbeef.tmp", ".samples.png.00000000.tmp"]
    for command in (["sample", str(run)], ["train", "--out", str(run), "--resume", "--epochs", "2", "--no-figures"],
                    ["train", *SMALL, "--epochs", "1", "--out", str(run), "--overwrite", "--no-figures"]):
        for name in stale:
            (run / name).write_bytes(b"half a file")
        (run / ".notes.txt.12345678.tmp").write_text("not ours")
        assert main(command) == 0, command
        assert not [name for name in stale if (run / name).exists()], command
        assert (run / ".notes.txt.12345678.tmp").exists()


# --------------------------------------------------------------------------------------------
# 9. The printed resume command is shell-quoted
# --------------------------------------------------------------------------------------------


def test_the_resume_command_is_shell_quoted():
    command = runs.resume_command(Path("runs/my run"), 50)
    assert command == "npvae train --out 'runs/my run' --resume --epochs 50"
    assert shlex.split(command)[2:4] == ["--out", "runs/my run"]


# --------------------------------------------------------------------------------------------
# 10. Ctrl-C during the figures (SIGTERM: test_runs_processes.py)
# --------------------------------------------------------------------------------------------


def test_ctrl_c_during_the_figures_names_the_missing_ones_and_npvae_figures_redraws_them(tmp_path, capsys,
                                                                                         monkeypatch):
    out = tmp_path / "my run"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(figures, "figure_sample", interrupted)
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(out)]) == 130
    printed = capsys.readouterr().out
    assert "Interrupted while drawing the figures: samples.png, interpolation.png, training_curves.png, " \
           "latent.png not written" in printed
    assert f"Redraw them with: npvae figures '{out}'" in printed
    assert (out / "reconstructions.png").is_file() and not (out / "samples.png").exists()
    (out / "samples.png").write_bytes(b"\x89PNG half")                  # as a Ctrl-C inside savefig leaves it
    assert main(["figures", str(out)]) == 130 and not (out / "samples.png").exists()
    monkeypatch.undo()
    assert main(["figures", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in ("reconstructions.png", "samples.png", "interpolation.png", "training_curves.png", "latent.png"):
        assert (out / name).is_file() and f"wrote {out / name}" in printed, name


# --------------------------------------------------------------------------------------------
# 11. Checkpoint metadata edited by hand
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("edit, words", [
    (lambda c: c.config.update(beta="big"), "config 'beta' must be a finite number >= 0, got 'big'"),
    (lambda c: c.config.update(hidden=[16.5]), "config 'hidden' must be a list of integers >= 1"),
    (lambda c: c.config.update(model="gan"), "config 'model' must be one of ['vae', 'ae', 'cvae'], got 'gan'"),
    (lambda c: c.rng_state.pop("data"), "rng_state['data'] is not the state of a numpy PCG64 generator"),
    (lambda c: c.rng_state["model"]["state"].update(state="x"), "rng_state['model'] is not the state"),
    (lambda c: c.history.__setitem__(0, [1, "x"]), "history row 0 must be an object with \"epoch\": 1"),
    (lambda c: c.history[0].update(test_loss="x"), "history row 0 ('test_loss') must hold finite numbers"),
])
def test_hand_edited_metadata_is_refused_naming_the_member(edit, words, run, capsys):
    ckpt = load_checkpoint(run / "checkpoint.npz")
    edit(ckpt)
    save_checkpoint(run / "checkpoint.npz", ckpt)
    with pytest.raises(CheckpointError, match="member 'meta'") as e:
        folders.load_run(run)
    assert words in str(e.value) and str(run / "checkpoint.npz") in str(e.value)
    for argv in (["sample", str(run)], ["evaluate", str(run), "--no-classifier", "--k", "2", "--limit", "5"],
                 ["train", "--out", str(run), "--resume", "--epochs", "2"]):
        assert main(argv) == 1, argv
        assert words in one_line_error(capsys)


# --------------------------------------------------------------------------------------------
# 12. --seed -1 names --seed (the data-file messages: tests/test_data.py)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["train"], ["sample", "RUN"], ["evaluate", "RUN"]])
def test_a_negative_seed_is_refused_naming_seed(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([*command, "--seed", "-1"])
    assert e.value.code == 2 and "--seed: must be an integer >= 0, got -1" in capsys.readouterr().err


def test_a_data_set_of_0_images_is_refused_with_a_message(tmp_path, capsys):
    data = idx_folder(tmp_path / "data", n_test=0)
    assert main(["train", "--epochs", "1", "--data-dir", str(data), "--out", str(tmp_path / "run"),
                 "--no-figures"]) == 1
    assert "t10k-images-idx3-ubyte holds 0 images" in one_line_error(capsys)
