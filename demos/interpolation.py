"""Demo 3: interpolation between two test images, linear and spherical, autoencoder and VAE.

The study note: a trained VAE is general enough to draw pictures that never existed, by decoding points
at other coordinates of the space. The simplest such points lie on the path between the codes of
two images. A straight line (lerp) cuts through the middle of the code cloud, where in many
dimensions few codes lie (for N(0, I) in 20-D almost all mass is near radius sqrt(20)); a
spherical path (slerp) keeps the radius. The plain autoencoder and the VAE share one architecture.

What it draws and measures:
  interpolation.png        for a few pairs of test images: AE lerp, AE slerp, VAE lerp, VAE slerp
  interpolation_paths.png  along the path, averaged over many pairs: the distance of the decodes to
                           the nearest training image, and the norm of the code

Slerp goes around each model's mean code (the origin for the VAE, whose codes are centred there;
for the AE, the centre of its codes).

    python demos/interpolation.py [--out DIR] [--quick] [--runs DIR] [--seed N]
"""

from __future__ import annotations

import numpy as np

import _common as C
from npvae import plots

STEPS = 10
PAIRS = ((0, 1), (2, 3), (4, 7))       # test image indices: a 7 and a 2, a 1 and a 0, a 4 and a 9


def paths(a: np.ndarray, b: np.ndarray, centre: np.ndarray, t: np.ndarray) -> dict[str, np.ndarray]:
    """Codes along both paths from a (N, Z) to b (N, Z): {"lerp": (N, T, Z), "slerp": (N, T, Z)}."""
    lerp = (1 - t)[None, :, None] * a[:, None, :] + t[None, :, None] * b[:, None, :]
    slerp = C.slerp(a - centre, b - centre, t) + centre
    return {"lerp": lerp, "slerp": slerp}


def main(argv: list[str] | None = None) -> None:
    args = C.parse_args(__doc__, argv)
    quick, rng = args.quick, args.rng
    models = {"AE": C.get_run(C.AE_20, args.runs, quick)[0], "VAE": C.get_run(C.VAE_20, args.runs, quick)[0]}
    x_test, y_test = C.load_split("test", quick)
    nearest = C.NearestTraining(quick)
    clf = C.get_classifier(quick)
    t = np.linspace(0, 1, STEPS)

    grids, labels = [], []
    centres = {name: C.codes_of(m, nearest.x).mean(0) for name, m in models.items()}
    for i, j in PAIRS:
        for name, m in models.items():
            codes = C.codes_of(m, x_test[[i, j]])
            for kind, z in paths(codes[:1], codes[1:], centres[name], t).items():
                grids.append(m.decode(z[0].astype(np.float32)))
                labels.append(f"{name} {kind}: {y_test[i]} → {y_test[j]}")
    C.wrote(plots.interpolation_grid(np.stack(grids), args.out / "interpolation.png", row_labels=labels,
                                     title="Interpolating between the codes of two test images: straight line "
                                           "(lerp) and great circle (slerp),\nautoencoder (AE) and VAE"))

    # -- numbers over many pairs ---------------------------------------------------------------
    n = 60 if quick else 300
    first = rng.choice(len(x_test), size=3 * n, replace=False)
    a_idx, b_idx = first[:n], first[n:2 * n]
    keep = y_test[a_idx] != y_test[b_idx]
    a_idx, b_idx = a_idx[keep], b_idx[keep]
    C.heading(f"Along the paths between {len(a_idx)} random pairs of test images of different digits "
              f"(of {n} pairs drawn)")
    curves = {"nearest": {}, "norm": {}, "confidence": {}}
    print(f"  {'':10s} {'nearest training image':>24s} {'(worst point)':>14s} {'code norm at t=0.5':>19s}"
          + (f" {'classifier confidence':>22s}" if clf is not None else ""))
    for name, m in models.items():
        a, b = C.codes_of(m, x_test[a_idx]), C.codes_of(m, x_test[b_idx])
        middle = paths(a, b, centres[name], np.array([0.5]))       # t = 0.5 exactly (not one of the STEPS)
        for kind, z in paths(a, b, centres[name], t).items():
            images = C.decode(m, z.reshape(-1, z.shape[-1]).astype(np.float32))
            dist = nearest(images)[0].reshape(len(a), STEPS)
            radius = np.linalg.norm(a - centres[name], axis=1)
            rel_norm = np.linalg.norm(z - centres[name], axis=2) / radius[:, None]
            rel_middle = np.linalg.norm(middle[kind][:, 0] - centres[name], axis=1) / radius
            key = f"{name} {kind}"
            style = {"color": "C0" if name == "AE" else "C1", "linestyle": "-" if kind == "lerp" else "--"}
            curves["nearest"][key] = (t, dist.mean(0), style)
            curves["norm"][key] = (t, rel_norm.mean(0), style)
            line = (f"  {key:10s} {dist[:, 1:-1].mean():24.4f} {dist.max(1).mean():14.4f} "
                    f"{rel_middle.mean():19.2f}")
            if clf is not None:
                conf = clf.predict_proba(images).max(1).reshape(len(a), STEPS)
                curves["confidence"][key] = (t, conf.mean(0), style)
                line += f" {conf[:, 1:-1].mean():22.3f}"
            print(line)
    print("  (nearest: mean squared pixel distance of the decodes strictly between the endpoints to their "
          "nearest training image; worst point: the largest along each path, averaged; code norm: "
          "|z - centre| relative to the first endpoint's)")
    panels = [{"title": "distance of decodes to the training set", "xlabel": "t (0: first image, 1: second)",
               "ylabel": "mean sq. pixel distance to nearest\ntraining image", "series": curves["nearest"]},
              {"title": "size of the code along the path", "xlabel": "t (0: first image, 1: second)",
               "ylabel": "|z - centre| / |z(0) - centre|", "series": curves["norm"]}]
    if clf is not None:
        panels.append({"title": "digit classifier's confidence", "xlabel": "t (0: first image, 1: second)",
                       "ylabel": "mean max softmax probability", "series": curves["confidence"]})
    C.wrote(plots.line_chart(panels, args.out / "interpolation_paths.png",
                             title=f"Along the paths between {len(a_idx)} pairs of test images (averages)"))
    C.done(args)


if __name__ == "__main__":
    main()
