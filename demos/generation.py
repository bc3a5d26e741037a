"""Demo 6: generation, drawing digits that never existed.

The study note: a trained VAE is general enough to draw new pictures by decoding points it was never
given. The KL term made N(0, I) the place where the codes live, so a draw z ~ N(0, I) is a new
digit. Sampling with a smaller spread, z ~ N(0, T^2 I) for a "temperature" T < 1, stays nearer
the centre; the usual expectation is cleaner, more typical, less varied digits. We measure it.
(With this L2-trained VAE, a lower temperature gives less varied but also fainter, blurrier
digits: near z = 0 the clouds of many different images overlap, and the decoder draws their
average. See the numbers it prints.)

What it draws and measures:
  generation.png              a 10 x 10 grid of decodes of z ~ N(0, I) (the study note's 20-D VAE)
  generation_temperature.png  the same draws eps decoded at z = T * eps for several temperatures T
  generation_numbers.png      per temperature: how digit-like and how varied the samples are

    python demos/generation.py [--out DIR] [--quick] [--runs DIR] [--seed N]
"""

from __future__ import annotations

import numpy as np

import _common as C
from npvae import plots

TEMPERATURES = np.array([0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0])


def diversity(images: np.ndarray) -> float:
    """Mean squared pixel difference between two different samples (0: all the same)."""
    sq = (images ** 2).sum(1)
    d2 = sq[:, None] + sq[None] - 2 * images @ images.T
    n = len(images)
    return float((d2.sum() - np.trace(d2)) / (n * (n - 1)) / images.shape[1])


def main(argv: list[str] | None = None) -> None:
    args = C.parse_args(__doc__, argv)
    quick, rng = args.quick, args.rng
    vae, _ = C.get_run(C.VAE_20, args.runs, quick)
    x_test, _ = C.load_split("test", quick)
    nearest = C.NearestTraining(quick)
    clf = C.get_classifier(quick)

    C.wrote(plots.image_grid(vae.sample(100, rng=rng), args.out / "generation.png", ncols=10,
                             title="100 new digits: decodes of z ~ N(0, I) from the study note's VAE (784-400-20)"))

    n = 300 if quick else 1000
    eps = rng.standard_normal((n, vae.latent_dim)).astype(np.float32)
    rows = [C.decode(vae, np.float32(temp) * eps[:12]) for temp in TEMPERATURES]
    C.wrote(plots.image_rows(rows, args.out / "generation_temperature.png",
                             row_labels=[f"T = {temp:g}" for temp in TEMPERATURES],
                             title="The same 12 draws eps decoded at z = T * eps: a smaller spread T gives more "
                                   "alike,\nbut fainter and blurrier digits (T = 0: the decode of the centre z = 0)"))

    C.heading(f"{n} samples per temperature")
    ref = x_test[:n]
    real = {"nearest": nearest(ref)[0].mean(), "diversity": diversity(ref)}
    if clf is not None:
        real.update(C.classify(clf, ref))
    stats = {k: [] for k in ("nearest", "diversity", "confidence", "class_entropy")}
    header = f"  {'':14s} {'nearest training image':>22s} {'diversity':>10s}"
    print(header + (f" {'confidence':>11s} {'class entropy':>14s}  digits 0-9" if clf is not None else ""))

    def line(label, s, hist=None):
        text = f"  {label:14s} {s['nearest']:22.4f} {s['diversity']:10.4f}"
        if clf is not None:
            text += f" {s['confidence']:11.3f} {s['class_entropy']:14.2f}  {hist}"
        print(text)

    line("test images", real, np.bincount(real["pred"], minlength=10).tolist() if clf is not None else None)
    for temp in TEMPERATURES:
        images = C.decode(vae, np.float32(temp) * eps)
        s = {"nearest": nearest(images)[0].mean(), "diversity": diversity(images)}
        hist = None
        if clf is not None:
            c = C.classify(clf, images)
            s.update(confidence=c["confidence"], class_entropy=c["class_entropy"] + 0.0)   # no "-0.00"
            hist = np.bincount(c["pred"], minlength=10).tolist()
        for k, v in s.items():
            stats[k].append(v)
        line(f"T = {temp:g}", s, hist)
    print("  (nearest: mean squared pixel distance to the nearest training image; diversity: mean squared "
          "pixel difference between two samples; class entropy: of the digits the classifier sees, "
          "log 10 = 2.30 when all ten are equally common)")

    panels = [{"title": "distance to the nearest training image", "xlabel": "temperature T",
               "ylabel": "mean squared pixel distance", "series": {"samples": (TEMPERATURES, stats["nearest"])},
               "hline": (real["nearest"], "real test digits")},
              {"title": "variety: difference between two samples", "xlabel": "temperature T",
               "ylabel": "mean squared pixel difference", "series": {"samples": (TEMPERATURES, stats["diversity"])},
               "hline": (real["diversity"], "real test digits")}]
    if clf is not None:
        panels += [{"title": "digit classifier's confidence", "xlabel": "temperature T",
                    "ylabel": "mean max softmax probability", "ylim": (0, 1.02),
                    "series": {"samples": (TEMPERATURES, stats["confidence"])},
                    "hline": (real["confidence"], "real test digits")},
                   {"title": "variety of digits (entropy of the class histogram)", "xlabel": "temperature T",
                    "ylabel": "nats (log 10 = 2.30: all digits equally)", "ylim": (0, 2.4),
                    "series": {"samples": (TEMPERATURES, stats["class_entropy"])},
                    "hline": (real["class_entropy"], "real test digits")}]
    C.wrote(plots.line_chart(panels, args.out / "generation_numbers.png", ncols=2,
                             title=f"Sampling z ~ N(0, T² I) from the study note's VAE: {n} samples per temperature"))
    C.done(args)


if __name__ == "__main__":
    main()
