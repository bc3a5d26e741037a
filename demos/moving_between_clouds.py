"""Demo 5: moving between clouds, the study note's last paragraph.

The study note: the data group into clouds that share a property; moving a point from one cloud toward
another changes that property in a targeted way. Two kinds of clouds:

* the digits. Each digit's test images form a cloud in the 2-D VAE's latent space; we take its
  centre (the mean of the images' mu), move a test image's code in a straight line toward the
  centre of another digit, and decode along the way.
* an attribute, measured from the pixels: stroke thickness, and slant. Within each digit, the
  codes of the thickest (most slanted) quarter of the test images form one cloud and the thinnest
  (most upright) quarter another; the difference of their centres is a direction. It is measured
  on digits 0-4 only, then added to the codes of digits 5-9: does it change the attribute and
  keep the digit? This uses the study note's 20-D VAE (a 2-D space has no room for both).

Figures: moving_clouds.png, moving_decodes.png, moving_switch.png, attribute_thickness.png,
attribute_slant.png, attribute_measured.png.

    python demos/moving_between_clouds.py [--out DIR] [--quick] [--runs DIR] [--seed N]
"""

from __future__ import annotations

import numpy as np

import _common as C
from npvae import plots

STEPS = 10
MOVES = ((4, 9), (1, 7), (3, 8), (0, 6), (7, 2), (5, 3))     # (from digit, toward digit) for the figure
ALPHAS = np.array([-2, -1.5, -1, -0.5, 0, 0.5, 1, 1.5, 2])   # multiples of an attribute direction
MEASURED_ON, APPLIED_TO = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)
CONTROLS = 5                                                  # random directions to compare with

_ROWS, _COLS = np.mgrid[0:28, 0:28]


def thickness(x: np.ndarray) -> np.ndarray:
    """Stroke thickness in pixels, from the image alone: 2 * area / perimeter of the ink (> 0.5).

    A stroke of width w and length L has area w * L and perimeter about 2 * L, so the ratio is w.
    The perimeter counts the edges between ink and non-ink pixels (4-neighbours). x: (N, 784).
    """
    ink = x.reshape(-1, 28, 28) > 0.5
    padded = np.pad(ink, ((0, 0), (1, 1), (1, 1)))
    edges = (np.abs(np.diff(padded.astype(np.int8), axis=1)).sum((1, 2))
             + np.abs(np.diff(padded.astype(np.int8), axis=2)).sum((1, 2)))
    return 2 * ink.sum((1, 2)) / np.maximum(edges, 1)


def slant(x: np.ndarray) -> np.ndarray:
    """Slant from the image moments: how far the ink moves right per pixel up (dx/dy).

    With the ink's intensity as weights, slant = -cov(column, row) / var(row): 0 for an upright
    digit, positive when it leans right (like /). x: (N, 784).
    """
    w = x.reshape(-1, 28, 28)
    total = w.sum((1, 2)) + 1e-8
    mr = (w * _ROWS).sum((1, 2)) / total
    mc = (w * _COLS).sum((1, 2)) / total
    dr, dc = _ROWS[None] - mr[:, None, None], _COLS[None] - mc[:, None, None]
    return -(w * dr * dc).sum((1, 2)) / (w * dr * dr).sum((1, 2))


ATTRIBUTES = {"thickness": (thickness, "stroke thickness (pixels)", "thin", "thick"),
              "slant": (slant, "slant (dx/dy, > 0 leans right)", "left-leaning", "right-leaning")}


def attribute_direction(codes, values, labels, digits) -> tuple[np.ndarray, float, float]:
    """Mean over `digits` of (mean code of the top quarter - mean code of the bottom quarter) of
    `values` within that digit. Returns (direction (Z,), mean value of the bottom quarters, of the top)."""
    diffs, low, high = [], [], []
    for d in digits:
        idx = np.flatnonzero(labels == d)
        lo, hi = np.quantile(values[idx], [0.25, 0.75])
        bottom, top = idx[values[idx] <= lo], idx[values[idx] >= hi]
        diffs.append(codes[top].mean(0) - codes[bottom].mean(0))
        low.append(values[bottom].mean())
        high.append(values[top].mean())
    return np.mean(diffs, 0), float(np.mean(low)), float(np.mean(high))


def digit_of(clf, nearest, images):
    """The digit each image shows: the classifier's call, or the label of its nearest training image."""
    return clf.predict_proba(images).argmax(1) if clf is not None else nearest(images)[1]


def main(argv: list[str] | None = None) -> None:
    args = C.parse_args(__doc__, argv)
    quick, rng = args.quick, args.rng
    vae2, _ = C.get_run(C.VAE_2, args.runs, quick)
    vae20, _ = C.get_run(C.VAE_20, args.runs, quick)
    x_test, y_test = C.load_split("test", quick)
    nearest = C.NearestTraining(quick)
    clf = C.get_classifier(quick)
    judge = "the digit classifier" if clf is not None else "the label of the nearest training image"
    t = np.linspace(0, 1, STEPS)

    # -- the digits' clouds --------------------------------------------------------------------
    C.heading("The centre of each digit's cloud: the mean code (mu) of its test images")
    models = {"2-D VAE": vae2, "20-D VAE": vae20}
    mus = {name: C.codes_of(m, x_test) for name, m in models.items()}
    centres = {name: np.stack([mu[y_test == d].mean(0) for d in range(10)]) for name, mu in mus.items()}  # (10, Z)
    for name, m in models.items():
        read = digit_of(clf, nearest, m.decode(centres[name].astype(np.float32)))
        print(f"  {name}: the centres' decodes are read as {read.tolist()} for digits 0-9: "
              f"{int(np.sum(read == np.arange(10)))} of 10 show their own digit ({judge})")
    c2 = centres["2-D VAE"]
    print("  2-D centres: " + ", ".join(f"{d}: ({c2[d, 0]:+.2f}, {c2[d, 1]:+.2f})" for d in range(10)))

    starts = [int(np.flatnonzero(y_test == a)[0]) for a, _ in MOVES]
    moves = {name: [(1 - t)[:, None] * mus[name][i] + t[:, None] * centres[name][b]
                    for i, (_, b) in zip(starts, MOVES)] for name in models}
    C.wrote(plots.latent_scatter(mus["2-D VAE"], y_test, args.out / "moving_clouds.png",
                                 points=[(c2[d], str(d)) for d in range(10)],
                                 points_label="centre of a digit's cloud", paths=moves["2-D VAE"],
                                 legend_title="digit",
                                 title="2-D VAE: the centre of each digit's cloud (stars), and test images' codes\n"
                                       "moved in a straight line toward another digit's centre (arrows)"))
    grids, labels = [], []
    for (a, b), k in zip(MOVES, range(len(MOVES))):
        for name, m in models.items():
            grids.append(m.decode(moves[name][k].astype(np.float32)))
            labels.append(f"{name}: a {a} → centre of {b}")
    C.wrote(plots.interpolation_grid(
        np.stack(grids), args.out / "moving_decodes.png", row_labels=labels,
        title="A test image's code (t = 0) moved in a straight line to another digit's centre (t = 1):\n"
              "the 2-D VAE (the arrows of moving_clouds.png) and the study note's 20-D VAE"))

    n = 200 if quick else 1000
    C.heading(f"Moving {n} test images toward the centre of a random other digit")
    idx = rng.choice(len(x_test), size=n, replace=False)
    src = y_test[idx]
    dst = (src + rng.integers(1, 10, size=n)) % 10                         # a different digit
    panels = []
    for name, m in models.items():
        mu, cen = mus[name], centres[name]
        z = (1 - t)[None, :, None] * mu[idx][:, None] + t[None, :, None] * cen[dst][:, None]   # (n, T, Z)
        seen = digit_of(clf, nearest, C.decode(m, z.reshape(-1, z.shape[-1]).astype(np.float32))).reshape(n, STEPS)
        p_src, p_dst = (seen == src[:, None]).mean(0), (seen == dst[:, None]).mean(0)
        half = t[np.argmax(p_dst >= 0.5)] if np.any(p_dst >= 0.5) else float("nan")
        pad = " " * len(name)
        print(f"  {name}: read as the starting digit " + " ".join(f"{100 * v:3.0f}%" for v in p_src))
        print(f"  {pad}  read as the target digit   " + " ".join(f"{100 * v:3.0f}%" for v in p_dst))
        print(f"  {pad}  (t = 0, 0.11, ..., 1); half the decodes show the target from t = {half:.2f}; "
              f"{100 * p_dst[-1]:.0f} % at its centre")
        panels.append({"title": name, "xlabel": "t (0: the test image's code, 1: the other digit's centre)",
                       "ylabel": f"fraction of decodes ({judge})", "ylim": (0, 1.02),
                       "series": {"the starting digit": (t, p_src), "the target digit": (t, p_dst),
                                  "another digit": (t, 1 - p_src - p_dst)}})
    C.wrote(plots.line_chart(panels, args.out / "moving_switch.png",
                             title=f"Which digit the decodes show, moving {n} test images' codes toward "
                                   "another digit's centre"))

    # -- attribute directions in the 20-D VAE ---------------------------------------------------
    C.heading("Attribute directions (20-D VAE): measured on digits 0-4, added to digits 5-9")
    codes = mus["20-D VAE"]
    target = np.flatnonzero(np.isin(y_test, APPLIED_TO))
    target = target[:200 if quick else 1000]
    panels, measured = [], {}
    kept_panel = {"title": f"digit kept ({judge})", "xlabel": "alpha (multiples of the direction)",
                  "ylabel": "fraction read as the original digit", "ylim": (0, 1.02), "series": {}}
    for name, (measure, unit, low_name, high_name) in ATTRIBUTES.items():
        values = measure(x_test)
        direction, low, high = attribute_direction(codes, values, y_test, MEASURED_ON)
        print(f"  {name}: in digits 0-4, the {low_name} quarter averages {low:.2f}, the {high_name} quarter "
              f"{high:.2f}; direction = difference of their mean codes, length {np.linalg.norm(direction):.2f}")
        moved = codes[target][:, None] + ALPHAS[None, :, None] * direction                # (n, A, Z)
        images = C.decode(vae20, moved.reshape(-1, codes.shape[1]).astype(np.float32))
        got = measure(images).reshape(len(target), len(ALPHAS)).mean(0)
        kept = (digit_of(clf, nearest, images).reshape(len(target), len(ALPHAS))
                == y_test[target][:, None]).mean(0)
        measured[name] = got
        # A control: random directions of the same length move the codes as far.
        controls = []
        for _ in range(CONTROLS):
            rand = rng.standard_normal(direction.shape)
            rand *= np.linalg.norm(direction) / np.linalg.norm(rand)
            moved = codes[target][:, None] + ALPHAS[None, :, None] * rand
            got_r = measure(C.decode(vae20, moved.reshape(-1, codes.shape[1]).astype(np.float32)))
            controls.append(got_r.reshape(len(target), len(ALPHAS)).mean(0))
        one = int(np.flatnonzero(ALPHAS == 1)[0]), int(np.flatnonzero(ALPHAS == -1)[0])
        along = (got[one[0]] - got[one[1]]) / 2
        randomly = np.mean([abs(c[one[0]] - c[one[1]]) / 2 for c in controls])
        print(f"    digits 5-9, {name} of the decodes for alpha = " + ", ".join(f"{a:+g}" for a in ALPHAS) + ":")
        print("      " + ", ".join(f"{v:.2f}" for v in got))
        print(f"      (originals: {values[target].mean():.2f}; alpha = 0 is the plain reconstruction)")
        print(f"      change per unit of alpha (from alpha = -1 to +1, halved): {along:+.2f} along the direction, "
              f"{randomly:.2f} on average (in size) along {CONTROLS} random directions of the same length")
        print("    digit kept: " + ", ".join(f"{100 * v:.0f} %" for v in kept))
        panels.append({"title": f"{name} of the decodes (digits 5-9)", "xlabel": "alpha (multiples of the direction)",
                       "ylabel": unit, "series": {
                           f"the {name} direction": (ALPHAS, got),
                           **{("_" if k else "") + f"{CONTROLS} random directions, same length" + "_" * k: (
                               ALPHAS, c, {"color": "0.6", "linewidth": 0.8, "marker": None})
                              for k, c in enumerate(controls)}},
                       "hline": (values[target].mean(), "the original images")})
        kept_panel["series"][name] = (ALPHAS, kept)

        shown = [int(np.flatnonzero(y_test == d)[0]) for d in APPLIED_TO]
        rows = [vae20.decode((codes[i] + ALPHAS[:, None] * direction).astype(np.float32)) for i in shown]
        rows = [np.concatenate([x_test[i:i + 1], r]) for i, r in zip(shown, rows)]
        C.wrote(plots.image_rows(
            rows, args.out / f"attribute_{name}.png", row_labels=[f"a {y_test[i]}" for i in shown],
            title=f"A '{name}' direction measured on digits 0-4 ({high_name} minus {low_name}), added to digits 5-9\n"
                  f"(first column: the test image; then its code + alpha * direction, alpha = "
                  + ", ".join(f"{a:g}" for a in ALPHAS) + ")"))
    panels.append(kept_panel)
    C.wrote(plots.line_chart(panels, args.out / "attribute_measured.png",
                             title="Adding an attribute direction to codes of other digits: the attribute measured "
                                   "on the decodes, and the digit"))
    C.done(args)


if __name__ == "__main__":
    main()
