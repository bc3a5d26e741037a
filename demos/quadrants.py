"""Demo: completing a digit from some of its quadrants, the structured-output CVAE of Sohn, Lee and Yan (2015).

Each MNIST digit is cut into four quadrants; given 1 (the bottom-left), 2 (the left half) or 3
(all but the bottom-right) of them, predict the rest. A deterministic network (the baseline)
can only predict one image, so where the hidden part could be written in several ways it
averages them into a blur; the CVAE (npvae.cvae.StructuredCVAE) draws z from a prior network
p(z | x) and decodes one completion per draw.

The set-up, pinned by issue 16 so that the numbers compare with the paper's: pixels in [0, 1],
not binarized; the input is the image with its hidden pixels set to -1; the loss is the Bernoulli
cross-entropy of the hidden pixels. Baseline 784-500-500-784 (ReLU, sigmoid output); CVAE with a
recognition network q(z | x, y) and a prior network p(z | x), each 784-500-500 with two heads of
200, and a generation network p(y | z) 200-500-500-784. Adam 1e-3, batch 128, at most 100
epochs, early stopping with patience 3 on 10,000 validation images held out of the training set.
Reported on the 10,000 test digits, nats per image: the baseline's cross-entropy, the CVAE's
negative ELBO (10 draws of z from q) and its importance-sampled -log p(y | x) (K = 100).

What it writes:
  quadrants.json       {"1": {"baseline", "cvae_elbo", "cvae_iw"}, "2": {...}, "3": {...}}
  quadrants_N.png      per case: input, truth, the baseline's prediction, CVAE completions
  quadrants_runs.json  epochs trained and seconds of each model
  (while it runs, quadrants_partial.json holds the finished cases: run it again after a crash or
  a kill and it goes on from the first unfinished case)

    python demos/quadrants.py [--out DIR] [--quick] [--seed N]
"""

from __future__ import annotations

import json
import math
import time

import numpy as np

import _common as C
from npvae import plots
from npvae.cvae import Baseline, StructuredCVAE, quadrant_mask
from npvae.data import load_mnist_uint8, minibatch_indices, to_float, train_val_split
from npvae.optim import Adam

FULL = {"train": 60000, "val": 10000, "test": 10000, "max_epochs": 100}
QUICK = {"train": 3000, "val": 500, "test": 500, "max_epochs": 3}
HIDDEN, LATENT, LR, BATCH, PATIENCE = [500, 500], 200, 1e-3, 128, 3
ELBO_DRAWS, IW_K = 10, 100
SAMPLES_SHOWN, DIGITS_SHOWN = 5, 10


def train(model, x_train: np.ndarray, val_loss, max_epochs: int, rng: np.random.Generator, name: str) -> dict:
    """Adam on model.loss_and_grads(x); after each epoch val_loss(model); stop after PATIENCE epochs
    without a better one and keep the best parameters. Returns {epochs, best_epoch, best_val, seconds}."""
    start = time.perf_counter()
    optimizer = Adam(model.params, lr=LR)
    best, best_epoch, best_params = math.inf, 0, None
    for epoch in range(1, max_epochs + 1):
        t0 = time.perf_counter()
        for idx in minibatch_indices(len(x_train), BATCH, rng):
            _, grads = model.loss_and_grads(x_train[idx])
            optimizer.step(grads)
        val = val_loss(model)
        print(f"  {name} epoch {epoch:3d}: validation {val:8.3f}  {time.perf_counter() - t0:.1f} s", flush=True)
        if val < best:
            best, best_epoch, best_params = val, epoch, {k: p.copy() for k, p in model.params.items()}
        elif epoch - best_epoch >= PATIENCE:
            break
    for k, p in best_params.items():
        model.params[k][...] = p
    return {"epochs": epoch, "best_epoch": best_epoch, "best_val": best, "seconds": time.perf_counter() - start}


def figure(baseline: Baseline, cvae: StructuredCVAE, x: np.ndarray, y: np.ndarray, n_visible: int,
           path, rng: np.random.Generator):
    """One test digit of each class per column: input (hidden pixels grey), truth, baseline, CVAE samples."""
    cols = np.array([np.flatnonzero(y == d)[0] for d in range(DIGITS_SHOWN) if np.any(y == d)])
    xs = x[cols]
    shown_input = np.where(baseline.visible, xs, 0.5)
    rows = [shown_input, xs, np.where(baseline.visible, xs, baseline.predict(xs))]
    rows += [cvae.complete(xs, rng=rng) for _ in range(SAMPLES_SHOWN)]
    labels = ["input", "truth", "baseline"] + [f"CVAE {i + 1}" for i in range(SAMPLES_SHOWN)]
    return plots.image_rows(rows, path, row_labels=labels,
                            title=f"{n_visible} visible quadrant{'s' if n_visible > 1 else ''}: the baseline's "
                                  f"prediction and {SAMPLES_SHOWN} completions drawn by the CVAE")


def main(argv: list[str] | None = None) -> None:
    args = C.parse_args(__doc__, argv)
    if args.quick and args.out.resolve() == C.FIGURES.resolve():
        args.out = args.runs / "quick-figures"          # quick runs never overwrite the committed figures
        args.out.mkdir(parents=True, exist_ok=True)
    sizes = QUICK if args.quick else FULL
    if args.quick:                                     # the demos' usual note names their sizes, not these
        C.QUICK_NOTE = (f"  (--quick: numbers of small models, {sizes['train'] - sizes['val']:,} training images and "
                        f"at most {sizes['max_epochs']} epochs; they are not the README's)")
    images, _ = load_mnist_uint8("train")
    train_idx, val_idx = train_val_split(len(images), FULL["val"], seed=0)   # the same split at every size
    x_train = to_float(images[train_idx[:sizes["train"] - sizes["val"]]])
    x_val = to_float(images[val_idx[:sizes["val"]]])
    test_images, test_labels = load_mnist_uint8("test")
    x_test, y_test = to_float(test_images[:sizes["test"]]), test_labels[:sizes["test"]]
    print(f"{len(x_train):,} training, {len(x_val):,} validation and {len(x_test):,} test images; "
          f"at most {sizes['max_epochs']} epochs, patience {PATIENCE}")

    # Each finished case is saved at once to quadrants_partial.json, so that a run stopped by a crash
    # or a kill starts again at the first unfinished case (the full task takes hours).
    partial_path = args.out / "quadrants_partial.json"
    settings = {"quick": args.quick, "sizes": sizes, "seed": args.seed}
    partial = {"settings": settings, "results": {}, "details": {}}
    if partial_path.exists():
        earlier = json.loads(partial_path.read_text())
        if earlier.get("settings") == settings:
            partial = earlier
    results, details = partial["results"], partial["details"]
    for n_visible in (1, 2, 3):
        C.heading(f"{n_visible} visible quadrant{'s' if n_visible > 1 else ''}")
        if str(n_visible) in results and (args.out / f"quadrants_{n_visible}.png").exists():
            r = results[str(n_visible)]
            print(f"  done by an earlier run ({partial_path}): baseline {r['baseline']:.2f}, "
                  f"CVAE -ELBO {r['cvae_elbo']:.2f}, CVAE -log p(y|x) {r['cvae_iw']:.2f}", flush=True)
            continue
        seeds = np.random.SeedSequence([args.seed, n_visible]).spawn(6)
        visible = quadrant_mask(n_visible)
        baseline = Baseline(visible, 784, HIDDEN, rng=np.random.default_rng(seeds[0]))
        b_info = train(baseline, x_train, lambda m: float(m.loss_per_example(x_val).mean()),
                       sizes["max_epochs"], np.random.default_rng(seeds[1]), "baseline")
        cvae = StructuredCVAE(baseline, HIDDEN, LATENT, rng=np.random.default_rng(seeds[2]))
        c_info = train(cvae, x_train, lambda m: m.neg_elbo(x_val, 1, rng=np.random.default_rng(0)),
                       sizes["max_epochs"], np.random.default_rng(seeds[3]), "CVAE")
        t0 = time.perf_counter()
        results[str(n_visible)] = {
            "baseline": float(baseline.loss_per_example(x_test).mean()),
            "cvae_elbo": cvae.neg_elbo(x_test, ELBO_DRAWS, rng=np.random.default_rng(seeds[4])),
            "cvae_iw": float(-cvae.log_likelihood_iw(x_test, IW_K, rng=np.random.default_rng(seeds[5])).mean()),
        }
        details[str(n_visible)] = {"baseline": b_info, "cvae": c_info, "test_seconds": time.perf_counter() - t0}
        r = results[str(n_visible)]
        print(f"  test: baseline {r['baseline']:.2f}, CVAE -ELBO {r['cvae_elbo']:.2f}, CVAE -log p(y|x) {r['cvae_iw']:.2f}")
        C.wrote(figure(baseline, cvae, x_test, y_test, n_visible, args.out / f"quadrants_{n_visible}.png",
                       np.random.default_rng(args.seed)))
        tmp = partial_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(partial, indent=1) + "\n")
        tmp.replace(partial_path)

    C.heading(f"Negative conditional log-likelihood of the hidden pixels, nats per test image ({len(x_test):,} images)")
    print(f"  {'visible':>7s}  {'baseline CE':>11s}  {f'CVAE -ELBO ({ELBO_DRAWS} draws)':>22s}  {f'CVAE -log p(y|x), K={IW_K}':>22s}")
    for n_visible, r in results.items():
        print(f"  {n_visible:>7s}  {r['baseline']:11.2f}  {r['cvae_elbo']:22.2f}  {r['cvae_iw']:22.2f}")
    (args.out / "quadrants.json").write_text(json.dumps(results, indent=1) + "\n")
    C.wrote(args.out / "quadrants.json")
    (args.out / "quadrants_runs.json").write_text(json.dumps({"quick": args.quick, "sizes": sizes, **details},
                                                             indent=1) + "\n")
    C.wrote(args.out / "quadrants_runs.json")
    partial_path.unlink()
    C.done(args)


if __name__ == "__main__":
    main()
