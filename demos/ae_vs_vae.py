"""Demo 1: autoencoder versus VAE, the same 784-400-20 network trained both ways.

The study note's central claim: a plain autoencoder overfits its embedding. Its decoder has only ever
seen the points its training images map to, so a step away from them, or a random point,
decodes to nonsense. A VAE trains its decoder on a whole cloud around every point, so the
neighbourhood of a code, and draws from N(0, I), decode to digits.

What it draws and measures:
  ae_vs_vae.png            test images, both reconstructions, and decodes of random codes
  ae_vs_vae_steps.png      decodes at growing distances from training images' codes
  ae_vs_vae_breakdown.png  how far from any training image those decodes are, per distance
  ae_vs_vae_numbers.png    the numbers: reconstruction error, and how digit-like random decodes are

"Digit-like" is measured two ways: the distance from a decode to its nearest training image
(mean squared pixel difference, over a subset of the training set), and, when npvae.evaluate is
available, a digit classifier's confidence and the spread of the digits it sees. Neither is
perfect: a blurry image sits closer (in squared pixels) to its nearest training image than a sharp
one, which flatters the VAE's smoother decodes, and a classifier can be confident about a scribble.

    python demos/ae_vs_vae.py [--out DIR] [--quick] [--runs DIR] [--seed N]
"""

from __future__ import annotations

import numpy as np

import _common as C
from npvae import plots

# Distances from a training code, in code standard deviations: the standard deviation of the model's
# training codes in each latent dimension (see `step`).
DISTANCES = np.array([0, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 5, 6, 8])


def step(z: np.ndarray, spread: np.ndarray, u: np.ndarray, d: float) -> np.ndarray:
    """Move codes z (N, Z) by d along directions u (N, Z) (unit vectors), scaled per dimension by
    the spread (Z,) of the model's codes: z + d * spread * u. An AE's codes have an arbitrary
    scale, so each model's distance is measured in its own units: d = 1 is one standard
    deviation of the codes (a Mahalanobis distance of exactly d)."""
    return z + d * spread * u


def crossing(x: np.ndarray, y: list[float], level: float) -> str:
    """Where the curve y(x) first rises above `level` (linear interpolation), as text."""
    y = np.asarray(y)
    above = np.flatnonzero(y > level)
    if len(above) == 0:
        return f"never (d <= {x[-1]:g})"
    k = above[0]
    if k == 0:
        return f"{x[0]:g}"
    return f"{x[k - 1] + (level - y[k - 1]) / (y[k] - y[k - 1]) * (x[k] - x[k - 1]):.1f}"


def main(argv: list[str] | None = None) -> None:
    args = C.parse_args(__doc__, argv)
    quick, rng = args.quick, args.rng
    ae, _ = C.get_run(C.AE_20, args.runs, quick)
    vae, _ = C.get_run(C.VAE_20, args.runs, quick)
    models = {"AE": ae, "VAE": vae}
    x_test, y_test = C.load_split("test", quick)
    nearest = C.NearestTraining(quick)
    clf = C.get_classifier(quick)
    if clf is not None:
        from npvae import evaluate
    n_samples = 200 if quick else 1000
    n_starts = 50 if quick else 300

    # -- reconstructions ----------------------------------------------------------------------
    C.heading("Reconstructions of test images (both models should do well)")
    ref_dist, _ = nearest(x_test[:n_samples])
    print(f"  reference: a real test image is {ref_dist.mean():.4f} (mean squared pixel difference) "
          f"from its nearest training image")
    numbers = {"nearest": {"test images": ref_dist.mean()}, "confidence": {}, "recon": {}}
    if clf is not None:
        real = C.classify(clf, x_test[:n_samples], y_test[:n_samples])
        numbers["confidence"]["test images"] = real["confidence"]
    recons = {}
    for name, m in models.items():
        recons[name] = C.decode(m, C.codes_of(m, x_test))
        err = float(np.mean((recons[name] - x_test) ** 2))
        dist, _ = nearest(recons[name][:n_samples])
        numbers["recon"][name] = err
        numbers["nearest"][f"{name} recon."] = dist.mean()
        line = (f"  {name}: reconstruction error {err:.4f} per pixel ({784 * err:.2f} per image, the L2 loss); "
                f"nearest training image {dist.mean():.4f}")
        if clf is not None:
            numbers["confidence"][f"{name} recon."] = C.classify(clf, recons[name][:n_samples])["confidence"]
            line += (f"; classifier accuracy on reconstructions "
                     f"{100 * evaluate.reconstruction_accuracy(m, clf, x_test, y_test):.1f} %")
        print(line)

    # -- random codes -------------------------------------------------------------------------
    C.heading(f"Decodes of random codes ({n_samples} each)")
    train_codes = {name: C.codes_of(m, nearest.x) for name, m in models.items()}
    for name, codes in train_codes.items():
        print(f"  {name} codes of training images: mean norm {np.linalg.norm(codes, axis=1).mean():.2f}, "
              f"per-dimension std from {codes.std(0).min():.2f} to {codes.std(0).max():.2f} "
              f"(a draw of N(0, I) has norm about {np.sqrt(codes.shape[1]):.2f}, std 1)")
    eps = rng.standard_normal((n_samples, vae.latent_dim)).astype(np.float32)
    fitted_mean, fitted_std = train_codes["AE"].mean(0), train_codes["AE"].std(0)
    samples = {
        "AE, z ~ N(0, I)": C.decode(ae, eps),
        "AE, z ~ fitted Gaussian": C.decode(ae, fitted_mean + fitted_std * eps),
        "VAE, z ~ N(0, I)": C.decode(vae, eps),
    }
    for name, images in samples.items():
        dist, _ = nearest(images)
        numbers["nearest"][name] = dist.mean()
        line = f"  {name:24s}: nearest training image {dist.mean():.4f}"
        if clf is not None:
            c = C.classify(clf, images)
            numbers["confidence"][name] = c["confidence"]
            line += (f"; classifier confidence {c['confidence']:.3f} (sure, > 0.9, of {100 * c['sure']:.0f} %), "
                     f"class entropy {c['class_entropy']:.2f} nats (ten digits equally often: 2.30), "
                     f"digits 0-9 seen {np.bincount(c['pred'], minlength=10).tolist()}")
        print(line)
    if clf is not None:
        n_q = 2000 if quick else 10000
        print(f"  npvae.evaluate.sample_quality ({n_q:,} fresh draws z ~ N(0, I) each, as `npvae evaluate` reports):")
        for name, m in models.items():
            q = evaluate.sample_quality(m, clf, n=n_q, rng=args.seed)
            print(f"    {name}: confidence {q['confidence']:.3f}, class entropy {q['class_entropy']:.2f} nats")
    print("  ('fitted Gaussian': N(mean, diag std^2) of the AE's own training codes, a fairer probe "
          "than N(0, I), whose scale means nothing to an AE)")

    n = 12
    rows = [x_test[:n], recons["AE"][:n], recons["VAE"][:n], samples["AE, z ~ N(0, I)"][:n],
            samples["AE, z ~ fitted Gaussian"][:n], samples["VAE, z ~ N(0, I)"][:n]]
    labels = ["test images", "AE reconstructions", "VAE reconstructions", "AE: decode z ~ N(0, I)",
              "AE: z ~ Gaussian fitted\nto its own codes", "VAE: decode z ~ N(0, I)"]
    C.wrote(plots.image_rows(rows, args.out / "ae_vs_vae.png", row_labels=labels,
                             title="The same 784-400-20 network trained as an autoencoder and as a VAE: both "
                                   "reconstruct,\nbut random codes decode to digits far more often with the VAE"))

    # -- growing distances from training codes ------------------------------------------------
    C.heading(f"Decodes at growing distances from {n_starts} training images' codes")
    print("  distance d in code standard deviations (each model's own): z + d * std(codes) * u, "
          "u a random unit direction (the same u for both models)")
    u = rng.standard_normal((n_starts, vae.latent_dim))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    start_labels = nearest.y[:n_starts]
    sweep = {name: {"nearest": [], "same digit": [], "confidence": []} for name in models}
    strips = {}
    for name, m in models.items():
        z0, spread = train_codes[name][:n_starts], train_codes[name].std(0)
        strips[name] = []
        for d in DISTANCES:
            images = C.decode(m, step(z0, spread, u, d).astype(np.float32))
            strips[name].append(images[:2])
            dist, nn_label = nearest(images, exclude=np.arange(n_starts))   # not the start image itself
            sweep[name]["nearest"].append(dist.mean())
            if clf is not None:
                c = C.classify(clf, images, start_labels)
                sweep[name]["same digit"].append(c["agree"])
                sweep[name]["confidence"].append(c["confidence"])
            else:
                sweep[name]["same digit"].append(float(np.mean(nn_label == start_labels)))
    judge = "classifier" if clf is not None else "nearest training image's label"
    print(f"  {'d':>5s}  " + "  ".join(f"{name + ' nearest':>12s}  {name + ' same digit':>15s}" for name in models))
    for i, d in enumerate(DISTANCES):
        print(f"  {d:5.2f}  " + "  ".join(f"{sweep[name]['nearest'][i]:12.4f}  {sweep[name]['same digit'][i]:15.2f}"
                                          for name in models))
    print(f"  ('same digit': the fraction of decodes the {judge} calls the starting image's digit)")
    for name in models:
        print(f"  {name}: its decodes are further from the training set than real test digits are "
              f"from d = {crossing(DISTANCES, sweep[name]['nearest'], ref_dist.mean())}")

    rows, labels = [], []
    for k in range(2):
        for name in models:
            rows.append(np.stack([s[k] for s in strips[name]]))
            labels.append(f"{name}, from training\nimage {k} (a {nearest.y[k]})")
    C.wrote(plots.image_rows(rows, args.out / "ae_vs_vae_steps.png", row_labels=labels,
                             title="Decodes of a training image's code moved d code standard deviations along a random "
                                   "direction\n(columns: d = " + ", ".join(f"{d:g}" for d in DISTANCES) + ")"))
    panels = [{"title": "distance of decodes to the training set", "xlabel": "d (code standard deviations from a training code)",
               "ylabel": "mean sq. pixel distance to nearest\ntraining image",
               "series": {name: (DISTANCES, sweep[name]["nearest"]) for name in models},
               "hline": (ref_dist.mean(), "real test digits")},
              {"title": f"still the starting digit ({judge})", "xlabel": "d (code standard deviations from a training code)",
               "ylabel": "fraction of decodes", "ylim": (0, 1.02),
               "series": {name: (DISTANCES, sweep[name]["same digit"]) for name in models}}]
    if clf is not None:
        panels.append({"title": "classifier confidence", "xlabel": "d (code standard deviations from a training code)",
                       "ylabel": "mean max softmax probability", "ylim": (0, 1.02),
                       "series": {name: (DISTANCES, sweep[name]["confidence"]) for name in models}})
    C.wrote(plots.line_chart(panels, args.out / "ae_vs_vae_breakdown.png",
                             title="Stepping away from a training image's code: where does each decoder break down?"))

    # -- the numbers in one figure -------------------------------------------------------------
    grey, ae_c, vae_c = "0.6", "C0", "C1"
    colour = lambda k: grey if k.startswith("test") else ae_c if k.startswith("AE") else vae_c  # noqa: E731
    panels = [{"title": "reconstruction error (test images)", "ylabel": "mean squared pixel error",
               "values": numbers["recon"], "colors": [ae_c, vae_c]},
              {"title": "distance to the nearest training image\n(lower: more like a real digit)",
               "ylabel": "mean squared pixel distance", "values": numbers["nearest"],
               "colors": [colour(k) for k in numbers["nearest"]]}]
    if clf is not None:
        panels.append({"title": "digit classifier's confidence\n(higher: more like a digit)",
                       "ylabel": "mean max softmax probability", "values": numbers["confidence"],
                       "colors": [colour(k) for k in numbers["confidence"]]})
    C.wrote(plots.bar_panels(panels, args.out / "ae_vs_vae_numbers.png",
                             title="Autoencoder (blue) versus VAE (orange): reconstructions and decodes of random codes"))
    C.done(args)


if __name__ == "__main__":
    main()
