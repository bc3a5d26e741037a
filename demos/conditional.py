"""Demo: conditional VAEs, drawing the digit you ask for.

The study note moves a point from one cloud to another to change a property on purpose. A
conditional VAE (npvae.CVAE) makes the digit a control: the label says which digit, the code z
how it is written. We train it like `npvae train` (784-400-20, L2, 10 epochs; `npvae train
--model cvae`) and set it against the study note's unconditional VAE (`npvae train`):

* how often the evaluation's digit classifier reads a conditional sample as the digit asked for
  (1,000 samples z ~ N(0, I) per digit), against the unconditional VAE's samples assigned to
  their nearest class centre (the mean code mu of the training images of each digit): for the
  VAE, "asking for a 7" means drawing z ~ N(0, I) until the nearest centre is the 7s';
* the test ELBO of each (10 draws of eps per image; the CVAE's bounds log p(x | y), the VAE's log p(x)).

What it draws and measures:
  conditional_style_grid.png  ten rows (digits 0-9), one z per column shared by all rows
  conditional_analogy.png     a test image encoded with its own label, decoded with every label
  conditional_accuracy.png    per digit: the fraction of samples read as the digit asked for
  conditional.json            the numbers

    python demos/conditional.py [--out DIR] [--quick] [--runs DIR] [--seed N]
"""

from __future__ import annotations

import json
import time

import numpy as np

import _common as C
from npvae import evaluate, figures, plots
from npvae.classifier import get_classifier

CVAE_20 = {"model": "cvae"}                     # `npvae train --model cvae`: 784-400-20, L2 + KL, 10 epochs
N_PER_DIGIT = {False: 1000, True: 100}
MAX_DRAWS = 5_000_000                           # the VAE's draws z ~ N(0, I) looked through, at most


def nearest_centre_samples(vae, centres: np.ndarray, n_per_digit: int, rng: np.random.Generator,
                           batch: int = 20000) -> tuple[np.ndarray, np.ndarray, int]:
    """Draw z ~ N(0, I) until each class centre (C, Z) is the nearest one to n_per_digit draws.

    Returns (z (C * n, Z) grouped by class, the class of each, draws made). A class that is the
    nearest to fewer draws in MAX_DRAWS keeps those it got."""
    kept = [[] for _ in centres]                # per class: arrays of draws
    counts = np.zeros(len(centres), dtype=int)
    drawn = 0
    while drawn < MAX_DRAWS and counts.min() < n_per_digit:
        z = rng.standard_normal((batch, vae.latent_dim)).astype(vae.dtype)
        drawn += batch
        d2 = (z ** 2).sum(1)[:, None] - 2 * z @ centres.T + (centres ** 2).sum(1)[None]     # (batch, C)
        nearest = d2.argmin(axis=1)
        for c in range(len(centres)):
            take = z[nearest == c][:n_per_digit - counts[c]]
            kept[c].append(take)
            counts[c] += len(take)
    zs = [np.concatenate(k) if k else np.empty((0, vae.latent_dim), vae.dtype) for k in kept]
    return np.concatenate(zs), np.repeat(np.arange(len(centres)), [len(z) for z in zs]), drawn


def main(argv: list[str] | None = None) -> None:
    args = C.parse_args(__doc__, argv)
    if args.quick and args.out.resolve() == C.FIGURES.resolve():
        args.out = args.runs / "quick-figures"          # quick runs never overwrite the committed figures
        args.out.mkdir(parents=True, exist_ok=True)
    quick, n_per_digit = args.quick, N_PER_DIGIT[args.quick]
    cvae, cvae_history = C.get_run(CVAE_20, args.runs, quick)
    vae, vae_history = C.get_run(C.VAE_20, args.runs, quick)
    x_train, y_train = C.load_split("train", quick)
    x_test, y_test = C.load_split("test", quick)
    seeds = np.random.SeedSequence(args.seed).spawn(5)

    C.heading("Figures")
    C.wrote(figures.figure_style_grid(cvae, args.out, np.random.default_rng(seeds[0]), name="conditional_style_grid.png"))
    C.wrote(figures.figure_analogy(cvae, x_test, y_test, args.out, name="conditional_analogy.png"))

    C.heading(f"Samples read as the digit asked for ({n_per_digit:,} per digit)")
    clf = get_classifier()
    start = time.perf_counter()
    cond = evaluate.conditional_sample_accuracy(cvae, clf, n_per_digit, rng=np.random.default_rng(seeds[1]))
    cvae_seconds = time.perf_counter() - start
    start = time.perf_counter()
    centres = np.stack([vae.codes(x_train[y_train == d]).mean(axis=0) for d in range(10)])
    z, asked, drawn = nearest_centre_samples(vae, centres, n_per_digit, np.random.default_rng(seeds[2]))
    read = clf.predict(C.decode(vae, z))
    vae_per = [float(np.mean(read[asked == d] == d)) if np.any(asked == d) else float("nan") for d in range(10)]
    vae_counts = np.bincount(asked, minlength=10).tolist()
    vae_overall = float(np.mean(read == asked))
    vae_seconds = time.perf_counter() - start
    print(f"  classifier: {clf!r}")
    print(f"  {'digit':>6s}  {'CVAE':>7s}  {'VAE, nearest centre':>20s}")
    for d in range(10):
        print(f"  {d:6d}  {100 * cond['per_class'][d]:6.1f}%  {100 * vae_per[d]:19.1f}%")
    print(f"  {'all':>6s}  {100 * cond['overall']:6.1f}%  {100 * vae_overall:19.1f}%")
    print(f"  (the VAE: {drawn:,} draws of z ~ N(0, I) to find {n_per_digit:,} nearest to each centre"
          + ("" if min(vae_counts) >= n_per_digit else f"; found only {vae_counts}") + ")")
    C.wrote(plots.bar_panels([
        {"values": {**{str(d): 100 * cond["per_class"][d] for d in range(10)}, "all": 100 * cond["overall"]},
         "title": "CVAE: z ~ N(0, I) decoded with the label", "ylabel": "% read as the digit asked for",
         "ylim": (0, 108)},
        {"values": {**{str(d): 100 * np.nan_to_num(vae_per[d]) for d in range(10)}, "all": 100 * vae_overall},
         "title": "VAE: z ~ N(0, I), nearest class centre", "ylabel": "% read as that centre's digit",
         "ylim": (0, 108)}],
        args.out / "conditional_accuracy.png",
        title=f"Samples the digit classifier reads as the digit asked for, {n_per_digit:,} per digit"))

    C.heading("Test ELBO (10 draws of eps per image)")
    start = time.perf_counter()
    e_cvae = evaluate.elbo(cvae, x_test, n_draws=10, rng=np.random.default_rng(seeds[3]), y=y_test)
    e_vae = evaluate.elbo(vae, x_test, n_draws=10, rng=np.random.default_rng(seeds[4]))
    elbo_seconds = time.perf_counter() - start
    for name, e in (("CVAE, -ELBO of log p(x | y)", e_cvae), ("VAE,  -ELBO of log p(x)", e_vae)):
        print(f"  {name}: {e['neg_elbo']:.3f} +- {e['neg_elbo_std_error']:.3f} "
              f"(recon {e['recon']:.3f} + KL {e['kl']:.3f})")

    numbers = {
        "quick": quick, "n_per_digit": n_per_digit, "classifier": repr(clf),
        "cvae_read_as_asked": {"per_digit": cond["per_class"], "overall": cond["overall"]},
        "vae_nearest_centre_read_as_asked": {"per_digit": vae_per, "overall": vae_overall,
                                             "samples_per_digit": vae_counts, "draws": drawn},
        "test_neg_elbo": {"cvae": e_cvae, "vae": e_vae, "n_test": int(len(x_test))},
        "epochs": {"cvae": len(cvae_history), "vae": len(vae_history)},
        "train_seconds": {"cvae": sum(r["seconds"] for r in cvae_history),
                          "vae": sum(r["seconds"] for r in vae_history)},
        "measure_seconds": {"cvae_samples": cvae_seconds, "vae_samples": vae_seconds, "elbo": elbo_seconds},
    }
    path = args.out / "conditional.json"
    path.write_text(json.dumps(numbers, indent=1) + "\n")
    C.wrote(path)
    C.done(args)


if __name__ == "__main__":
    main()
