"""Regenerate every demo figure: run all the demos, one after the other, in default mode.

    python demos/make_figures.py            # writes demos/figures/*.png (the README's pictures)
    python demos/make_figures.py --quick    # the fast versions, into runs/quick-figures (or --out DIR)
    python demos/make_figures.py --all      # and the quadrant task, which trains for hours at full size

Options are passed on to every demo (--out, --quick, --runs, --seed). The runs they train are
kept in runs/ and shared: the first demo to need a model trains it, the others reuse it. From
scratch it trains six models of 10 epochs (about half a minute each on a quiet 2-core machine,
several minutes each on a busy one) and the digit classifier of npvae.evaluate (once, cached);
once they exist, all the demos together take about a minute. On a machine shared with other
jobs, OPENBLAS_NUM_THREADS=1 can make the training several times faster.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# In an order that trains each shared run where it is first needed.
DEMOS = ("ae_vs_vae", "interpolation", "generation", "two_losses", "balance", "cloud", "latent_space",
         "moving_between_clouds", "main_job", "linear_vae", "explore", "conditional")
# Demos that train for hours at full size (the quadrant task: six networks, up to 100 epochs
# each): run only with --all, or alone (`python demos/quadrants.py`).
LONG = ("quadrants",)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if {"-h", "--help"} & set(argv):
        print(__doc__)
        return 0
    times = {}
    demos = DEMOS + LONG if "--all" in argv else DEMOS
    argv = [a for a in argv if a != "--all"]
    for name in demos:
        print(f"\n######## demos/{name}.py {' '.join(argv)}", flush=True)
        start = time.perf_counter()
        result = subprocess.run([sys.executable, str(HERE / f"{name}.py"), *argv])
        times[name] = time.perf_counter() - start
        if result.returncode != 0:
            print(f"demos/{name}.py failed (exit code {result.returncode})", file=sys.stderr)
            return result.returncode
    print("\nAll demos done:")
    for name, seconds in times.items():
        print(f"  {name:24s} {seconds:6.1f} s")
    print(f"  {'total':24s} {sum(times.values()):6.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
