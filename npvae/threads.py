"""How many threads the command line gives NumPy's BLAS and npvae's fast path, chosen before NumPy loads.

OpenBLAS reads its settings from the environment once, when NumPy is imported, so the command
line sets them here first (this module imports nothing but the standard library):

- OPENBLAS_NUM_THREADS (and OMP_NUM_THREADS): the cores that are free when the command starts,
  unless the user set it, or passed --threads N. On a busy machine a BLAS thread that shares its
  core with another program makes every matrix product wait for it: with one other busy process
  on a 2-core machine an epoch took 2.8 times as long with 2 threads, 1.1 times with 1.
- OPENBLAS_THREAD_TIMEOUT=4, unless set: OpenBLAS's idle threads then go to sleep almost at once
  after a matrix product, instead of spinning on their core for a while and keeping it from the
  fast path's own threads (npvae.fast) and from other programs.
- NPVAE_THREADS: the number of threads npvae.fast splits its elementwise work over (default 1).

A library user sets the same variables before importing NumPy, or leaves them: everything then
runs as NumPy loads by default, with the fast path on one thread.
"""

from __future__ import annotations

import json
import os
import time

BLAS_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")


def free_cores(seconds: float = 0.2) -> float:
    """The number of cores left idle over `seconds` (from /proc/stat; without it, the cores
    minus the one-minute load average)."""
    def ticks() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        return sum(fields), fields[3] + fields[4]            # all, idle + iowait
    try:
        total0, idle0 = ticks()
        time.sleep(seconds)
        total1, idle1 = ticks()
        return (os.cpu_count() or 1) * (idle1 - idle0) / max(1, total1 - total0)
    except (OSError, ValueError, IndexError):
        return max(0.0, (os.cpu_count() or 1) - os.getloadavg()[0])


def threads_option(argv: list[str]) -> int | None:
    """The value of --threads N (or --threads=N) in argv, if any."""
    for i, arg in enumerate(argv):
        value = arg.split("=", 1)[1] if arg.startswith("--threads=") else (
            argv[i + 1] if arg == "--threads" and i + 1 < len(argv) else None)
        if value is not None:
            try:
                return max(1, int(value))
            except ValueError:
                return None                                  # argparse says what is wrong
    return None


def _run_threads(argv: list[str]) -> int | None:
    """The thread count recorded in the config.json of the run that `--out DIR` names, if any.

    A matrix product sums in another order on another number of threads, so a run resumed on
    other threads is not bit for bit the run trained in one go."""
    out = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--out"),
               next((a.split("=", 1)[1] for a in argv if a.startswith("--out=")), None))
    try:
        with open(os.path.join(out, "config.json")) as f:
            value = json.load(f).get("threads")
    except (TypeError, OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else None


def configure(argv: list[str], environ=os.environ) -> str:
    """Set the thread variables for this process (see the module docstring); return one line
    saying what was chosen and why, for the command's first line of output."""
    cores = os.cpu_count() or 1
    asked = threads_option(argv)
    if asked is not None:
        n, why = asked, "--threads"
    elif "--resume" in argv and _run_threads(argv) is not None:
        n, why = _run_threads(argv), "the run's own, so that it resumes bit for bit"
    elif "OPENBLAS_NUM_THREADS" in environ:
        try:
            n, why = max(1, int(environ["OPENBLAS_NUM_THREADS"])), "OPENBLAS_NUM_THREADS"
        except ValueError:
            n, why = 1, "OPENBLAS_NUM_THREADS (not a number)"
    else:
        free = free_cores()
        n, why = max(1, min(cores, int(free + 0.5))), f"{free:.1f} of {cores} cores free"
    for name in BLAS_VARIABLES:
        environ[name] = str(n)
    environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
    environ.setdefault("NPVAE_THREADS", str(n))
    return f"{n} ({why}; choose with --threads N or OPENBLAS_NUM_THREADS)"
