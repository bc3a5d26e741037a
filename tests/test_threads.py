"""Tests for the thread choice of the command line (npvae.threads) and the fast path's thread pool."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from npvae import fast, threads
from npvae.fast import FusedAdam, Pool, pack
from npvae.models import VAE
from npvae.train import fit


def test_threads_option_is_read_from_the_command_line():
    assert threads.threads_option(["train", "--threads", "3"]) == 3
    assert threads.threads_option(["train", "--threads=2", "--epochs", "1"]) == 2
    assert threads.threads_option(["train", "--epochs", "1"]) is None
    assert threads.threads_option(["train", "--threads", "many"]) is None     # argparse reports it


def test_configure_takes_the_option_then_the_users_variable_then_the_free_cores(monkeypatch):
    env: dict = {}
    assert threads.configure(["--threads", "3"], env).startswith("3 (--threads")
    assert env["OPENBLAS_NUM_THREADS"] == env["OMP_NUM_THREADS"] == env["NPVAE_THREADS"] == "3"
    assert env["OPENBLAS_THREAD_TIMEOUT"] == "4"
    env = {"OPENBLAS_NUM_THREADS": "1", "OPENBLAS_THREAD_TIMEOUT": "9", "NPVAE_THREADS": "2"}
    assert threads.configure([], env).startswith("1 (OPENBLAS_NUM_THREADS")
    assert env["OPENBLAS_THREAD_TIMEOUT"] == "9" and env["NPVAE_THREADS"] == "2"   # the user's own settings stay
    monkeypatch.setattr(threads, "free_cores", lambda seconds=0.2: 0.4)          # a busy machine
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    env = {}
    assert threads.configure([], env) .startswith("1 (0.4 of 2 cores free")
    assert env["OPENBLAS_NUM_THREADS"] == "1"
    monkeypatch.setattr(threads, "free_cores", lambda seconds=0.2: 1.8)          # a quiet one
    env = {}
    threads.configure([], env)
    assert env["OPENBLAS_NUM_THREADS"] == "2"


def test_free_cores_is_between_zero_and_the_cores():
    assert 0 <= threads.free_cores(0.05) <= (os.cpu_count() or 1) + 1e-9


def test_the_command_line_says_what_it_chose_on_its_first_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-m", "npvae", "train", "--threads", "1", "--epochs", "1",
                          "--train-size", "200", "--test-size", "50", "--hidden", "16", "--latent", "2",
                          "--out", str(tmp_path / "run"), "--no-figures"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].startswith("Threads: 1 (--threads")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["threads"] == 1   # for a bitwise resume


def test_the_pool_splits_the_range_and_every_part_runs_once():
    seen = []
    Pool(3).run(lambda lo, hi: seen.append((lo, hi)), 10)
    assert sorted(seen) == [(0, 3), (3, 6), (6, 10)]
    seen.clear()
    Pool(1).run(lambda lo, hi: seen.append((lo, hi)), 10)
    assert seen == [(0, 10)]


@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_fused_adam_gives_the_same_bits_on_any_number_of_threads(n_threads):
    shapes = {"a": (7, 5), "b": (5,), "c": (11,)}
    results = []
    for threads_used in (1, n_threads):
        _, params = pack({k: np.ones(s, np.float32) for k, s in shapes.items()})
        opt = FusedAdam(params, lr=1e-2, threads=threads_used)
        g_rng = np.random.default_rng(1)
        for _ in range(20):
            _, grads = pack({k: g_rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()})
            opt.step(grads, overwrite_grads=True)
        results.append((np.concatenate([p.ravel() for p in params.values()]), opt.m.copy(), opt.v.copy()))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def _fit_params(threads_used, monkeypatch):
    monkeypatch.setenv("NPVAE_THREADS", str(threads_used))
    x = np.random.default_rng(0).integers(0, 256, (300, 20), dtype=np.uint8)
    model = VAE(20, [16], 3, likelihood="bernoulli", rng=0)
    opt = fast.make_optimizer("adam", model, 1e-3)
    assert opt.pool.threads == threads_used
    fit(model, opt, x, epochs=2, batch_size=32, rng=1, log=io.StringIO())
    return np.concatenate([p.ravel() for p in model.params.values()])


def test_a_thread_count_gives_the_same_run_bit_for_bit_every_time(monkeypatch):
    two_a, two_b = _fit_params(2, monkeypatch), _fit_params(2, monkeypatch)
    np.testing.assert_array_equal(two_a, two_b)
    # the pool's threads change nothing: only the BLAS thread count can (matrix products' sums)
    np.testing.assert_array_equal(_fit_params(1, monkeypatch), two_a)


def test_a_resume_takes_the_threads_the_run_was_trained_with(tmp_path):
    (tmp_path / "config.json").write_text('{"threads": 2, "epochs": 4}')
    env: dict = {}
    assert threads.configure(["train", "--out", str(tmp_path), "--resume", "--epochs", "8"], env).startswith(
        "2 (the run's own")
    assert env["OPENBLAS_NUM_THREADS"] == "2"
    env = {}
    assert threads.configure(["train", "--out", str(tmp_path), "--resume", "--threads", "1"], env).startswith("1 (--threads")
    (tmp_path / "config.json").write_text('{"threads": null}')        # a run from before: the free cores
    assert threads._run_threads(["train", "--out", str(tmp_path), "--resume"]) is None
    assert threads._run_threads(["train", "--resume"]) is None
