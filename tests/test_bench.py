"""Tests for npvae.bench: the FLOP count against a hand count, the JSON that `npvae bench --quick`
writes and the arithmetic of its report, the subnormal count, the busy process (always stopped),
the description of the CPU and the BLAS, the PyTorch-absent path and PyTorch's own process, and
the thread counts. No timing is asserted: the machines that run tests are too noisy for that."""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import npvae.train
from npvae import bench
from npvae.models import VAE
from npvae.optim import Adam


def parse(argv):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(argv)


def table_rows(text, first_header_cell):
    """The cells of the rows of the Markdown table in `text` whose header starts with this cell."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines)
                 if line.startswith("|") and line.strip("|").split("|")[0].strip() == first_header_cell)
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def _running(pid):
    """Whether process `pid` exists and is not a zombie (Linux: /proc; elsewhere: a signal 0)."""
    stat = Path(f"/proc/{pid}/stat")
    if Path("/proc/self/stat").exists():
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


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
    mp.setattr(bench, "_pytorch_installed", lambda: False)
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
    # in this process: the warm-up, the timed and the busy epoch of the main model (--quick: one
    # each); the scaling rows train in processes of their own (see test_scaling_rows_...)
    s = results["settings"]
    assert (s["warmup_epochs"], s["epochs_timed"], s["busy_epochs"]) == (1, 1, 1)
    assert len(fit_calls) == 3


def test_fit_gets_fast_true_where_it_has_the_switch(monkeypatch):
    has_fast = "fast" in inspect.signature(npvae.train.fit).parameters
    assert bench._FIT_OPTIONS == ({"fast": True} if has_fast else {})
    seen = []
    monkeypatch.setattr(bench, "_FIT_OPTIONS", {"fast": True})
    monkeypatch.setattr(bench, "fit", lambda *a, **k: seen.append(k) or [{"seconds": 1.5}])
    images = np.zeros((4, 6), dtype=np.uint8)
    assert bench.NpvaeRun(images, [3], 2, 2, seed=0).epoch() == 1.5
    assert seen[0]["fast"] is True and seen[0]["epochs"] == 1 and seen[0]["batch_size"] == 2


def test_quick_bench_json_has_every_part(quick_results):
    r, _ = quick_results
    assert set(r) >= {"machine", "settings", "floor", "npvae", "pytorch", "busy", "memory", "scaling"}
    s = r["settings"]
    assert s["threads"] == 1 and s["batch_size"] == 128 and s["quick"] is True
    assert s["fit_options"] == bench._FIT_OPTIONS and s["pool_threads"] == bench.pool_threads()
    # every thread variable was 1 (one_thread_environment), and NPVAE_THREADS is the bench's --threads
    assert all(s["environment"][k] == "1" for k in bench.THREAD_VARIABLES)
    m = r["machine"]
    assert isinstance(m["cpu"], str) and m["cpu"] and m["numpy"] == np.__version__
    assert m["cpu"] == m["cpu_details"]["model"] and m["cores_available"] >= 1
    assert isinstance(m["blas"], list) and all("internal_api" in b and "source" in b for b in m["blas"])

    npv = r["npvae"]
    assert len(npv["epoch_seconds"]) == 1 and len(npv["warmup_epoch_seconds"]) == 1
    assert npv["median_epoch_seconds"] == npv["epoch_seconds"][0] > 0
    assert math.isfinite(npv["final_train_loss"])
    # subnormals after each of the two epochs, and by entry after the last timed one
    sub = npv["subnormals"]
    assert len(sub["after_each_epoch"]) == 2 and sub["total"] == sub["after_each_epoch"][-1]
    assert sub["total"] == sum(sub["optimizer_state"].values()) and "t" not in sub["optimizer_state"]
    assert sub["state_entries"] == 2 * (784 * 400 + 400 + 400 * 40 + 40 + 20 * 400 + 400 + 400 * 784 + 784)
    assert isinstance(sub["params"], int)
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

    assert "pytorch_peak_rss_mb" not in mem

    busy = r["busy"]
    assert busy["measured"] is True and busy["busy_processes"] == 1 and len(busy["npvae_epoch_seconds"]) == 1
    assert busy["npvae_median_epoch_seconds"] == statistics.median(busy["npvae_epoch_seconds"])
    assert busy["npvae_busy_over_quiet"] == busy["npvae_median_epoch_seconds"] / npv["median_epoch_seconds"]
    assert "pytorch_epoch_seconds" not in busy
    p = busy["busy_process"]
    assert p["ran_throughout"] is True and p["wall_seconds"] > 0 and p["cpu_seconds"] >= 0
    assert not _running(p["pid"])                         # stopped when the busy epochs ended

    rows = r["scaling"]
    threads = bench.thread_counts(m["cores_available"])
    # every configuration (--quick: the two smallest) with every thread count, in that order
    assert [(row["hidden"], row["batch_size"], row["threads"]) for row in rows] == [
        (h, b, t) for h, b in [(200, 128), (400, 32)] for t in threads]
    for row in rows:
        assert row["seconds_per_epoch"] > 0 and row["floor_seconds_per_epoch"] > 0
        assert row["fraction_of_floor"] == pytest.approx(row["floor_seconds_per_epoch"] / row["seconds_per_epoch"])
        # each row's process was started with its thread count, and its BLAS says so (where it can be asked)
        assert row["blas_threads"] in ([], [row["threads"]]), row
        assert row["pool_threads"] in (None, row["threads"]), row      # NPVAE_THREADS, where the fast path has a pool
    assert [round(row["gflops_per_epoch"]) for row in rows] == [98] * len(threads) + [197] * len(threads)


def test_scaling_configurations():
    assert bench.scaling_configs() == [(200, 128), (400, 128), (800, 128), (1600, 128), (400, 32), (400, 512)]
    assert bench.scaling_configs(quick=True) == [(200, 128), (400, 32)]


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
                 "| hidden | batch | threads |", "GFLOP", "one step of 128 images (median of its parts): batch ",
                 "processor seconds per second of elementwise work: ", f"machine: {r['machine']['cpu']}",
                 "threads: NumPy's BLAS 1", "| 1 (warm-up) |", "npvae, busy machine",
                 "busy machine: one busy process (a pure-Python spin loop in a child process) beside 1 more epoch",
                 "subnormal values after the timed epochs: ", "median of 1 epoch after a warm-up of 1"):
        assert part in text, part
    assert text.count("BLAS: ") == max(1, len(r["machine"]["blas"]))
    assert f"each epoch against the floor measured before it: {r['npvae']['fraction_of_floor_each'][0]:.0%}" in text


def test_bench_with_pytorch_when_installed(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    one_thread_environment(monkeypatch)
    path = tmp_path / "b.json"
    args = ["--quick", "--threads", "1", "--images", "512", "--warmup", "2", "--epochs", "2", "--no-scaling",
            "--no-train-memory", "--json", str(path)]
    assert bench.run(parse(args)) == 0
    r = json.loads(path.read_text())
    pt, npv, busy = r["pytorch"], r["npvae"], r["busy"]
    assert pt["available"] is True and pt["threads"] == 1 and pt["process"].startswith("its own")
    assert len(pt["warmup_epoch_seconds"]) == 2 and len(pt["epoch_seconds"]) == 2
    assert pt["median_epoch_seconds"] == statistics.median(pt["epoch_seconds"]) > 0
    assert math.isfinite(pt["final_train_loss"]) and len(pt["subnormals_after_each_epoch"]) == 4
    # pairwise: each npvae epoch over the PyTorch epoch right after it, the warm-up's apart
    assert pt["epoch_ratios"] == [a / b for a, b in zip(npv["epoch_seconds"], pt["epoch_seconds"])]
    assert pt["warmup_epoch_ratios"] == [a / b for a, b in zip(npv["warmup_epoch_seconds"], pt["warmup_epoch_seconds"])]
    assert pt["ratio_npvae_to_pytorch"] == statistics.median(pt["epoch_ratios"])
    # the busy epochs: PyTorch's too, against its quiet median, and paired with npvae's
    assert len(busy["pytorch_epoch_seconds"]) == 1
    assert busy["pytorch_busy_over_quiet"] == busy["pytorch_median_epoch_seconds"] / pt["median_epoch_seconds"]
    assert busy["epoch_ratios"] == [a / b for a, b in zip(busy["npvae_epoch_seconds"], busy["pytorch_epoch_seconds"])]
    assert 10 < r["memory"]["pytorch_peak_rss_mb"] < 10_000


def test_the_pytorch_process_is_stopped_when_it_fails_or_the_block_fails(tmp_path):
    # A spec the worker cannot use (no "hidden"): it dies, and the parent says so, with its error.
    spec = {"threads": 1, "images": 64, "latent": 2, "batch": 32, "seed": 0}
    with pytest.raises(RuntimeError, match="the PyTorch process stopped"):
        bench.PytorchProcess(spec)
    if not bench._pytorch_installed():
        return
    with pytest.raises(KeyboardInterrupt):
        with bench.PytorchProcess({**spec, "hidden": 8}) as p:
            assert p.info["threads"] == 1 and _running(p.proc.pid)
            raise KeyboardInterrupt
    assert p.proc.returncode is not None and not _running(p.proc.pid)


def _with_pytorch(r):
    """The quick results as if PyTorch had run: a warm-up epoch and three timed ones, busy epochs too.
    npvae 1 (warm-up), 2, 3, 9 s; PyTorch 4 (warm-up), 4, 3, 10 s: ratios 0.25 (warm-up), 0.5, 1.0, 0.9."""
    r = json.loads(json.dumps(r))
    r["settings"].update(epochs_timed=3, warmup_epochs=1)
    r["npvae"].update(epoch_seconds=[2.0, 3.0, 9.0], warmup_epoch_seconds=[1.0], median_epoch_seconds=3.0,
                      fraction_of_floor=1.35 / 3.0)
    r["npvae"]["subnormals"].update(after_each_epoch=[0, 10, 2000, 30], total=30, optimizer_state={"m_sum": 30, "v_sum": 0})
    r["pytorch"] = {"available": True, "version": "x", "threads": 1, "interop_threads": 1, "epoch_seconds": [4.0, 3.0, 10.0],
                    "warmup_epoch_seconds": [4.0], "median_epoch_seconds": 4.0, "final_train_loss": 1.0,
                    "epoch_ratios": [0.5, 1.0, 0.9], "warmup_epoch_ratios": [0.25], "ratio_npvae_to_pytorch": 0.9,
                    "subnormals_after_each_epoch": [0, 0, 0, 5]}
    # busy: npvae 6 and 7.5 s (median 6.75 = 2.25 x its quiet 3 s), PyTorch 8 and 10 s (median 9 = 2.25 x 4)
    r["busy"].update(npvae_epoch_seconds=[6.0, 7.5], npvae_median_epoch_seconds=6.75, npvae_busy_over_quiet=2.25,
                     pytorch_epoch_seconds=[8.0, 10.0], pytorch_median_epoch_seconds=9.0, pytorch_busy_over_quiet=2.25,
                     epoch_ratios=[0.75, 0.75], ratio_npvae_to_pytorch=0.75)
    r["busy"]["busy_process"].update(wall_seconds=20.0, cpu_seconds=19.0, ran_throughout=True)
    r["floor"]["seconds_per_epoch"] = 1.35
    return r


def test_report_gives_the_median_of_the_paired_epoch_ratios(quick_results):
    # Three timed epochs: npvae 2, 3, 9 s; PyTorch 4, 3, 10 s. Ratios 0.5, 1.0, 0.9 -> median 0.9,
    # while the ratio of the medians would be 3 / 4 = 0.75. The warm-up's ratio (0.25) is left out.
    text = bench.report(_with_pytorch(quick_results[0]))
    assert "npvae / PyTorch: 0.90 (median of the 3 epochs' ratios: 0.50, 1.00, 0.90; PyTorch in a process of its own)" in text
    assert "PyTorch x |" in text and "1.11 |" in text        # time / npvae's = 1 / 0.9


def test_report_lists_every_epoch_with_its_ratio_and_subnormals(quick_results):
    text = bench.report(_with_pytorch(quick_results[0]))
    assert table_rows(text, "epoch") == [["1 (warm-up)", "1.00", "4.00", "0.25", "0", "0"], ["2", "2.00", "4.00", "0.50", "10", "0"],
                     ["3", "3.00", "3.00", "1.00", "2,000", "0"], ["4", "9.00", "10.00", "0.90", "30", "5"]]
    header = next(line for line in text.splitlines() if line.replace(" ", "").startswith("|epoch|"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "epoch", "npvae s", "PyTorch s", "npvae / PyTorch", "subnormals in npvae's Adam state", "in PyTorch's"]
    assert "median of 3 epochs after a warm-up of 1" in text
    assert ("subnormal values after the timed epochs: 30 of the 1,305,648 values of npvae's Adam state (m_sum 30, "
            "v_sum 0)") in text and "; 5 in PyTorch's Adam state" in text


def test_report_busy_rows_are_against_the_quiet_epochs(quick_results):
    text = bench.report(_with_pytorch(quick_results[0]))
    rows = {row[0]: row[1:] for row in table_rows(text, "")}
    # s / epoch, floor / time (1.35 s floor), time / npvae's quiet median (3 s)
    assert rows["npvae, busy machine"] == ["6.75", "20%", "2.25"]
    assert rows["PyTorch x, busy machine"] == ["9.00", "15%", "3.00"]
    assert rows["npvae (train.fit)"] == ["3.00", "45%", "1.00"] and rows["matmul floor"] == ["1.35", "100%", "-"]
    assert ("npvae 2.25 x its quiet epoch, PyTorch 2.25 x; npvae / PyTorch 0.75 (median of 0.75, 0.75); the busy "
            "process got 0.95 of a core") in text
    r = _with_pytorch(quick_results[0])
    r["busy"]["busy_process"].update(ran_throughout=False, max_seconds=12.0)
    assert "(it stopped before the epochs ended: its bound of 12 s was too short)" in bench.report(r)
    r["busy"] = {"measured": False, "note": "busy machine: skipped (--no-busy)"}
    text = bench.report(r)
    assert "busy machine: skipped (--no-busy)" in text and "busy machine |" not in text


def test_report_scaling_speed_up_over_one_thread(quick_results):
    r = json.loads(json.dumps(quick_results[0]))
    base = {"images_timed": 512, "gflops_per_epoch": 197.0, "floor_seconds_per_epoch": 1.0, "blas_threads": []}
    r["scaling"] = [{**base, "hidden": 400, "batch_size": 128, "threads": t, "seconds_per_epoch": sec,
                     "fraction_of_floor": 1.0 / sec} for t, sec in ((1, 4.0), (2, 2.5), (4, 2.0))]
    r["scaling"][2]["blas_threads"] = [2]
    text = bench.report(r)
    assert [row[-1] for row in table_rows(text, "hidden")] == ["1.00", "1.60", "2.00"]   # 4 / 4, 4 / 2.5, 4 / 2
    assert "threads 1, 2, 4, each in a process of its own" in text
    assert "but the BLAS reported 2 threads in the 4-thread process" in text   # threads not applied: flagged


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
            "--no-busy", "--json", str(path)]
    assert bench.run(parse(args)) == 0
    r = json.loads(path.read_text())
    assert r["pytorch"] == {"available": False, "note": "PyTorch: skipped (--no-torch)"}
    assert r["scaling"] == [] and "train_peak_rss_mb" not in r["memory"]
    assert r["busy"] == {"measured": False, "note": "busy machine: skipped (--no-busy)"}
    assert r["settings"]["busy_epochs"] == 0


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


def test_argv_gives_a_zero_warmup_and_the_new_options_back():
    args = parse(["--warmup", "0", "--busy-epochs", "3", "--no-busy"])
    assert (args.warmup, args.busy_epochs, args.no_busy) == (0, 3, True)
    assert parse(bench._argv(args)) == args
    with pytest.raises(SystemExit):
        parse(["--warmup", "-1"])


def test_thread_counts_are_one_two_and_the_powers_of_two_up_to_the_cores():
    assert bench.thread_counts(1) == [1]
    assert bench.thread_counts(2) == bench.thread_counts(3) == [1, 2]
    assert bench.thread_counts(4) == bench.thread_counts(7) == [1, 2, 4]
    assert bench.thread_counts(64) == [1, 2, 4, 8, 16, 32, 64]


def test_child_processes_get_the_thread_variables_and_this_npvae():
    env = bench._child_env(3)
    assert all(env[v] == "3" for v in bench.THREAD_VARIABLES)
    root = str(Path(bench.__file__).resolve().parents[1])
    assert env["PYTHONPATH"].split(os.pathsep)[0] == root


# --------------------------------------------------------------------------------------------
# Subnormal numbers in the optimizer state
# --------------------------------------------------------------------------------------------


def test_count_subnormals_on_a_hand_made_state():
    f32, f64 = np.finfo(np.float32), np.finfo(np.float64)
    state = {
        "t": np.array(7, dtype=np.int64),                                   # a step counter: left out
        "step": np.array([1e-40], dtype=np.float32),                        # a float step counter (PyTorch's): left out
        # 0, normal numbers (tiny, 1.18e-38, is the smallest normal one; 1.2e-38 is above it), and
        # four subnormals: 1e-38, -1e-39, 1e-45 (rounded to the smallest) and the smallest, 1.4e-45
        "m_sum": np.array([0.0, -0.0, 1.0, f32.tiny, -f32.tiny, 1.2e-38, 1e-38, -1e-39, 1e-45, f32.smallest_subnormal],
                          dtype=np.float32),
        "v_sum": np.array([[f64.smallest_subnormal, 1e-310], [1e-300, 0.0]]),   # float64: 1e-38 is normal there
        "w": np.array([1e-38, 3.0]),                                        # float64
        "count": np.array([0, 1, 2], dtype=np.int32),                       # integers: left out
    }
    assert bench.count_subnormals(state) == {"m_sum": 4, "v_sum": 2, "w": 0}
    assert bench._state_entries(state) == 10 + 4 + 2
    assert bench.count_subnormals({}) == {}


def test_count_subnormals_of_a_real_optimizer_state_and_after_a_round_trip():
    opt = Adam(VAE(6, [3], 2, rng=0).params, lr=1e-3)
    state = opt.state_dict()
    counts = bench.count_subnormals(state)
    floats = {k for k, v in state.items() if np.issubdtype(np.asarray(v).dtype, np.floating) and k != "t"}
    assert set(counts) == floats and "t" not in counts and all(n == 0 for n in counts.values())
    # subnormal values put into the state are found there
    key = sorted(floats)[0]
    state[key] = np.full_like(state[key], 1e-40)
    state[key].flat[0] = 1.0
    assert bench.count_subnormals(state)[key] == state[key].size - 1


# --------------------------------------------------------------------------------------------
# The busy process
# --------------------------------------------------------------------------------------------


def test_the_busy_process_runs_during_the_block_and_is_stopped_after_it():
    with bench.busy_process(60) as busy:
        time.sleep(0.3)
        assert _running(busy["pid"])
    assert not _running(busy["pid"])
    assert busy["ran_throughout"] is True and busy["max_seconds"] == 60
    assert busy["wall_seconds"] >= 0.3 and 0 <= busy["cpu_seconds"] <= busy["wall_seconds"] + 0.5


def test_the_busy_process_is_stopped_on_an_exception():
    with pytest.raises(ZeroDivisionError):
        with bench.busy_process(60) as busy:
            assert _running(busy["pid"])
            1 / 0
    assert not _running(busy["pid"])


def test_the_busy_process_is_bounded_in_time():
    with bench.busy_process(0.2) as busy:
        deadline = time.monotonic() + 20
        while _running(busy["pid"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _running(busy["pid"])                    # it stopped by itself
    assert busy["ran_throughout"] is False


def test_the_busy_loop_ends_when_its_parent_is_gone():
    # A process starts the busy loop (bounded at 60 s) and exits at once: the loop sees its parent change.
    code = ("import os, subprocess, sys; print(subprocess.Popen([sys.executable, '-c', sys.argv[1], '60', "
            "str(os.getpid())], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid)")
    pid = int(subprocess.run([sys.executable, "-c", code, bench.BUSY_LOOP], capture_output=True, text=True,
                             check=True).stdout)
    deadline = time.monotonic() + 20
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(pid)


def test_a_failing_bench_stops_its_busy_process(tmp_path, monkeypatch):
    one_thread_environment(monkeypatch)
    monkeypatch.setattr(bench, "_pytorch_installed", lambda: False)
    started = []
    real_busy = bench.busy_process

    def recording_busy(seconds):
        cm = real_busy(seconds)
        started.append(cm)
        return cm

    real_epoch = bench.NpvaeRun.epoch
    calls = []

    def failing_epoch(self, images=None):
        calls.append(1)
        if len(calls) == 3:                  # the first busy epoch (after --warmup 1 --epochs 1)
            raise MemoryError("out of memory in the busy epoch")
        return real_epoch(self, images)

    monkeypatch.setattr(bench, "busy_process", recording_busy)
    monkeypatch.setattr(bench.NpvaeRun, "epoch", failing_epoch)
    pids = []
    real_popen = bench.subprocess.Popen
    monkeypatch.setattr(bench.subprocess, "Popen", lambda *a, **k: pids.append(p := real_popen(*a, **k)) or p)
    args = ["--quick", "--threads", "1", "--images", "256", "--no-scaling", "--no-train-memory", "--json",
            str(tmp_path / "b.json")]
    with pytest.raises(MemoryError):
        bench.run(parse(args))
    assert len(started) == 1 and len(pids) == 1            # the busy process, started once
    assert pids[0].returncode is not None and not _running(pids[0].pid)
    assert not (tmp_path / "b.json").exists()


# --------------------------------------------------------------------------------------------
# The machine: CPU, BLAS, threads
# --------------------------------------------------------------------------------------------

INTEL_CPUINFO = """\
processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8488C
stepping\t: 8
flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512_bf16 avx512_fp16 amx_tile

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: another name, not read
"""


def test_cpu_description_names_the_model_generation_and_flags():
    cpu = bench.cpu_description(INTEL_CPUINFO)
    assert cpu == {"model": "Intel(R) Xeon(R) Platinum 8488C", "vendor": "GenuineIntel", "family": "6",
                   "model_number": "143", "stepping": "8",
                   "flags": ["sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile"]}
    m = {**bench.machine(), "cpu": cpu["model"], "cpu_details": cpu, "cores": 2, "cores_available": 2}
    line = bench._machine_line(m)
    assert line.startswith("machine: Intel(R) Xeon(R) Platinum 8488C (GenuineIntel family 6, model 143, stepping 8; "
                           "sse4_2 avx avx2 fma avx512f avx512_bf16 avx512_fp16 amx_tile), 2 cores, ")
    assert bench.cpu_description("")["model"]                  # no /proc/cpuinfo: platform's name


def test_this_machine_is_described():
    m = bench.machine()
    assert m["cpu"] and m["cores"] >= 1 and 1 <= m["cores_available"] <= m["cores"]
    if Path("/proc/cpuinfo").exists():
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        assert not names or m["cpu"] == names[0]


def _numpy_blas_name():
    try:
        return np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]
    except Exception:
        return ""


def test_blas_is_described_with_its_kernel_without_threadpoolctl(monkeypatch):
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)        # as if it were not installed
    blas = bench.blas_info()
    assert blas and all(b["internal_api"] and b["version"] for b in blas)
    if sys.platform == "linux" and "openblas" in _numpy_blas_name().lower():
        # asked of the loaded library itself: the kernel chosen for this CPU, and the threads
        (b,) = blas
        assert b["source"] == "the loaded library" and b["internal_api"] == "openblas"
        assert b["architecture"] and b["num_threads"] >= 1 and b["version"].startswith("0.")
    line = bench._blas_lines(blas)[0]
    assert line.startswith(f"BLAS: {blas[0]['internal_api']} {blas[0]['version']}")


def test_blas_from_numpy_config_names_the_library():
    blas = bench._blas_from_numpy_config()
    if not _numpy_blas_name():
        pytest.skip("this NumPy has no show_config(mode='dicts')")
    (b,) = blas
    assert b["internal_api"] == _numpy_blas_name() and b["source"] == "numpy.show_config"
    assert "kernel unknown" in bench._blas_lines(blas)[0]


def test_blas_with_threadpoolctl_agrees_with_the_loaded_library():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with_tpc = bench.blas_info()
    assert all(b["source"] == "threadpoolctl" for b in with_tpc)
    mine = bench._openblas_from_loaded_libraries()
    if not mine:
        pytest.skip("no OpenBLAS found in /proc/self/maps")
    by_path = {b["filepath"]: b for b in with_tpc}
    for b in mine:
        theirs = by_path[b["filepath"]]
        assert (b["architecture"], b["num_threads"], b["version"]) == \
            (theirs["architecture"], theirs["num_threads"], theirs["version"])
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        assert {b["num_threads"] for b in bench._openblas_from_loaded_libraries()} == {1}


def test_the_fast_paths_threads_follow_the_bench_and_are_restored(tmp_path, monkeypatch):
    monkeypatch.setenv("NPVAE_THREADS", "5")
    seen = {}
    monkeypatch.setattr(bench, "limit_blas_threads", lambda n: None)
    monkeypatch.setenv(bench._CHILD, "1")                           # never re-executes
    monkeypatch.setattr(bench, "_run", lambda args, threads, limiter: seen.update(env=os.environ["NPVAE_THREADS"]) or 0)
    assert bench.run(parse(["--threads", "2", "--json", str(tmp_path / "b.json")])) == 0
    assert seen["env"] == "2" and os.environ["NPVAE_THREADS"] == "5"
    monkeypatch.delenv("NPVAE_THREADS")
    assert bench.run(parse(["--threads", "3", "--json", str(tmp_path / "b.json")])) == 0
    assert seen["env"] == "3" and "NPVAE_THREADS" not in os.environ


def test_threads_line_flags_a_blas_that_did_not_take_the_thread_count():
    s = {"threads": 1, "threads_set_by": "environment"}
    m = {"blas": [{"num_threads": 2}]}
    assert bench._threads_line(s, m, {"available": False}) == \
        "threads: NumPy's BLAS 1 (set by environment), but the BLAS reports 2"
    m = {"blas": [{"num_threads": 1}]}
    pt = {"available": True, "threads": 1, "interop_threads": 2}
    assert bench._threads_line(s, m, pt) == ("threads: NumPy's BLAS 1 (set by environment); PyTorch 1 (intra-op; "
                                              "2 inter-op), in a process of its own")
    s = {**s, "pool_threads": 2, "environment": {"OPENBLAS_NUM_THREADS": "1", "OPENBLAS_THREAD_TIMEOUT": "4"}}
    assert bench._threads_line(s, m, {"available": False}) == (
        "threads: NumPy's BLAS 1 (set by environment); npvae's elementwise work 2; environment: "
        "OPENBLAS_NUM_THREADS=1 OPENBLAS_THREAD_TIMEOUT=4")


def test_child_processes_run_this_npvae_from_any_working_directory(tmp_path):
    # A folder named npvae in the working directory is not the one the workers import.
    (tmp_path / "npvae").mkdir()
    (tmp_path / "npvae" / "__init__.py").write_text("raise ImportError('the wrong npvae')\n")
    cmd = bench._python_call("thread_counts", {})
    setup = cmd[2].split("; from npvae.bench")[0]               # the worker's start, without its call
    code = setup + "; import npvae.bench; print(npvae.bench.__file__)"
    out = subprocess.run([sys.executable, "-c", code, *cmd[3:]], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(Path(bench.__file__).resolve())
