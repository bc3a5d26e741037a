"""`npvae bench`: how fast npvae trains, against the matrix-product limit and against PyTorch.

What it measures, in one run, with one thread count for everything:

- npvae: the median time per epoch of `npvae.train.fit`, the very loop `npvae train` uses, for the
  PyTorch VAE example's model (784-400-20, ReLU, Bernoulli likelihood, Adam 1e-3, batch 128,
  float32, the 60,000 MNIST training images), after a warm-up epoch. No test-set evaluation.
- the matmul floor: an MLP VAE is almost all matrix products. Their FLOPs in one epoch (forward
  and backward, 2 m k n each) divided by the float32 matmul throughput NumPy reaches at exactly
  those shapes and memory layouts gives the time no NumPy implementation can beat; npvae's
  fraction of it is floor / npvae. It is measured before each timed epoch (the median is kept),
  so that it sees the machine in the same state as the epochs do.
- PyTorch, when it is importable (it is never a dependency): the same model, data, batches (the
  same index arrays), batch size and optimizer, pixels converted per batch as npvae does, epochs
  alternated with npvae's so that both see the same machine; and the ratio npvae / PyTorch.
- memory: the peak resident set of this process after npvae's epochs (before PyTorch is
  imported), and of a real `npvae train` run in a child process.
- one step taken apart: the batch, loss_and_grads and the optimizer, each timed, beside the
  matmul floor of one step; and how much processor time elementwise work takes when matrix
  products come in between (BLAS threads that spin while they wait take a core of their own).
- scaling: time per epoch and fraction of the floor for hidden sizes 200-1600 and batch sizes
  32-512, each timed on part of an epoch and scaled to 60,000 images.

    npvae bench                      # about two minutes on 2 cores; writes bench.json
    npvae bench --quick --json x.json
    python -m npvae.bench --threads 1
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .data import load_mnist_uint8, minibatch_indices
from .models import VAE
from . import fast
from .runs import positive_int
from .train import fit, to_batch

EPOCH_IMAGES = 60_000                      # per-epoch figures are for the full MNIST training set
SCALING_HIDDEN = (200, 400, 800, 1600)     # at batch 128
SCALING_BATCH = (32, 128, 512)             # at hidden 400
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_CHILD = "NPVAE_BENCH_CHILD"               # set in a re-executed bench, so it never re-executes again


# --------------------------------------------------------------------------------------------
# The matrix products of one training step, and how fast NumPy does them
# --------------------------------------------------------------------------------------------


def step_matmuls(input_dim: int, hidden: list[int], latent: int, batch: int) -> list[dict]:
    """Every matrix product of one VAE training step (forward and backward), as npvae does them.

    For each Dense layer (D_in -> D_out) on a batch of N:
        forward   y  = x @ W          (N, D_in) x (D_in, D_out)
        backward  dW = x.T @ dout     (D_in, N) x (N, D_out)
                  dx = dout @ W.T     (N, D_out) x (D_out, D_in), except for the first layer,
                                      whose input is data
    Each entry: {"layer", "kind", "m", "k", "n", "flops"}: an (m, k) x (k, n) product, 2 m k n FLOPs.
    """
    sizes = [("enc", d_in, d_out) for d_in, d_out in zip([input_dim, *hidden[:-1]], hidden)]
    sizes.append(("head", hidden[-1] if hidden else input_dim, 2 * latent))     # [mu | logvar]
    dec = [latent, *hidden[::-1], input_dim]
    sizes += [("dec", d_in, d_out) for d_in, d_out in zip(dec[:-1], dec[1:])]
    products = []
    counts: dict[str, int] = {}
    for i, (part, d_in, d_out) in enumerate(sizes):
        name = f"{part}{counts.get(part, 0)}" if part != "head" else "head"
        counts[part] = counts.get(part, 0) + 1
        shapes = [("forward", batch, d_in, d_out), ("dW", d_in, batch, d_out)]
        if i > 0:
            shapes.append(("dx", batch, d_out, d_in))
        products += [{"layer": name, "kind": kind, "m": m, "k": k, "n": n, "flops": 2 * m * k * n}
                     for kind, m, k, n in shapes]
    return products


def time_matmul(kind: str, m: int, k: int, n: int, dtype=np.float32, min_seconds: float = 0.05,
                repeats: int = 5) -> float:
    """Seconds for one float32 product of this shape, with the operand layouts the layers use.

    forward: x @ W, both row-major. dW: x.T @ dout, a transposed (column-major) view on the left.
    dx: dout @ W.T, a transposed view on the right. The best of `repeats` timings of a loop that
    lasts at least `min_seconds`: the floor is what NumPy can do, not what it did on a busy moment.
    """
    rng = np.random.default_rng(0)
    a = rng.standard_normal((k, m) if kind == "dW" else (m, k), dtype=dtype)
    b = rng.standard_normal((n, k) if kind == "dx" else (k, n), dtype=dtype)
    a, b = (a.T if kind == "dW" else a), (b.T if kind == "dx" else b)
    out = np.empty((m, n), dtype=dtype)
    np.matmul(a, b, out=out)                                    # warm up
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < min_seconds / repeats:  # how many calls fill a repeat
        np.matmul(a, b, out=out)
        calls += 1
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            np.matmul(a, b, out=out)
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def epoch_batches(images: int, batch: int) -> list[int]:
    """The batch sizes of one epoch: full batches and the last, smaller one."""
    return [batch] * (images // batch) + ([images % batch] if images % batch else [])


def matmul_floor(input_dim: int, hidden: list[int], latent: int, batch: int, images: int = EPOCH_IMAGES,
                 min_seconds: float = 0.05) -> dict:
    """The FLOPs of one epoch of training steps and the time NumPy's matmul needs for them.

    Each product of a full-batch step is timed; the epoch's FLOPs (the last, smaller batch
    included) divided by the throughput measured over the whole step gives the floor.
    """
    products = step_matmuls(input_dim, hidden, latent, batch)
    for p in products:
        p["seconds"] = time_matmul(p["kind"], p["m"], p["k"], p["n"], min_seconds=min_seconds)
        p["gflops_per_second"] = p["flops"] / p["seconds"] / 1e9
    step_flops = sum(p["flops"] for p in products)
    step_seconds = sum(p["seconds"] for p in products)
    epoch_flops = sum(sum(p["flops"] for p in step_matmuls(input_dim, hidden, latent, b))
                      for b in epoch_batches(images, batch))
    throughput = step_flops / step_seconds
    return {"flops_per_step": step_flops, "flops_per_epoch": epoch_flops,
            "gflops_per_second": throughput / 1e9, "seconds_per_epoch": epoch_flops / throughput,
            "products": products}


# --------------------------------------------------------------------------------------------
# Timing npvae's real training loop, and PyTorch's
# --------------------------------------------------------------------------------------------


class NpvaeRun:
    """A VAE and its Adam optimizer, trained one epoch at a time through `fit` (the training path)."""

    def __init__(self, images: np.ndarray, hidden: list[int], latent: int, batch: int, seed: int) -> None:
        self.images, self.batch = images, batch
        self.model = VAE(images.shape[1], hidden, latent, likelihood="bernoulli", rng=seed)
        self.optimizer = fast.make_optimizer("adam", self.model, 1e-3)   # as npvae train
        self.rng = np.random.default_rng(seed + 1)
        self.history: list[dict] = []

    def epoch(self, images: np.ndarray | None = None) -> float:
        """Train one more epoch (on `images`, default all); return its seconds."""
        self.history = fit(self.model, self.optimizer, self.images if images is None else images,
                           epochs=len(self.history) + 1, batch_size=self.batch, rng=self.rng,
                           history=self.history, log=io.StringIO())
        return self.history[-1]["seconds"]


class TorchRun:
    """The same model in PyTorch: Linear 784-400, two Linear 400-20 heads (mu, logvar), Linear
    20-400-784, ReLU, BCE with logits summed over pixels plus the KL, both per image, Adam 1e-3
    with PyTorch's defaults. Batches are the same index arrays as npvae's, converted from uint8 to
    float32 one batch at a time, as npvae does."""

    def __init__(self, torch, images: np.ndarray, hidden: int, latent: int, batch: int, seed: int) -> None:
        nn = torch.nn
        self.torch, self.batch = torch, batch
        torch.manual_seed(seed)
        d = images.shape[1]
        self.layers = nn.ModuleDict({"fc1": nn.Linear(d, hidden), "fc21": nn.Linear(hidden, latent),
                                     "fc22": nn.Linear(hidden, latent), "fc3": nn.Linear(latent, hidden),
                                     "fc4": nn.Linear(hidden, d)})
        self.optimizer = torch.optim.Adam(self.layers.parameters(), lr=1e-3)
        # uint8 as in npvae; a private writable copy (PyTorch wants writable arrays, and npvae's
        # MNIST arrays are read-only views of its cache)
        self.images = torch.from_numpy(np.array(images))
        self.rng = np.random.default_rng(seed + 1)
        self.last_loss = math.nan               # the mean training loss per image of the last epoch

    def epoch(self) -> float:
        torch, L = self.torch, self.layers
        F = torch.nn.functional
        start, total = time.perf_counter(), 0.0
        for idx in minibatch_indices(self.images.shape[0], self.batch, self.rng):
            x = self.images[torch.from_numpy(idx)].to(torch.float32).div_(255)
            h = F.relu(L["fc1"](x))
            mu, logvar = L["fc21"](h), L["fc22"](h)
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
            logits = L["fc4"](F.relu(L["fc3"](z)))
            recon = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
            kl = -0.5 * torch.sum(1 + logvar - mu * mu - logvar.exp())
            loss = (recon + kl) / x.shape[0]
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            total += loss.item() * len(idx)      # as fit reports it: the epoch's mean loss per image
        self.last_loss = total / self.images.shape[0]
        return time.perf_counter() - start


def step_breakdown(images: np.ndarray, hidden: list[int], latent: int, batch: int, seed: int,
                   steps: int = 200) -> dict:
    """Where a training step's time goes: the three calls of `fit`'s inner loop, timed one by one
    on a fresh model (median over `steps` steps after a warm-up), in milliseconds.

    batch: the minibatch, uint8 to float32 (npvae.train.to_batch); loss_and_grads: forward pass,
    loss and backward pass; optimizer: one Adam step. Set beside the matmul floor of one step, it
    tells how much of loss_and_grads is matrix products and how much is everything else.
    """
    model = VAE(images.shape[1], hidden, latent, likelihood="bernoulli", rng=seed)
    twin = fast.twin(model)
    optimizer = fast.make_optimizer("adam", model, 1e-3)
    rng = np.random.default_rng(seed)
    out = np.empty((batch, images.shape[1]), dtype=model.dtype)
    times: dict[str, list[float]] = {"batch": [], "loss_and_grads": [], "optimizer": []}
    warmup = max(1, steps // 10)
    for i in range(warmup + steps):
        idx = rng.integers(0, images.shape[0], batch)
        t0 = time.perf_counter()
        x = to_batch(images, idx, model.dtype, out=out)
        t1 = time.perf_counter()
        twin.loss_and_grads(x)
        t2 = time.perf_counter()
        optimizer.step(twin.grads, overwrite_grads=True)
        t3 = time.perf_counter()
        if i >= warmup:
            for k, t in zip(times, (t1 - t0, t2 - t1, t3 - t2)):
                times[k].append(t)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def idle_blas_cpu(seconds: float = 1.0, every: float = 0.005) -> dict:
    """Processor seconds per second of elementwise NumPy work (one core's worth), alone and with
    a small matrix product every `every` seconds.

    NumPy's elementwise operations run on the calling thread. If the second figure is near 2
    with 2 threads, OpenBLAS's other thread spins between products, waiting for the next one,
    and keeps the other core busy: elementwise work in Python threads would compete with it.
    """
    a = np.ones((256, 256), dtype=np.float32)
    v = np.ones(1 << 18, dtype=np.float32)
    result = {}
    for name, with_products in (("alone", False), ("with_products", True)):
        np.matmul(a, a)
        time.sleep(0.2)                   # let any spinning thread time out and sleep
        cpu0, start = time.process_time(), time.perf_counter()
        last = start
        while (now := time.perf_counter()) - start < seconds:
            np.multiply(v, 1.0, out=v)
            if with_products and now - last > every:
                np.matmul(a, a)
                last = now
        result[name] = (time.process_time() - cpu0) / (time.perf_counter() - start)
    return result


def _import_torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


# --------------------------------------------------------------------------------------------
# Memory, threads, the machine
# --------------------------------------------------------------------------------------------


def peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident set size in MB (ru_maxrss is in KiB on Linux, in bytes on macOS)."""
    peak = resource.getrusage(who).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def train_peak_rss_mb(train_args: list[str], threads: int) -> float:
    """Run `npvae train --no-figures TRAIN_ARGS` in a child process; return its peak RSS in MB."""
    with tempfile.TemporaryDirectory() as out, tempfile.TemporaryFile() as errors:
        cmd = [sys.executable, "-m", "npvae", "train", "--out", out, "--overwrite", "--no-figures", *train_args]
        env = {**os.environ, **{k: str(threads) for k in THREAD_VARIABLES}}
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errors, env=env)
        _, status, usage = os.wait4(proc.pid, 0)       # wait, and get the resource usage of this child alone
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            errors.seek(0)
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {errors.read().decode(errors='replace')}")
    return usage.ru_maxrss / 2**20 if sys.platform == "darwin" else usage.ru_maxrss / 2**10


def limit_blas_threads(threads: int):
    """Limit NumPy's BLAS to `threads` threads in this process, with threadpoolctl if it is
    installed. Returns the limiter (keep it alive), or None without threadpoolctl."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return threadpool_limits(limits=threads, user_api="blas")


def blas_info() -> list[dict]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    keys = ("internal_api", "version", "num_threads", "architecture", "threading_layer")
    return [{k: lib.get(k) for k in keys} for lib in threadpool_info() if lib.get("user_api") == "blas"]


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "numpy": np.__version__, "blas": blas_info()}


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `npvae bench`."""
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="threads for NumPy's BLAS and for PyTorch (default: the cores this process may use)")
    parser.add_argument("--epochs", type=positive_int, default=None, help="timed epochs after the warm-up (default 5; 1 with --quick)")
    parser.add_argument("--images", type=positive_int, default=None,
                        help="train on the first N images (default all 60,000); times are scaled to 60,000")
    parser.add_argument("--batch-size", type=positive_int, default=128, help="minibatch size (default 128)")
    parser.add_argument("--hidden", type=positive_int, default=400, help="hidden layer size (default 400)")
    parser.add_argument("--latent", type=positive_int, default=20, help="latent size (default 20)")
    parser.add_argument("--scaling-images", type=positive_int, default=12_000,
                        help="images per configuration of the scaling table (default 12,000)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke test in seconds: few images, one timed epoch, short matmul timings")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch even if it is installed")
    parser.add_argument("--no-scaling", action="store_true", help="skip the scaling table")
    parser.add_argument("--no-train-memory", action="store_true", help="skip the `npvae train` memory run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the models and the shuffling (default 0)")
    parser.add_argument("--json", default="bench.json", metavar="PATH", help="where to write the results (default bench.json)")


def _argv(args: argparse.Namespace) -> list[str]:
    """The command-line arguments that give `args` back (to re-execute the bench)."""
    argv = []
    for action in _parser()._actions:
        value = getattr(args, action.dest, None)
        if not action.option_strings or value is None or value is False:
            continue
        argv += [action.option_strings[0]] if value is True else [action.option_strings[0], str(value)]
    return argv


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="npvae bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return parser


def _table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table (readable as plain text too)."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |"   # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|", *map(line, rows)])


def run(args: argparse.Namespace) -> int:
    """Run the benchmark described by the parsed options; print the tables and write the JSON."""
    folder = Path(args.json).resolve().parent
    if not folder.is_dir():          # found now, not after minutes of timing
        print(f"npvae bench: --json {args.json}: the folder {folder} does not exist", file=sys.stderr)
        return 2
    threads = args.threads or _available_cores()
    limiter = limit_blas_threads(threads)
    if limiter is None and os.environ.get(_CHILD) is None and any(
            os.environ.get(k) != str(threads) for k in THREAD_VARIABLES[:2]):
        # Without threadpoolctl, the BLAS thread count can only be set before NumPy loads.
        print(f"(re-running in a new process with the BLAS thread count set to {threads})", flush=True)
        env = {**os.environ, _CHILD: "1", **{k: str(threads) for k in THREAD_VARIABLES}}
        return subprocess.call([sys.executable, "-m", "npvae.bench", *_argv(args)], env=env)
    try:
        return _run(args, threads, limiter)
    finally:
        if limiter is not None:
            limiter.restore_original_limits()


def _run(args: argparse.Namespace, threads: int, limiter) -> int:
    quick = args.quick
    say = lambda text: print(text, flush=True)   # noqa: E731
    hidden, latent, batch = [args.hidden], args.latent, args.batch_size
    epochs = args.epochs or (1 if quick else 5)
    min_seconds = 0.02 if quick else 0.1         # per matmul shape
    results: dict = {"machine": machine(), "settings": {
        "threads": threads, "threads_set_by": "threadpoolctl" if limiter is not None else "environment",
        "model": f"VAE 784-{args.hidden}-{latent}, ReLU, Bernoulli, Adam 1e-3, float32",
        "batch_size": batch, "epochs_timed": epochs, "warmup_epochs": 1,
        "quick": quick, "seed": args.seed, "seconds_scaled_to_images": EPOCH_IMAGES,
        "load_average_at_start": os.getloadavg()[0]}, "memory": {}}
    say(f"npvae bench: {results['settings']['model']}, batch {batch}, threads: {threads} "
        f"({results['settings']['threads_set_by']}); {results['machine']['cpu']}")

    # 0. Memory of a real `npvae train` run (the default model on full MNIST, one epoch). It runs
    # first: a child's peak RSS counts the parent's pages at the fork, so the parent must be small.
    if not args.no_train_memory:
        train_args = ["--epochs", "1"] + (["--train-size", "1000", "--test-size", "200"] if quick else [])
        command = f"npvae train {' '.join(train_args)} --no-figures"
        say(f"memory: {command} ...")
        results["memory"].update({"train_peak_rss_mb": train_peak_rss_mb(train_args, threads),
                                  "train_command": command})

    x_all, _ = load_mnist_uint8("train")
    n_images = min(args.images or (2048 if quick else x_all.shape[0]), x_all.shape[0])
    images = x_all[:n_images]
    scale = EPOCH_IMAGES / n_images
    results["settings"]["images"] = n_images

    # 1. npvae's warm-up epoch, then its memory peak (before PyTorch is imported).
    npvae_run = NpvaeRun(images, hidden, latent, batch, args.seed)
    say("npvae: warm-up epoch ...")
    npvae_run.epoch()
    results["memory"]["bench_peak_rss_mb_npvae"] = peak_rss_mb()

    # 2. Timed epochs, alternating with PyTorch's when it is there, each after a measurement of
    # the matmul floor: all three see the machine in the same state, busy or not.
    torch = None if args.no_torch else _import_torch()
    torch_run = None
    if torch is not None:
        torch_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        torch_run = TorchRun(torch, images, args.hidden, latent, batch, args.seed)
        say(f"PyTorch {torch.__version__}: warm-up epoch ...")
        torch_run.epoch()
    npvae_times, torch_times, floors = [], [], []
    for e in range(epochs):
        floors.append(matmul_floor(images.shape[1], hidden, latent, batch, EPOCH_IMAGES, min_seconds))
        npvae_times.append(npvae_run.epoch() * scale)
        line = f"epoch {e + 1}/{epochs}: npvae {npvae_times[-1]:.2f} s"
        if torch_run is not None:
            torch_times.append(torch_run.epoch() * scale)
            line += f", PyTorch {torch_times[-1]:.2f} s"
        say(line + (" (per 60,000 images)" if scale != 1 else ""))
    floor_each = [f["seconds_per_epoch"] for f in floors]                  # in epoch order
    floor = results["floor"] = {**sorted(floors, key=lambda f: f["seconds_per_epoch"])[len(floors) // 2],
                                "seconds_per_epoch_each": floor_each}      # the median measurement, and all
    npvae_median = statistics.median(npvae_times)
    results["npvae"] = {"epoch_seconds": npvae_times, "median_epoch_seconds": npvae_median,
                        "final_train_loss": npvae_run.history[-1]["train_loss"],
                        "fraction_of_floor": floor["seconds_per_epoch"] / npvae_median,
                        # each epoch against the floor measured just before it: how much the
                        # fraction moves with the machine's state during the run
                        "fraction_of_floor_each": [f / t for f, t in zip(floor_each, npvae_times)]}
    if torch_run is not None:
        torch_median = statistics.median(torch_times)
        # The ratio is the median of the epochs' ratios: each npvae epoch runs right before a
        # PyTorch epoch, so a pair sees the same machine, and a slow spell shared by both cancels.
        ratios = [a / b for a, b in zip(npvae_times, torch_times)]
        results["pytorch"] = {"available": True, "version": torch.__version__, "threads": torch.get_num_threads(),
                              "epoch_seconds": torch_times, "median_epoch_seconds": torch_median,
                              "final_train_loss": torch_run.last_loss, "epoch_ratios": ratios,
                              "ratio_npvae_to_pytorch": statistics.median(ratios),
                              "data": "uint8 images converted to float32 one batch at a time"}
        torch.set_num_threads(torch_threads)
    else:
        note = "PyTorch: skipped (--no-torch)" if args.no_torch else "PyTorch not installed: skipped"
        results["pytorch"] = {"available": False, "note": note}

    # 3. One training step taken apart, beside the matmul floor of a step.
    say("one step, timed in parts ...")
    results["step_ms"] = {**step_breakdown(images, hidden, latent, batch, args.seed, steps=20 if quick else 300),
                          "matmul_floor": floor["flops_per_step"] / (floor["gflops_per_second"] * 1e9) * 1e3}
    results["blas_idle_cpu"] = idle_blas_cpu(0.2 if quick else 1.0)

    # 4. Scaling: each configuration on part of an epoch, after a short warm-up.
    results["scaling"] = []
    if not args.no_scaling:
        n_scale = min(x_all.shape[0], 512 if quick else args.scaling_images)
        configs = [(h, 128) for h in SCALING_HIDDEN] + [(400, b) for b in SCALING_BATCH if b != 128]
        for h, b in configs:
            say(f"scaling: hidden {h}, batch {b} ...")
            r = NpvaeRun(x_all[:n_scale], [h], latent, b, args.seed)
            r.epoch(x_all[:min(n_scale, 4 * b)])                      # warm-up: allocate, load
            seconds = r.epoch() * EPOCH_IMAGES / n_scale
            f = matmul_floor(x_all.shape[1], [h], latent, b, EPOCH_IMAGES, min_seconds)
            results["scaling"].append({
                "hidden": h, "batch_size": b, "images_timed": n_scale, "seconds_per_epoch": seconds,
                "floor_seconds_per_epoch": f["seconds_per_epoch"], "gflops_per_epoch": f["flops_per_epoch"] / 1e9,
                "matmul_gflops_per_second": f["gflops_per_second"],
                "fraction_of_floor": f["seconds_per_epoch"] / seconds})

    results["memory"]["bench_peak_rss_mb_final"] = peak_rss_mb()
    results["settings"]["load_average_at_end"] = os.getloadavg()[0]

    print()
    print(report(results))
    path = Path(args.json)
    path.write_text(json.dumps(results, indent=1) + "\n")
    say(f"\nwrote {path.resolve()}")
    return 0


def report(results: dict) -> str:
    """The tables that `npvae bench` prints, from its results."""
    s, m, npv, fl, pt, mem = (results[k] for k in ("settings", "machine", "npvae", "floor", "pytorch", "memory"))
    blas = ", ".join(f"{b['internal_api']} {b['version']} {b['architecture']}" for b in m["blas"]) or "BLAS unknown"
    rows = [["npvae (train.fit)", f"{npv['median_epoch_seconds']:.2f}", f"{npv['fraction_of_floor']:.0%}", "1.00"]]
    if pt["available"]:
        rows.append([f"PyTorch {pt['version']}", f"{pt['median_epoch_seconds']:.2f}",
                     f"{fl['seconds_per_epoch'] / pt['median_epoch_seconds']:.0%}",
                     f"{1 / pt['ratio_npvae_to_pytorch']:.2f}"])
    rows.append(["matmul floor", f"{fl['seconds_per_epoch']:.2f}", "100%", "-"])
    lines = [f"{s['model']}, batch {s['batch_size']}, {s['threads']} thread{'s' * (s['threads'] != 1)}",
             f"machine: {m['cpu']}, {m['cores']} cores, {m['platform']}, Python {m['python']}, "
             f"NumPy {m['numpy']} ({blas})",
             f"seconds per epoch of {s['seconds_scaled_to_images']:,} images: median of {s['epochs_timed']} "
             f"epoch{'s' * (s['epochs_timed'] != 1)} after a warm-up"
             + (f" (timed on {s['images']:,} images and scaled)" if s["images"] != s["seconds_scaled_to_images"] else ""),
             "", _table(["", "s / epoch", "floor / time", "time / npvae's"], rows), "",
             f"matmul floor: {fl['flops_per_epoch'] / 1e9:.0f} GFLOP per epoch at {fl['gflops_per_second']:.0f} GFLOP/s "
             f"(NumPy float32 matmul at the training step's shapes)"
             + (f"; each epoch against the floor measured before it: "
                f"{', '.join(f'{r:.0%}' for r in npv['fraction_of_floor_each'])}" if "fraction_of_floor_each" in npv else ""),
             (f"npvae / PyTorch: {pt['ratio_npvae_to_pytorch']:.2f} (median of the {len(pt['epoch_ratios'])} "
              f"epochs' ratios: {', '.join(f'{r:.2f}' for r in pt['epoch_ratios'])})") if pt["available"] else pt["note"],
             _step_line(results.get("step_ms"), s["batch_size"]),
             _idle_line(results.get("blas_idle_cpu")),
             f"peak resident memory: this process {mem['bench_peak_rss_mb_npvae']:.0f} MB after npvae's epochs"
             + (f"; `{mem['train_command']}` {mem['train_peak_rss_mb']:.0f} MB" if "train_peak_rss_mb" in mem else "")]
    # Only the load before the bench starts says something about other programs: the bench's own
    # threads (BLAS threads wait for work by spinning) raise the load average while it runs.
    if s["load_average_at_start"] > 0.5:
        lines.append(f"load average {s['load_average_at_start']:.1f} at the start ({m['cores']} cores): other "
                     f"programs were running, so these times may be noisy")
    if results["scaling"]:
        rows = [[str(r["hidden"]), str(r["batch_size"]), f"{r['gflops_per_epoch']:.0f}", f"{r['seconds_per_epoch']:.2f}",
                 f"{r['floor_seconds_per_epoch']:.2f}", f"{r['fraction_of_floor']:.0%}"] for r in results["scaling"]]
        lines += ["", f"Scaling (each timed on {results['scaling'][0]['images_timed']:,} images, scaled to "
                      f"{EPOCH_IMAGES:,}):", "",
                  _table(["hidden", "batch", "GFLOP / epoch", "s / epoch", "floor s", "floor / time"], rows)]
    return "\n".join(lines)


def _step_line(step: dict | None, batch: int) -> str:
    if not step:
        return "one step: not measured"
    total = step["batch"] + step["loss_and_grads"] + step["optimizer"]
    return (f"one step of {batch} images (median of its parts): batch {step['batch']:.2f} ms + loss_and_grads "
            f"{step['loss_and_grads']:.2f} ms + Adam {step['optimizer']:.2f} ms = {total:.2f} ms; the matrix "
            f"products' floor is {step['matmul_floor']:.2f} ms of it")


def _idle_line(idle: dict | None) -> str:
    if not idle:
        return "processor time of elementwise work: not measured"
    return (f"processor seconds per second of elementwise work: {idle['alone']:.2f} alone, "
            f"{idle['with_products']:.2f} with a matrix product every 5 ms (above 1: BLAS threads "
            f"spin between products)")


def main(argv: list[str] | None = None) -> int:
    return run(_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
