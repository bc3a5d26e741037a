"""Tests for npvae.bench: the FLOP count against a hand count, the JSON that `npvae bench --quick`
writes, the PyTorch-absent path, and the thread-count re-execution. No timing is asserted: the
machines that run tests are too noisy for that."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from npvae import bench


def parse(argv):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(argv)


def one_thread_environment(mp):
    """As if the bench had been started with one BLAS thread: then it never re-executes itself,
    with or without threadpoolctl (which is not a dependency)."""
    for var in bench.THREAD_VARIABLES:
        mp.setenv(var, "1")


# --------------------------------------------------------------------------------------------
# Counting the matrix products
# --------------------------------------------------------------------------------------------


def test_step_matmuls_of_a_tiny_vae_by_hand():
    # VAE 5-4-2 on a batch of 3: Dense layers enc0 5->4, head 4->4 ([mu | logvar]), dec0 2->4, dec1 4->5.
    # forward x @ W:     2 * 3 * (5*4 + 4*4 + 2*4 + 4*5) = 6 * 64 = 384
    # dW = x.T @ dout:   the same products in another order: 384
    # dx = dout @ W.T:   all but enc0 (its input is data): 6 * (16 + 8 + 20) = 264
    products = bench.step_matmuls(5, [4], 2, 3)
    assert sum(p["flops"] for p in products) == 384 + 384 + 264
    assert [(p["layer"], p["kind"]) for p in products] == [
        ("enc0", "forward"), ("enc0", "dW"),
        ("head", "forward"), ("head", "dW"), ("head", "dx"),
        ("dec0", "forward"), ("dec0", "dW"), ("dec0", "dx"),
        ("dec1", "forward"), ("dec1", "dW"), ("dec1", "dx")]
    head_dx = products[4]
    assert (head_dx["m"], head_dx["k"], head_dx["n"]) == (3, 4, 4)      # (N, 2Z) x (2Z, H)
    for p in products:
        assert p["flops"] == 2 * p["m"] * p["k"] * p["n"]


def test_step_matmuls_with_two_hidden_layers_and_the_issue_figure():
    names = [p["layer"] for p in bench.step_matmuls(784, [400, 200], 20, 128) if p["kind"] == "forward"]
    assert names == ["enc0", "enc1", "head", "dec0", "dec1", "dec2"]
    # The PyTorch example's model: about 197 GFLOP per epoch of 60,000 images (3.28 MFLOP per image).
    per_image = sum(p["flops"] for p in bench.step_matmuls(784, [400], 20, 1))
    assert per_image == 2 * (2 * (784 * 400 + 400 * 40 + 20 * 400 + 400 * 784) + (40 * 400 + 400 * 20 + 784 * 400))
    assert round(60_000 * per_image / 1e9) == 197


def test_epoch_batches_and_floor_counts_the_last_smaller_batch():
    assert bench.epoch_batches(1000, 128) == [128] * 7 + [104]
    assert bench.epoch_batches(256, 128) == [128, 128]
    floor = bench.matmul_floor(6, [5], 2, 4, images=10, min_seconds=0.001)
    per_image = sum(p["flops"] for p in bench.step_matmuls(6, [5], 2, 1))
    assert floor["flops_per_epoch"] == 10 * per_image           # FLOPs are linear in the batch size
    assert floor["flops_per_step"] == 4 * per_image
    assert floor["seconds_per_epoch"] > 0 and floor["gflops_per_second"] > 0


@pytest.mark.parametrize("kind", ["forward", "dW", "dx"])
def test_time_matmul_runs_each_layout(kind):
    assert 0 < bench.time_matmul(kind, 8, 6, 4, min_seconds=0.001) < 1


# --------------------------------------------------------------------------------------------
# The whole bench in --quick mode
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    """One `npvae bench --quick` run without PyTorch (as if it were not installed), counting calls of fit."""
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    mp = pytest.MonkeyPatch()
    one_thread_environment(mp)
    mp.setattr(bench, "_import_torch", lambda: None)
    calls = []
    real_fit = bench.fit
    mp.setattr(bench, "fit", lambda *a, **k: calls.append(1) or real_fit(*a, **k))
    try:
        code = bench.run(parse(["--quick", "--threads", "1", "--json", str(path)]))
    finally:
        mp.undo()
    assert code == 0
    return json.loads(path.read_text()), calls


def test_quick_bench_times_the_real_training_path(quick_results):
    results, fit_calls = quick_results
    # warm-up + timed epoch of the main model, and a warm-up + a timed epoch per scaling configuration
    assert len(fit_calls) == 2 + 2 * len(results["scaling"])


def test_quick_bench_json_has_every_part(quick_results):
    r, _ = quick_results
    assert set(r) >= {"machine", "settings", "floor", "npvae", "pytorch", "memory", "scaling"}
    s = r["settings"]
    assert s["threads"] == 1 and s["batch_size"] == 128 and s["quick"] is True
    assert isinstance(r["machine"]["cpu"], str) and r["machine"]["numpy"] == np.__version__

    npv = r["npvae"]
    assert len(npv["epoch_seconds"]) == 1 and npv["median_epoch_seconds"] > 0
    assert math.isfinite(npv["final_train_loss"])
    # the floor's time over npvae's (timing-free: a busy machine can push either side, even above 1)
    assert npv["fraction_of_floor"] == pytest.approx(r["floor"]["seconds_per_epoch"] / npv["median_epoch_seconds"])
    # Processor seconds per second. (Without threadpoolctl, this in-process run keeps the BLAS
    # threads NumPy started with: the environment says 1 only from now on. See the next test.)
    idle = r["blas_idle_cpu"]
    assert set(idle) == {"alone", "with_products"} and 0.3 < idle["alone"] < 1.5, idle
    assert 0.3 < idle["with_products"] < os.cpu_count() + 0.5, idle
    # one fraction per timed epoch, each the floor measured before that epoch over its time
    (each,) = npv["fraction_of_floor_each"]
    assert each == r["floor"]["seconds_per_epoch_each"][0] / npv["epoch_seconds"][0]

    fl = r["floor"]
    assert round(fl["flops_per_epoch"] / 1e9) == 197 and fl["flops_per_step"] > 0
    assert fl["gflops_per_second"] > 0 and fl["seconds_per_epoch"] > 0
    assert len(fl["products"]) == 11
    assert all(p["seconds"] > 0 and p["gflops_per_second"] > 0 for p in fl["products"])

    assert r["pytorch"] == {"available": False, "note": "PyTorch not installed: skipped"}

    step = r["step_ms"]
    assert set(step) == {"batch", "loss_and_grads", "optimizer", "matmul_floor"}
    assert all(v > 0 for v in step.values())
    # the floor of one step is the floor of an epoch over its 469 steps, near enough (the last batch is smaller)
    assert step["matmul_floor"] == pytest.approx(fl["seconds_per_epoch"] * 1e3 / 469, rel=0.01)

    mem = r["memory"]
    for key in ("train_peak_rss_mb", "bench_peak_rss_mb_npvae", "bench_peak_rss_mb_final"):
        assert isinstance(mem[key], float) and 10 < mem[key] < 10_000, key
    assert mem["train_command"].startswith("npvae train")

    rows = r["scaling"]
    assert {(row["hidden"], row["batch_size"]) for row in rows} == {
        (200, 128), (400, 128), (800, 128), (1600, 128), (400, 32), (400, 512)}
    for row in rows:
        assert row["seconds_per_epoch"] > 0 and row["floor_seconds_per_epoch"] > 0
        assert row["fraction_of_floor"] == pytest.approx(row["floor_seconds_per_epoch"] / row["seconds_per_epoch"])
    by_hidden = {row["hidden"]: row["gflops_per_epoch"] for row in rows if row["batch_size"] == 128}
    assert by_hidden[200] < by_hidden[400] < by_hidden[800] < by_hidden[1600]


def test_idle_blas_cpu_is_one_core_with_one_blas_thread():
    # With one BLAS thread nothing runs beside the main thread: one processor second per second,
    # with or without matrix products in between. (The variables must be set before NumPy loads.)
    code = "from npvae.bench import idle_blas_cpu; r = idle_blas_cpu(0.3); print(r['alone'], r['with_products'])"
    env = {**os.environ, **{k: "1" for k in bench.THREAD_VARIABLES}}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    alone, with_products = map(float, out.split())
    assert 0.3 < alone < 1.2 and 0.3 < with_products < 1.2, out


def test_report_prints_the_tables(quick_results):
    r, _ = quick_results
    text = bench.report(r)
    for part in ("npvae (train.fit)", "matmul floor", "PyTorch not installed: skipped", "peak resident memory",
                 "| hidden | batch |", "GFLOP", "one step of 128 images (median of its parts): batch ",
                 "processor seconds per second of elementwise work: "):
        assert part in text, part
    assert f"each epoch against the floor measured before it: {r['npvae']['fraction_of_floor_each'][0]:.0%}" in text


def test_bench_with_pytorch_when_installed(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    one_thread_environment(monkeypatch)
    path = tmp_path / "b.json"
    args = ["--quick", "--threads", "1", "--images", "512", "--no-scaling", "--no-train-memory", "--json", str(path)]
    assert bench.run(parse(args)) == 0
    pt = json.loads(path.read_text())["pytorch"]
    assert pt["available"] is True and pt["threads"] == 1
    assert pt["median_epoch_seconds"] > 0 and pt["ratio_npvae_to_pytorch"] > 0
    assert math.isfinite(pt["final_train_loss"])
    npvae_seconds = json.loads(path.read_text())["npvae"]["epoch_seconds"]
    assert pt["epoch_ratios"] == pytest.approx([a / b for a, b in zip(npvae_seconds, pt["epoch_seconds"])])


def test_report_gives_the_median_of_the_paired_epoch_ratios(quick_results):
    # Three epochs: npvae 2, 3, 9 s; PyTorch 4, 3, 10 s. Ratios 0.5, 1.0, 0.9 -> median 0.9, while
    # the ratio of the medians would be 3 / 4 = 0.75.
    r, _ = quick_results
    r = json.loads(json.dumps(r))
    r["settings"]["epochs_timed"] = 3
    r["npvae"]["epoch_seconds"], r["npvae"]["median_epoch_seconds"] = [2.0, 3.0, 9.0], 3.0
    r["pytorch"] = {"available": True, "version": "x", "threads": 1, "epoch_seconds": [4.0, 3.0, 10.0],
                    "median_epoch_seconds": 4.0, "final_train_loss": 1.0, "epoch_ratios": [0.5, 1.0, 0.9],
                    "ratio_npvae_to_pytorch": 0.9}
    text = bench.report(r)
    assert "npvae / PyTorch: 0.90 (median of the 3 epochs' ratios: 0.50, 1.00, 0.90)" in text
    assert "PyTorch x |" in text and "1.11 |" in text        # time / npvae's = 1 / 0.9


def test_a_json_path_in_a_missing_folder_is_refused_at_once(tmp_path, capsys, monkeypatch):
    def no_timing(*args):
        raise AssertionError("the bench started timing")
    monkeypatch.setattr(bench, "_run", no_timing)
    path = tmp_path / "missing" / "b.json"
    assert bench.run(parse(["--quick", "--no-torch", "--json", str(path)])) == 2
    assert "does not exist" in capsys.readouterr().err and not path.parent.exists()


def test_no_torch_option_skips_with_a_note(tmp_path, monkeypatch):
    one_thread_environment(monkeypatch)
    path = tmp_path / "b.json"
    args = ["--quick", "--threads", "1", "--images", "256", "--no-torch", "--no-scaling", "--no-train-memory",
            "--json", str(path)]
    assert bench.run(parse(args)) == 0
    r = json.loads(path.read_text())
    assert r["pytorch"] == {"available": False, "note": "PyTorch: skipped (--no-torch)"}
    assert r["scaling"] == [] and "train_peak_rss_mb" not in r["memory"]


# --------------------------------------------------------------------------------------------
# Threads
# --------------------------------------------------------------------------------------------


def test_argv_gives_the_same_options_back():
    args = parse(["--quick", "--threads", "3", "--epochs", "2", "--json", "x.json", "--no-torch"])
    assert parse(bench._argv(args)) == args
    assert parse(bench._argv(parse([]))) == parse([])


def test_without_threadpoolctl_the_bench_reruns_itself_with_the_thread_variables(monkeypatch):
    monkeypatch.setattr(bench, "limit_blas_threads", lambda n: None)
    for var in bench.THREAD_VARIABLES + (bench._CHILD,):
        monkeypatch.delenv(var, raising=False)
    seen = {}

    def fake_call(cmd, env):
        seen.update(cmd=cmd, env=env)
        return 7

    monkeypatch.setattr(bench.subprocess, "call", fake_call)
    assert bench.run(parse(["--threads", "3", "--quick"])) == 7
    assert seen["cmd"][1:3] == ["-m", "npvae.bench"] and "--quick" in seen["cmd"]
    assert seen["cmd"][seen["cmd"].index("--threads") + 1] == "3"
    assert all(seen["env"][v] == "3" for v in bench.THREAD_VARIABLES) and seen["env"][bench._CHILD] == "1"
