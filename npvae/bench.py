"""`npvae bench`: how fast npvae trains, against the matrix-product limit and against PyTorch.

It times what a user waits for: whole epochs of `npvae.train.fit`, the very loop `npvae train`
uses, late enough in training to include the slow-downs that appear only after a while
(subnormal numbers in Adam's state appear after about two epochs, and are slow on many cores).
What it measures, with one thread count for everything but the scaling table:

- npvae: every epoch from the first, reported one by one, for the PyTorch VAE example's model
  (784-400-20, ReLU, Bernoulli likelihood, Adam 1e-3, batch 128, float32, the 60,000 MNIST
  training images); the median is over the epochs after the warm-up (3 epochs by default). No
  test-set evaluation. After each epoch it counts the subnormal values in Adam's state.
- the matmul floor: an MLP VAE is almost all matrix products. Their FLOPs in one epoch (forward
  and backward, 2 m k n each) divided by the float32 matmul throughput NumPy reaches at exactly
  those shapes and memory layouts gives the time no NumPy implementation can beat; npvae's
  fraction of it is floor / npvae. It is measured before each timed epoch (the median is kept),
  so that it sees the machine in the same state as the epochs do.
- PyTorch, when it is installed (it is never a dependency), in a process of its own: the same
  model, data, batches (the same index arrays), batch size and optimizer, pixels converted per
  batch as npvae does. Its epochs alternate with npvae's, one each in turn, so that a pair sees
  the same machine; the ratio npvae / PyTorch is the median of the pairs' ratios. Its own
  process, because in one process each library's threads and settings reach the other: PyTorch
  brings its own OpenMP thread pool (whose idle threads may spin for a while on the cores that
  NumPy's work needs) and its own BLAS, and a library that set the processor's flush-to-zero
  mode would hide npvae's subnormal slow-down from the bench but not from `npvae train`.
- a busy machine: more epochs of both, alternating as above, with one other busy process beside
  them (a pure-Python spin loop in a child process, started and always stopped by the bench,
  and bounded in time), against their quiet epochs.
- the machine: the CPU model, the BLAS library, its version and its kernel (from threadpoolctl
  when it is installed; otherwise from the loaded OpenBLAS library itself, or NumPy's build
  configuration), and the thread counts used.
- memory: the peak resident set of this process after npvae's epochs, of the PyTorch process,
  and of a real `npvae train` run in a child process.
- one step taken apart: the batch, loss_and_grads and the optimizer, each timed, beside the
  matmul floor of one step; and how much processor time elementwise work takes when matrix
  products come in between (BLAS threads that spin while they wait take a core of their own).
- scaling: time per epoch and fraction of the floor for hidden sizes 200-1600 and batch sizes
  32-512, each timed on part of an epoch and scaled to 60,000 images, with 1, 2, 4, ... threads
  up to the cores present. Each thread count runs in a process of its own, started with
  OPENBLAS_NUM_THREADS / OMP_NUM_THREADS / MKL_NUM_THREADS set: NumPy's BLAS reads them when
  it loads, the one way that works with every BLAS, threadpoolctl or not.

    npvae bench                      # a few minutes on 2 cores; writes bench.json
    npvae bench --quick --json x.json
    python -m npvae.bench --threads 1 --warmup 4 --epochs 8
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib.util
import inspect
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
from .settings import nonnegative_int, positive_int
from .train import fit, to_batch

EPOCH_IMAGES = 60_000                      # per-epoch figures are for the full MNIST training set
SCALING_HIDDEN = (200, 400, 800, 1600)     # at batch 128
SCALING_BATCH = (32, 128, 512)             # at hidden 400
# The thread counts a run is given: the BLAS's (read when NumPy loads), and NPVAE_THREADS, the
# threads of the fast path's elementwise work (read when an optimizer is made; see npvae.threads)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NPVAE_THREADS")
REPORTED_VARIABLES = THREAD_VARIABLES + ("OPENBLAS_THREAD_TIMEOUT",)   # shown with the results
STEP_COUNTERS = ("t", "step", "steps")     # optimizer state entries that count steps, not values
CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "neon", "asimd")
_CHILD = "NPVAE_BENCH_CHILD"               # set in a re-executed bench, so it never re-executes again
# fit's `fast` switch (the fast twin of the training step), passed where this version of fit has it
_FIT_OPTIONS = {"fast": True} if "fast" in inspect.signature(fit).parameters else {}


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




# --------------------------------------------------------------------------------------------
# Timing npvae's real training loop, and PyTorch's
# --------------------------------------------------------------------------------------------


def count_subnormals(state: dict) -> dict[str, int]:
    """The number of subnormal values in each floating-point array of an optimizer's state.

    A value a is subnormal when 0 < |a| < np.finfo(a.dtype).tiny (for float32, 1.2e-38): it has
    lost the leading 1 of its mantissa, and arithmetic on it is very slow on many processors.
    Step counters (entries named in STEP_COUNTERS, and integer arrays) are left out.
    """
    counts = {}
    for key, value in state.items():
        a = np.asarray(value)
        if key in STEP_COUNTERS or not np.issubdtype(a.dtype, np.floating):
            continue
        counts[key] = int(np.count_nonzero((np.abs(a) < np.finfo(a.dtype).tiny) & (a != 0)))
    return counts


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
                           history=self.history, log=io.StringIO(), **_FIT_OPTIONS)
        return self.history[-1]["seconds"]

    def subnormals(self) -> dict[str, int]:
        """Subnormal values in the optimizer's state, by entry."""
        return count_subnormals(self.optimizer.state_dict())


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

    def subnormals(self) -> dict[str, int]:
        """Subnormal values in PyTorch's Adam state (exp_avg, exp_avg_sq), summed over parameters."""
        counts: dict[str, int] = {}
        for state in self.optimizer.state_dict()["state"].values():
            found = count_subnormals({k: v.numpy() for k, v in state.items() if k not in STEP_COUNTERS})
            for k, n in found.items():
                counts[k] = counts.get(k, 0) + n
        return counts


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


# --------------------------------------------------------------------------------------------
# Child processes: PyTorch's side of the bench, the busy process, a scaling row's threads
# --------------------------------------------------------------------------------------------


def _child_env(threads: int) -> dict[str, str]:
    """The environment of a child process: this npvae first on the path, and `threads` BLAS and
    OpenMP threads (NumPy's BLAS and PyTorch read these variables when they load)."""
    root = str(Path(__file__).resolve().parents[1])
    path = [root, *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, **{k: str(threads) for k in THREAD_VARIABLES}, "PYTHONPATH": os.pathsep.join(path)}


def _python_call(function: str, spec: dict) -> list[str]:
    """The command that runs this npvae's `npvae.bench.FUNCTION(spec)` in a new Python process
    (this npvae first on its path, before any other in the working directory)."""
    code = f"import sys; sys.path.insert(0, sys.argv[2]); from npvae.bench import {function}; {function}(sys.argv[1])"
    return [sys.executable, "-c", code, json.dumps(spec), str(Path(__file__).resolve().parents[1])]


def _reply_channel():
    """This process's standard output as the channel to the bench, and stdout itself sent to
    stderr: a library that prints (a warning) cannot break the replies."""
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    sys.stdout.flush()
    os.dup2(2, 1)
    return channel


def _pytorch_installed() -> bool:
    return importlib.util.find_spec("torch") is not None


def pytorch_worker(spec_json: str) -> None:
    """PyTorch's side of the bench, in a process of its own (started by PytorchProcess).

    Builds TorchRun from the spec (threads, images, hidden, latent, batch, seed), replies with one
    JSON line about itself, then answers each line of standard input: "epoch" trains one epoch
    and replies {seconds, loss, subnormals}; "quit" replies {peak_rss_mb} and ends.
    """
    spec = json.loads(spec_json)
    reply = _reply_channel()
    import torch
    torch.set_num_threads(spec["threads"])
    images = load_mnist_uint8("train")[0][:spec["images"]]
    run = TorchRun(torch, images, spec["hidden"], spec["latent"], spec["batch"], spec["seed"])
    reply.write(json.dumps({"version": torch.__version__, "threads": torch.get_num_threads(),
                            "interop_threads": torch.get_num_interop_threads()}) + "\n")
    for line in sys.stdin:
        if line.strip() == "epoch":
            seconds = run.epoch()
            reply.write(json.dumps({"seconds": seconds, "loss": run.last_loss, "subnormals": run.subnormals()}) + "\n")
        elif line.strip() == "quit":
            break
    reply.write(json.dumps({"peak_rss_mb": peak_rss_mb()}) + "\n")


class PytorchProcess:
    """PyTorch's epochs, trained in a child process (pytorch_worker) one at a time on request.

    with PytorchProcess(spec) as p:  p.info (version, threads);  p.epoch() -> {seconds, loss,
    subnormals};  p.close() -> {peak_rss_mb}. The process is stopped when the block ends, also
    on an exception.
    """

    def __init__(self, spec: dict) -> None:
        self._errors = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(_python_call("pytorch_worker", spec), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._errors, env=_child_env(spec["threads"]),
                                     text=True)
        try:
            self.info = self._read()
        except BaseException:
            self.__exit__()
            raise

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self._errors.seek(0)
            raise RuntimeError(f"the PyTorch process stopped (exit status {self.proc.returncode}): "
                               f"{self._errors.read().decode(errors='replace')[-2000:]}")
        return json.loads(line)

    def epoch(self) -> dict:
        self.proc.stdin.write("epoch\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> dict:
        """Ask the process to end; return its last reply (its peak memory)."""
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        last = self._read()
        self.proc.wait(timeout=30)
        return last

    def __enter__(self) -> PytorchProcess:
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout, self._errors):
            with contextlib.suppress(OSError):
                f.close()


# A pure-Python spin loop: one core's worth of work, as another program would take. It ends by
# itself after argv[1] seconds, or as soon as the bench's process (argv[2]) is no longer its parent.
BUSY_LOOP = """\
import os, sys, time
end, parent = time.monotonic() + float(sys.argv[1]), int(sys.argv[2])
while time.monotonic() < end and os.getppid() == parent:
    pass
"""


@contextlib.contextmanager
def busy_process(max_seconds: float):
    """One busy process (BUSY_LOOP in a child process) beside the code in the `with` block.

    Yields a dict that, once the block is over, holds pid, ran_throughout (the process was still
    spinning when the block ended: its bound was long enough), wall_seconds and cpu_seconds (the
    processor time it got; about wall_seconds when it had a core to itself). The process is
    stopped when the block ends, also on an exception; and after max_seconds it stops by itself.
    """
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", BUSY_LOOP, str(max_seconds), str(os.getpid())])
    busy = {"pid": proc.pid, "max_seconds": max_seconds}
    try:
        yield busy
    finally:
        before = os.times()                      # a child's processor time is added when it is waited for
        busy["ran_throughout"] = proc.poll() is None
        busy["wall_seconds"] = time.perf_counter() - start
        proc.terminate()                         # nothing if it has ended
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        after = os.times()
        busy["cpu_seconds"] = after.children_user + after.children_system - before.children_user - before.children_system


def thread_counts(cores: int) -> list[int]:
    """The thread counts of the scaling table: 1, 2 and every power of two up to `cores`."""
    counts, t = [1], 2
    while t <= cores:
        counts.append(t)
        t *= 2
    return counts


def scaling_configs(quick: bool = False) -> list[tuple[int, int]]:
    """(hidden, batch) of the scaling table's rows: the hidden sizes at batch 128, then the batch
    sizes; with quick=True (--quick, a smoke test), the two smallest configurations only."""
    configs = [(h, 128) for h in SCALING_HIDDEN] + [(400, b) for b in SCALING_BATCH if b != 128]
    return configs[:1] + configs[4:5] if quick else configs


def scaling_worker(spec_json: str) -> None:
    """The scaling rows for the thread count this process was started with (see scaling_rows)."""
    spec = json.loads(spec_json)
    reply = _reply_channel()
    x_all, _ = load_mnist_uint8("train")
    n, latent = spec["images"], spec["latent"]
    blas_threads = sorted({b["num_threads"] for b in blas_info() if b.get("num_threads") is not None})
    pool = pool_threads()
    rows = []
    for h, b in scaling_configs(spec["quick"]):
        r = NpvaeRun(x_all[:n], [h], latent, b, spec["seed"])
        r.epoch(x_all[:min(n, 4 * b)])                          # warm-up: allocate, load
        seconds = r.epoch() * EPOCH_IMAGES / n
        f = matmul_floor(x_all.shape[1], [h], latent, b, EPOCH_IMAGES, spec["min_seconds"])
        rows.append({"hidden": h, "batch_size": b, "threads": spec["threads"], "blas_threads": blas_threads,
                     "pool_threads": pool,
                     "images_timed": n, "seconds_per_epoch": seconds,
                     "floor_seconds_per_epoch": f["seconds_per_epoch"], "gflops_per_epoch": f["flops_per_epoch"] / 1e9,
                     "matmul_gflops_per_second": f["gflops_per_second"],
                     "fraction_of_floor": f["seconds_per_epoch"] / seconds})
    reply.write(json.dumps(rows) + "\n")


def scaling_rows(threads: list[int], images: int, latent: int, seed: int, min_seconds: float, quick: bool = False,
                 say=print) -> list[dict]:
    """The scaling table: every configuration of scaling_configs(quick) with each thread count, each
    thread count in a process of its own started with the thread variables set (the one way to
    set a BLAS's threads before it loads). Rows in the order of the configurations, then threads."""
    rows = []
    for t in threads:
        say(f"scaling: {t} thread{'s' * (t != 1)}, {len(scaling_configs(quick))} configurations ...")
        spec = {"threads": t, "images": images, "latent": latent, "seed": seed, "min_seconds": min_seconds,
                "quick": quick}
        done = subprocess.run(_python_call("scaling_worker", spec), env=_child_env(t), capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"the scaling process with {t} threads failed ({done.returncode}): {done.stderr[-2000:]}")
        rows += json.loads(done.stdout.strip().splitlines()[-1])
    order = {c: i for i, c in enumerate(scaling_configs())}
    return sorted(rows, key=lambda r: (order[r["hidden"], r["batch_size"]], r["threads"]))


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
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errors, env=_child_env(threads))
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


BLAS_KEYS = ("internal_api", "version", "num_threads", "architecture", "threading_layer", "filepath")


def blas_info() -> list[dict]:
    """The BLAS libraries loaded in this process: internal_api (openblas, mkl, ...), version,
    num_threads, architecture (the kernel chosen for this CPU, e.g. SkylakeX, Haswell, Zen),
    threading_layer, filepath, and source (how they were found).

    From threadpoolctl when it is installed (never a dependency); otherwise by asking the loaded
    OpenBLAS library itself, as threadpoolctl does (Linux); otherwise NumPy's build
    configuration, which names the library but not the kernel chosen at run time.
    """
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return _openblas_from_loaded_libraries() or _blas_from_numpy_config()
    return [{**{k: lib.get(k) for k in BLAS_KEYS}, "source": "threadpoolctl"}
            for lib in threadpool_info() if lib.get("user_api") == "blas"]


def _openblas_from_loaded_libraries() -> list[dict]:
    """OpenBLAS libraries mapped into this process (/proc/self/maps), asked through ctypes for
    their configuration, kernel (core name) and thread count."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return []
    paths = sorted({fields[5] for fields in (line.split(maxsplit=5) for line in maps.splitlines())
                    if len(fields) == 6 and "openblas" in Path(fields[5]).name.lower()})
    found = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in (("openblas_", ""), ("openblas_", "64_"), ("scipy_openblas_", ""), ("scipy_openblas_", "64_")):
            functions = {name: getattr(lib, f"{prefix}{name}{suffix}", None)
                         for name in ("get_config", "get_corename", "get_num_threads", "get_parallel")}
            if None in functions.values():
                continue
            functions["get_config"].restype = functions["get_corename"].restype = ctypes.c_char_p
            config = functions["get_config"]().decode(errors="replace")
            found.append({"internal_api": "openblas", "version": config.split()[1] if len(config.split()) > 1 else None,
                          "num_threads": int(functions["get_num_threads"]()),
                          "architecture": functions["get_corename"]().decode(errors="replace"),
                          "threading_layer": {0: "disabled", 1: "pthreads", 2: "openmp"}.get(functions["get_parallel"]()),
                          "filepath": path, "source": "the loaded library"})
            break
    return found


def _blas_from_numpy_config() -> list[dict]:
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    except Exception:          # older NumPy: no dicts mode; the bench still runs
        return []
    return [{"internal_api": blas.get("name"), "version": blas.get("version"), "num_threads": None,
             "architecture": None, "threading_layer": None, "filepath": None,
             "build_configuration": blas.get("openblas configuration"), "source": "numpy.show_config"}]


def cpu_description(cpuinfo: str | None = None) -> dict:
    """The processor, as lscpu names it: model (e.g. "Intel(R) Xeon(R) Platinum 8488C"), vendor,
    family / model / stepping numbers (which tell processor generations apart when a virtual
    machine shows only "AMD EPYC"), and the SIMD flags that matter for NumPy and BLAS kernels.
    cpuinfo: the text of /proc/cpuinfo (default: read it, where there is one)."""
    info: dict = {"model": platform.processor() or platform.machine(), "vendor": None, "family": None,
                  "model_number": None, "stepping": None, "flags": []}
    text = cpuinfo
    if text is None:
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            text = ""
    first: dict[str, str] = {}                    # the first processor's fields
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            first.setdefault(key.strip(), value.strip())
    if first:
        info.update(model=first.get("model name") or first.get("Model") or info["model"], vendor=first.get("vendor_id"),
                    family=first.get("cpu family"), model_number=first.get("model"), stepping=first.get("stepping"))
        flags = set((first.get("flags") or first.get("Features") or "").split())
        info["flags"] = [f for f in CPU_FLAGS if f in flags]
    elif sys.platform == "darwin":
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            info["model"] = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                           text=True, timeout=5).stdout.strip() or info["model"]
    return info


def numpy_simd() -> list[str]:
    """The SIMD extensions NumPy's own loops use on this CPU (NumPy's show_config)."""
    try:
        return list(np.show_config(mode="dicts")["SIMD Extensions"]["found"])
    except Exception:
        return []


def machine() -> dict:
    cpu = cpu_description()
    return {"cpu": cpu["model"], "cpu_details": cpu, "cores": os.cpu_count(), "cores_available": _available_cores(),
            "platform": platform.platform(), "python": platform.python_version(), "numpy": np.__version__,
            "numpy_simd": numpy_simd(), "blas": blas_info()}


def pool_threads() -> int | None:
    """The threads npvae's fast path splits its elementwise work over (None where it has no pool)."""
    try:
        from .fast import default_threads
    except ImportError:
        return None
    return default_threads()


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
                        help="threads for NumPy's BLAS and for PyTorch (default: the cores this process may use); "
                             "the scaling table tries 1, 2, 4, ... up to the cores")
    parser.add_argument("--warmup", type=nonnegative_int, default=None,
                        help="epochs before the timed ones, reported but not in the medians (default 3: subnormal "
                             "numbers appear in Adam's state after about 2 epochs, and slow some CPUs down; 1 with --quick)")
    parser.add_argument("--epochs", type=positive_int, default=None,
                        help="timed epochs after the warm-up (default 5; 1 with --quick)")
    parser.add_argument("--busy-epochs", type=positive_int, default=None,
                        help="epochs of each library timed beside one busy process (default 2; 1 with --quick)")
    parser.add_argument("--no-busy", action="store_true", help="skip the busy-machine epochs")
    parser.add_argument("--images", type=positive_int, default=None,
                        help="train on the first N images (default all 60,000); times are scaled to 60,000")
    parser.add_argument("--batch-size", type=positive_int, default=128, help="minibatch size (default 128)")
    parser.add_argument("--hidden", type=positive_int, default=400, help="hidden layer size (default 400)")
    parser.add_argument("--latent", type=positive_int, default=20, help="latent size (default 20)")
    parser.add_argument("--scaling-images", type=positive_int, default=12_000,
                        help="images per configuration of the scaling table (default 12,000)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke test in seconds: few images, one warm-up, one timed and one busy epoch, "
                             "short matmul timings, two scaling configurations")
    parser.add_argument("--no-torch", action="store_true",
                        help="skip PyTorch even if it is installed (it runs in a process of its own, its epochs "
                             "alternating with npvae's: in one process each library's threads and settings "
                             "could slow or change the other)")
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
    saved = os.environ.get("NPVAE_THREADS")
    os.environ["NPVAE_THREADS"] = str(threads)
    try:
        return _run(args, threads, limiter)
    finally:
        if limiter is not None:
            limiter.restore_original_limits()
        if saved is None:
            os.environ.pop("NPVAE_THREADS", None)
        else:
            os.environ["NPVAE_THREADS"] = saved


def _state_entries(state: dict) -> int:
    """The number of values count_subnormals looks at."""
    return sum(np.asarray(v).size for k, v in state.items()
               if k not in STEP_COUNTERS and np.issubdtype(np.asarray(v).dtype, np.floating))


def _run(args: argparse.Namespace, threads: int, limiter) -> int:
    quick = args.quick
    say = lambda text: print(text, flush=True)   # noqa: E731
    hidden, latent, batch = [args.hidden], args.latent, args.batch_size
    warmup = args.warmup if args.warmup is not None else (1 if quick else 3)
    epochs = args.epochs or (1 if quick else 5)
    busy_epochs = 0 if args.no_busy else (args.busy_epochs or (1 if quick else 2))
    min_seconds = 0.02 if quick else 0.1         # per matmul shape
    results: dict = {"machine": machine(), "settings": {
        "threads": threads, "threads_set_by": "threadpoolctl" if limiter is not None else "environment",
        "model": f"VAE 784-{args.hidden}-{latent}, ReLU, Bernoulli, Adam 1e-3, float32",
        "batch_size": batch, "epochs_timed": epochs, "warmup_epochs": warmup, "busy_epochs": busy_epochs,
        "quick": quick, "seed": args.seed, "seconds_scaled_to_images": EPOCH_IMAGES,
        "fit_options": dict(_FIT_OPTIONS), "pool_threads": pool_threads(),
        "environment": {k: os.environ[k] for k in REPORTED_VARIABLES if k in os.environ},
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

    with contextlib.ExitStack() as stack:
        # 1. PyTorch in a process of its own (see the module's docstring for why), started
        # before npvae's first epoch so that its start-up overlaps no timing.
        torch_process = None
        if args.no_torch:
            results["pytorch"] = {"available": False, "note": "PyTorch: skipped (--no-torch)"}
        elif not _pytorch_installed():
            results["pytorch"] = {"available": False, "note": "PyTorch not installed: skipped"}
        else:
            say("PyTorch: starting its process ...")
            torch_process = stack.enter_context(PytorchProcess(
                {"threads": threads, "images": n_images, "hidden": args.hidden, "latent": latent,
                 "batch": batch, "seed": args.seed}))

        # 2. Every epoch, the warm-up too, npvae's and PyTorch's in turn; each timed epoch after a
        # measurement of the matmul floor: all three see the machine in the same state.
        npvae_run = NpvaeRun(images, hidden, latent, batch, args.seed)
        npvae_all, torch_all, npvae_subnormals, torch_subnormals, floors = [], [], [], [], []
        total = warmup + epochs
        for e in range(total):
            if e >= warmup:
                floors.append(matmul_floor(images.shape[1], hidden, latent, batch, EPOCH_IMAGES, min_seconds))
            npvae_all.append(npvae_run.epoch() * scale)
            npvae_subnormals.append(npvae_run.subnormals())
            line = (f"epoch {e + 1}/{total}{' (warm-up)' * (e < warmup)}: npvae {npvae_all[-1]:.2f} s "
                    f"({sum(npvae_subnormals[-1].values()):,} subnormal in Adam's state)")
            if torch_process is not None:
                reply = torch_process.epoch()
                torch_all.append(reply["seconds"] * scale)
                torch_subnormals.append(reply["subnormals"])
                torch_loss = reply["loss"]
                line += f", PyTorch {torch_all[-1]:.2f} s"
            say(line + (" (per 60,000 images)" if scale != 1 else ""))
        results["memory"]["bench_peak_rss_mb_npvae"] = peak_rss_mb()
        npvae_loss = npvae_run.history[-1]["train_loss"]
        state = npvae_run.optimizer.state_dict()
        params_subnormals = sum(count_subnormals(npvae_run.model.params).values())

        # 3. The busy machine: more epochs of each in turn, one busy process beside them. Its
        # time bound is generous (five times the quiet epochs); the report says if it ran out.
        npvae_busy, torch_busy = [], []
        if busy_epochs:
            quiet_pair = (npvae_all[-1] + (torch_all[-1] if torch_all else 0)) / scale
            say(f"busy machine: {busy_epochs} epoch{'s' * (busy_epochs != 1)} each beside one busy process ...")
            with busy_process(30 + 5 * busy_epochs * quiet_pair) as busy:
                for _ in range(busy_epochs):
                    npvae_busy.append(npvae_run.epoch() * scale)
                    if torch_process is not None:
                        torch_busy.append(torch_process.epoch()["seconds"] * scale)
            say(f"busy machine: npvae {', '.join(f'{t:.2f}' for t in npvae_busy)} s"
                + (f", PyTorch {', '.join(f'{t:.2f}' for t in torch_busy)} s" if torch_busy else ""))
        if torch_process is not None:
            results["memory"]["pytorch_peak_rss_mb"] = torch_process.close()["peak_rss_mb"]
            torch_info = torch_process.info

    floor_each = [f["seconds_per_epoch"] for f in floors]                  # in epoch order
    floor = results["floor"] = {**sorted(floors, key=lambda f: f["seconds_per_epoch"])[len(floors) // 2],
                                "seconds_per_epoch_each": floor_each}      # the median measurement, and all
    npvae_times = npvae_all[warmup:]
    npvae_median = statistics.median(npvae_times)
    results["npvae"] = {"epoch_seconds": npvae_times, "warmup_epoch_seconds": npvae_all[:warmup],
                        "median_epoch_seconds": npvae_median, "final_train_loss": npvae_loss,
                        "fraction_of_floor": floor["seconds_per_epoch"] / npvae_median,
                        # each epoch against the floor measured just before it: how much the
                        # fraction moves with the machine's state during the run
                        "fraction_of_floor_each": [f / t for f, t in zip(floor_each, npvae_times)],
                        # after each epoch from the first, and by entry after the last timed one
                        "subnormals": {"after_each_epoch": [sum(c.values()) for c in npvae_subnormals],
                                       "optimizer_state": npvae_subnormals[-1],
                                       "total": sum(npvae_subnormals[-1].values()),
                                       "state_entries": _state_entries(state),
                                       "params": params_subnormals}}
    if torch_process is not None:
        # The ratio is the median of the epochs' ratios: each npvae epoch runs right before a
        # PyTorch epoch, so a pair sees the same machine, and a slow spell shared by both cancels.
        ratios = [a / b for a, b in zip(npvae_all, torch_all)]
        torch_times = torch_all[warmup:]
        results["pytorch"] = {"available": True, "version": torch_info["version"], "threads": torch_info["threads"],
                              "interop_threads": torch_info["interop_threads"],
                              "process": "its own, its epochs alternating with npvae's",
                              "epoch_seconds": torch_times, "warmup_epoch_seconds": torch_all[:warmup],
                              "median_epoch_seconds": statistics.median(torch_times),
                              "final_train_loss": torch_loss, "epoch_ratios": ratios[warmup:],
                              "warmup_epoch_ratios": ratios[:warmup],
                              "ratio_npvae_to_pytorch": statistics.median(ratios[warmup:]),
                              "subnormals_after_each_epoch": [sum(c.values()) for c in torch_subnormals],
                              "data": "uint8 images converted to float32 one batch at a time"}
    if busy_epochs:
        results["busy"] = {"measured": True, "busy_processes": 1,
                           "process": "a pure-Python spin loop in a child process", "busy_process": busy,
                           "npvae_epoch_seconds": npvae_busy, "npvae_median_epoch_seconds": statistics.median(npvae_busy),
                           "npvae_busy_over_quiet": statistics.median(npvae_busy) / npvae_median}
        if torch_busy:
            ratios = [a / b for a, b in zip(npvae_busy, torch_busy)]
            results["busy"].update({
                "pytorch_epoch_seconds": torch_busy, "pytorch_median_epoch_seconds": statistics.median(torch_busy),
                "pytorch_busy_over_quiet": statistics.median(torch_busy) / results["pytorch"]["median_epoch_seconds"],
                "epoch_ratios": ratios, "ratio_npvae_to_pytorch": statistics.median(ratios)})
    else:
        results["busy"] = {"measured": False, "note": "busy machine: skipped (--no-busy)"}

    # 4. One training step taken apart, beside the matmul floor of a step.
    say("one step, timed in parts ...")
    results["step_ms"] = {**step_breakdown(images, hidden, latent, batch, args.seed, steps=20 if quick else 300),
                          "matmul_floor": floor["flops_per_step"] / (floor["gflops_per_second"] * 1e9) * 1e3}
    results["blas_idle_cpu"] = idle_blas_cpu(0.2 if quick else 1.0)

    # 5. Scaling: each configuration on part of an epoch, after a short warm-up, with each
    # thread count in a process of its own.
    results["scaling"] = []
    if not args.no_scaling:
        results["scaling"] = scaling_rows(thread_counts(_available_cores()),
                                          min(x_all.shape[0], 512 if quick else args.scaling_images),
                                          latent, args.seed, min_seconds, quick, say)

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
    busy = results.get("busy") or {"measured": False, "note": "busy machine: not measured"}
    rows = [["npvae (train.fit)", f"{npv['median_epoch_seconds']:.2f}", f"{npv['fraction_of_floor']:.0%}", "1.00"]]
    if pt["available"]:
        rows.append([f"PyTorch {pt['version']}", f"{pt['median_epoch_seconds']:.2f}",
                     f"{fl['seconds_per_epoch'] / pt['median_epoch_seconds']:.0%}",
                     f"{1 / pt['ratio_npvae_to_pytorch']:.2f}"])
    if busy["measured"]:
        for who, key in (("npvae", "npvae"), (f"PyTorch {pt.get('version', '')}", "pytorch")):
            if f"{key}_median_epoch_seconds" in busy:
                t = busy[f"{key}_median_epoch_seconds"]
                rows.append([f"{who}, busy machine", f"{t:.2f}", f"{fl['seconds_per_epoch'] / t:.0%}",
                             f"{t / npv['median_epoch_seconds']:.2f}"])
    rows.append(["matmul floor", f"{fl['seconds_per_epoch']:.2f}", "100%", "-"])
    warm = s.get("warmup_epochs", 1)
    lines = [f"{s['model']}, batch {s['batch_size']}, {s['threads']} thread{'s' * (s['threads'] != 1)}",
             _machine_line(m), *_blas_lines(m.get("blas", [])), _threads_line(s, m, pt),
             f"seconds per epoch of {s['seconds_scaled_to_images']:,} images: median of {s['epochs_timed']} "
             f"epoch{'s' * (s['epochs_timed'] != 1)} after a warm-up of {warm}"
             + (f" (timed on {s['images']:,} images and scaled)" if s["images"] != s["seconds_scaled_to_images"] else ""),
             "", _epoch_table(npv, pt), "",
             _table(["", "s / epoch", "floor / time", "time / npvae's"], rows), "",
             f"matmul floor: {fl['flops_per_epoch'] / 1e9:.0f} GFLOP per epoch at {fl['gflops_per_second']:.0f} GFLOP/s "
             f"(NumPy float32 matmul at the training step's shapes)"
             + (f"; each epoch against the floor measured before it: "
                f"{', '.join(f'{r:.0%}' for r in npv['fraction_of_floor_each'])}" if "fraction_of_floor_each" in npv else ""),
             (f"npvae / PyTorch: {pt['ratio_npvae_to_pytorch']:.2f} (median of the {len(pt['epoch_ratios'])} "
              f"epochs' ratios: {', '.join(f'{r:.2f}' for r in pt['epoch_ratios'])}; PyTorch in a process of its own)")
             if pt["available"] else pt["note"],
             _busy_line(busy), _subnormal_line(npv, pt),
             _step_line(results.get("step_ms"), s["batch_size"]),
             _idle_line(results.get("blas_idle_cpu")),
             f"peak resident memory: this process {mem['bench_peak_rss_mb_npvae']:.0f} MB after npvae's epochs"
             + (f"; the PyTorch process {mem['pytorch_peak_rss_mb']:.0f} MB" if "pytorch_peak_rss_mb" in mem else "")
             + (f"; `{mem['train_command']}` {mem['train_peak_rss_mb']:.0f} MB" if "train_peak_rss_mb" in mem else "")]
    # Only the load before the bench starts says something about other programs: the bench's own
    # threads (BLAS threads wait for work by spinning) raise the load average while it runs.
    if s["load_average_at_start"] > 0.5:
        lines.append(f"load average {s['load_average_at_start']:.1f} at the start ({m['cores']} cores): other "
                     f"programs were running, so these times may be noisy")
    if results["scaling"]:
        lines += ["", _scaling_title(results["scaling"]), "", _scaling_table(results["scaling"])]
    return "\n".join(line for line in lines if line is not None)


def _machine_line(m: dict) -> str:
    d = m.get("cpu_details") or {}
    numbers = ", ".join(f"{name} {d[key]}" for name, key in (("family", "family"), ("model", "model_number"),
                                                             ("stepping", "stepping")) if d.get(key) is not None)
    about = "; ".join(x for x in (" ".join(filter(None, [d.get("vendor"), numbers])), " ".join(d.get("flags", []))) if x)
    cores = f"{m['cores']} cores" + (f" ({m['cores_available']} available)" if m.get("cores_available") not in
                                     (None, m["cores"]) else "")
    simd = f", SIMD {' '.join(m['numpy_simd'])}" if m.get("numpy_simd") else ""
    return (f"machine: {m['cpu']}{f' ({about})' if about else ''}, {cores}, {m['platform']}, Python {m['python']}, "
            f"NumPy {m['numpy']}{simd}")


def _blas_lines(blas: list[dict]) -> list[str]:
    if not blas:
        return ["BLAS: unknown (install threadpoolctl to see it)"]
    lines = []
    for b in blas:
        kernel = f", kernel {b['architecture']}" if b.get("architecture") else \
            (f", kernel unknown (built as: {b['build_configuration']})" if b.get("build_configuration") else ", kernel unknown")
        threads = f", {b['num_threads']} thread{'s' * (b['num_threads'] != 1)}" if b.get("num_threads") is not None else ""
        layer = f", {b['threading_layer']}" if b.get("threading_layer") else ""
        lines.append(f"BLAS: {b['internal_api']} {b['version']}{kernel}{threads}{layer} (from {b.get('source', 'threadpoolctl')})")
    return lines


def _threads_line(s: dict, m: dict, pt: dict) -> str:
    line = f"threads: NumPy's BLAS {s['threads']} (set by {s['threads_set_by']})"
    seen = {b["num_threads"] for b in m.get("blas", []) if b.get("num_threads") is not None}
    if seen and seen != {s["threads"]}:
        line += f", but the BLAS reports {', '.join(map(str, sorted(seen)))}"
    if s.get("pool_threads") is not None:
        line += f"; npvae's elementwise work {s['pool_threads']}"
    if pt["available"]:
        line += f"; PyTorch {pt['threads']} (intra-op; {pt.get('interop_threads', '?')} inter-op), in a process of its own"
    if s.get("environment"):
        line += "; environment: " + " ".join(f"{k}={v}" for k, v in s["environment"].items())
    return line


def _epoch_table(npv: dict, pt: dict) -> str:
    """Every epoch, the warm-up's too: the times, their ratio and the subnormals after it."""
    npvae_all = npv.get("warmup_epoch_seconds", []) + npv["epoch_seconds"]
    warm = len(npv.get("warmup_epoch_seconds", []))
    subnormals = npv.get("subnormals", {}).get("after_each_epoch", [None] * len(npvae_all))
    header = ["epoch", "npvae s"]
    if pt["available"]:
        header += ["PyTorch s", "npvae / PyTorch"]
        torch_all = pt.get("warmup_epoch_seconds", []) + pt["epoch_seconds"]
        ratios = pt.get("warmup_epoch_ratios", []) + pt["epoch_ratios"]
        torch_subnormals = pt.get("subnormals_after_each_epoch", [None] * len(torch_all))
    header.append("subnormals in npvae's Adam state")
    if pt["available"]:
        header.append("in PyTorch's")
    rows = []
    for i, t in enumerate(npvae_all):
        row = [f"{i + 1}{' (warm-up)' * (i < warm)}", f"{t:.2f}"]
        if pt["available"]:
            row += [f"{torch_all[i]:.2f}", f"{ratios[i]:.2f}"]
        row.append("-" if subnormals[i] is None else f"{subnormals[i]:,}")
        if pt["available"]:
            row.append("-" if torch_subnormals[i] is None else f"{torch_subnormals[i]:,}")
        rows.append(row)
    return _table(header, rows)


def _busy_line(busy: dict) -> str:
    if not busy["measured"]:
        return busy["note"]
    p = busy.get("busy_process", {})
    line = (f"busy machine: one busy process ({busy['process']}) beside {len(busy['npvae_epoch_seconds'])} more "
            f"epoch{'s' * (len(busy['npvae_epoch_seconds']) != 1)} of each: npvae {busy['npvae_busy_over_quiet']:.2f} x its "
            f"quiet epoch")
    if "pytorch_busy_over_quiet" in busy:
        line += (f", PyTorch {busy['pytorch_busy_over_quiet']:.2f} x; npvae / PyTorch {busy['ratio_npvae_to_pytorch']:.2f} "
                 f"(median of {', '.join(f'{r:.2f}' for r in busy['epoch_ratios'])})")
    if p.get("cpu_seconds") is not None and p.get("wall_seconds"):
        line += f"; the busy process got {p['cpu_seconds'] / p['wall_seconds']:.2f} of a core"
    if p.get("ran_throughout") is False:
        line += f" (it stopped before the epochs ended: its bound of {p['max_seconds']:.0f} s was too short)"
    return line


def _subnormal_line(npv: dict, pt: dict) -> str | None:
    sub = npv.get("subnormals")
    if not sub:
        return None
    by_entry = ", ".join(f"{k} {v:,}" for k, v in sub["optimizer_state"].items())
    line = (f"subnormal values after the timed epochs: {sub['total']:,} of the {sub['state_entries']:,} values of "
            f"npvae's Adam state ({by_entry}), {sub['params']:,} in its parameters")
    if pt["available"] and pt.get("subnormals_after_each_epoch"):
        line += f"; {pt['subnormals_after_each_epoch'][-1]:,} in PyTorch's Adam state"
    return line


def _scaling_title(rows: list[dict]) -> str:
    threads = sorted({r["threads"] for r in rows})
    line = (f"Scaling (each timed on {rows[0]['images_timed']:,} images, scaled to {EPOCH_IMAGES:,}; threads "
            f"{', '.join(map(str, threads))}, each in a process of its own started with the thread variables set):")
    wrong = sorted({(r["threads"], tuple(r["blas_threads"])) for r in rows
                    if r.get("blas_threads") and r["blas_threads"] != [r["threads"]]})
    if wrong:
        line += " but the BLAS reported " + "; ".join(f"{', '.join(map(str, b))} threads in the {t}-thread process"
                                                      for t, b in wrong)
    return line


def _scaling_table(rows: list[dict]) -> str:
    """The scaling rows, with each row's speed-up over the same configuration on 1 thread."""
    one = {(r["hidden"], r["batch_size"]): r["seconds_per_epoch"] for r in rows if r["threads"] == 1}
    cells = []
    for r in rows:
        base = one.get((r["hidden"], r["batch_size"]))
        cells.append([str(r["hidden"]), str(r["batch_size"]), str(r["threads"]), f"{r['gflops_per_epoch']:.0f}",
                      f"{r['seconds_per_epoch']:.2f}", f"{r['floor_seconds_per_epoch']:.2f}",
                      f"{r['fraction_of_floor']:.0%}", "-" if base is None else f"{base / r['seconds_per_epoch']:.2f}"])
    return _table(["hidden", "batch", "threads", "GFLOP / epoch", "s / epoch", "floor s", "floor / time",
                   "1 thread / time"], cells)


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
