"""Demo 4: the latent space, VAE versus autoencoder.

The study note: the KL term pulls every cloud toward N(0, I), so a VAE packs its codes into one round
cloud around the origin, where any point decodes to something; a plain autoencoder puts its
codes wherever it likes, an irregular spread with empty gaps its decoder never learned.

What it draws and measures:
  latent_vae.png / latent_ae.png            the test set in a 2-D latent space, coloured by digit
  manifold_vae.png / manifold_ae.png        a 20 x 20 grid of decodes over Gaussian quantiles of
                                            the latent plane (for the AE, of a Gaussian fitted to
                                            its codes: N(0, I) means nothing to it)
  latent_pca_vae.png / latent_pca_ae.png    the 20-D models' test codes projected on their two
                                            principal axes (PCA with NumPy's SVD)

    python demos/latent_space.py [--out DIR] [--quick] [--runs DIR] [--seed N]
"""

from __future__ import annotations

import numpy as np

import _common as C
from npvae import plots

GRID = 20
CHI2_2_95 = -2 * np.log(0.05)      # P(|z|^2 <= this) = 0.95 for z ~ N(0, I) in 2-D (chi-square, 2 dof)


def knn_accuracy(train_codes, train_labels, codes, labels, k: int = 5) -> float:
    """How well the codes alone tell the digits apart: a k-nearest-neighbour vote in latent space."""
    correct = 0
    for s in range(0, len(codes), 1000):
        c = codes[s:s + 1000]
        d2 = (c ** 2).sum(1)[:, None] + (train_codes ** 2).sum(1)[None] - 2 * c @ train_codes.T   # (n, M)
        votes = train_labels[np.argpartition(d2, k, axis=1)[:, :k]]                              # (n, k)
        pred = np.array([np.bincount(v, minlength=10).argmax() for v in votes])
        correct += int(np.sum(pred == labels[s:s + 1000]))
    return correct / len(codes)


def main(argv: list[str] | None = None) -> None:
    args = C.parse_args(__doc__, argv)
    quick = args.quick
    models2 = {"VAE": C.get_run(C.VAE_2, args.runs, quick)[0], "AE": C.get_run(C.AE_2, args.runs, quick)[0]}
    x_test, y_test = C.load_split("test", quick)
    nearest = C.NearestTraining(quick)
    clf = C.get_classifier(quick)
    n_ref = 2000 if quick else 5000
    ref_x, ref_y = nearest.x[:n_ref], nearest.y[:n_ref]

    C.heading("2-D latent spaces: where the test images land")
    q = C.inverse_normal_cdf((np.arange(GRID) + 0.5) / GRID)           # Phi^-1 of 0.025, 0.075, ..., 0.975
    print(f"  Gaussian quantiles of the grid: Phi^-1(p) for p = 0.025, 0.075, ..., 0.975 "
          f"-> {q[0]:.3f} ... {q[-1]:.3f}")
    for name, m in models2.items():
        z = C.codes_of(m, x_test)
        r2 = (z ** 2).sum(1)
        print(f"  {name}: codes mean ({z[:, 0].mean():+.2f}, {z[:, 1].mean():+.2f}), std ({z[:, 0].std():.2f}, "
              f"{z[:, 1].std():.2f}), range [{z.min():.1f}, {z.max():.1f}]; {100 * np.mean(r2 <= CHI2_2_95):.0f} % "
              f"inside the circle holding 95 % of N(0, I); 5-NN digit accuracy from the codes "
              f"{100 * knn_accuracy(C.codes_of(m, ref_x), ref_y, z, y_test):.1f} %")
        C.wrote(plots.latent_scatter(
            z, y_test, args.out / f"latent_{name.lower()}.png", legend_title="digit",
            title=f"{name} with a 2-D latent space: the {len(z):,} test images' codes"
                  + (" (mu)" if name == "VAE" else "")))

    C.heading(f"The manifold: a {GRID} x {GRID} grid of decodes over Gaussian quantiles")
    for name, m in models2.items():
        if name == "VAE":
            centre, scale, what = np.zeros(2), np.ones(2), "z = Phi^-1(p) per axis, the prior's quantiles"
        else:
            z = C.codes_of(m, nearest.x)
            centre, scale = z.mean(0), z.std(0)
            what = "z = mean + std * Phi^-1(p) per axis, quantiles of a Gaussian fitted to its codes"
        unit = np.stack([np.tile(q, GRID), np.repeat(q[::-1], GRID)], axis=1)   # row-major, top row = high z2
        images = m.decode((centre + scale * unit).astype(np.float32))
        z1_values, z2_values = centre[0] + scale[0] * q, centre[1] + scale[1] * q[::-1]   # columns; rows, top first
        dist, _ = nearest(images)
        line = f"  {name}: {what}; mean distance to the nearest training image {dist.mean():.4f}"
        if clf is not None:
            c = C.classify(clf, images)
            conf = clf.predict_proba(images).max(1)
            line += (f"; classifier confidence {c['confidence']:.3f} ({100 * np.mean(conf > 0.9):.0f} % of the "
                     f"cells above 0.9), {len(set(c['pred'].tolist()))} different digits")
        print(line)
        C.wrote(plots.latent_manifold(
            images, args.out / f"manifold_{name.lower()}.png", grid_size=GRID,
            z1_values=z1_values, z2_values=z2_values,
            title=f"{name}: decodes of a {GRID} x {GRID} grid, "
                  + ("z = Φ⁻¹(p), p = 0.025 … 0.975 per axis (z1 →, z2 ↑)" if name == "VAE" else
                     "z = mean + std · Φ⁻¹(p) of its codes, p = 0.025 … 0.975 (z1 →, z2 ↑)")))

    C.heading("20-D latent spaces, projected on their two principal axes (PCA by SVD)")
    for name, overrides in (("VAE", C.VAE_20), ("AE", C.AE_20)):
        m = C.get_run(overrides, args.runs, quick)[0]
        z = C.codes_of(m, x_test)
        projected, _, explained = C.pca_2d(z)
        var = z.var(0)
        print(f"  {name} 784-400-20: the first two axes carry {100 * explained.sum():.0f} % of the variance "
              f"({100 * explained[0]:.0f} + {100 * explained[1]:.0f}); {int(np.sum(var > 0.01))} of 20 dimensions "
              f"vary across the data (variance > 0.01); 5-NN digit accuracy from the 20-D codes "
              f"{100 * knn_accuracy(C.codes_of(m, ref_x), ref_y, z, y_test):.1f} %")
        C.wrote(plots.latent_scatter(
            projected, y_test, args.out / f"latent_pca_{name.lower()}.png", legend_title="digit",
            xlabel="PC1 (first principal axis)", ylabel="PC2 (second principal axis)", max_points=6000,
            title=f"{name} with a 20-D latent space: test codes on their two principal axes\n"
                  f"(PCA by SVD, {100 * explained.sum():.0f} % of the variance; {min(6000, len(z)):,} "
                  f"random test images shown)"))
    C.done(args)


if __name__ == "__main__":
    main()
