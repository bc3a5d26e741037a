"""Demo 2: the cloud, or the reparameterization trick, seen in a 2-D latent space.

The study note: instead of one point, the VAE's encoder gives each image a cloud, a centre mu and a
size sigma, and the decoder is fed a random point of it, z = mu + sigma * eps with
eps ~ N(0, I). The noise forces the decoder to draw the same picture from anywhere in the cloud.

What it draws and measures:
  cloud.png          every test image's mu, coloured by digit, with the mu +- 2 sigma ellipses
                     of a few test images
  cloud_decodes.png  for those images: the image, the decode of mu, and decodes of
                     mu + sigma * eps for several draws of eps
and it measures how much the decodes of one cloud differ from each other compared to decodes of
different images, and how often they stay the same digit.

    python demos/cloud.py [--out DIR] [--quick] [--runs DIR] [--seed N]
"""

from __future__ import annotations

import numpy as np

import _common as C
from npvae import plots

DIGITS = (0, 1, 3, 6, 7)        # one test image of each of these digits gets its ellipse drawn
DRAWS = 10                       # draws of eps per image in the strip


def main(argv: list[str] | None = None) -> None:
    args = C.parse_args(__doc__, argv)
    quick, rng = args.quick, args.rng
    vae, _ = C.get_run(C.VAE_2, args.runs, quick)
    x_test, y_test = C.load_split("test", quick)
    nearest = C.NearestTraining(quick)
    clf = C.get_classifier(quick)

    mu, logvar = vae.encode(x_test)                                  # (N, 2) each
    sigma = np.exp(0.5 * logvar)
    C.heading("The clouds of the 2-D VAE")
    print(f"  centres mu of the {len(x_test)} test images: mean ({mu[:, 0].mean():.2f}, {mu[:, 1].mean():.2f}), "
          f"std ({mu[:, 0].std():.2f}, {mu[:, 1].std():.2f})")
    print(f"  cloud sizes sigma: median ({np.median(sigma[:, 0]):.3f}, {np.median(sigma[:, 1]):.3f}), "
          f"range {sigma.min():.3f} to {sigma.max():.3f}")
    ratio = np.median(sigma, 0) / mu.std(0)
    print(f"  a typical cloud is {ratio[0]:.2f} x {ratio[1]:.2f} of the spread of all centres (per axis): "
          f"small, but not a point")

    chosen = [int(np.flatnonzero(y_test == d)[0]) for d in DIGITS]
    clouds = [(mu[i], sigma[i], str(k + 1)) for k, i in enumerate(chosen)]
    C.wrote(plots.latent_scatter(mu, y_test, args.out / "cloud.png", ellipses=clouds, legend_title="digit",
                                 title="2-D VAE: the centre mu of every test image (dots), and the clouds\n"
                                       "mu ± 2 sigma of five test images (numbered ellipses)"))

    eps = rng.standard_normal((DRAWS, 2)).astype(np.float32)
    rows, labels = [], []
    for k, i in enumerate(chosen):
        z = mu[i] + sigma[i] * eps                                   # (DRAWS, 2): points of cloud k
        rows.append(np.concatenate([x_test[i:i + 1], vae.decode(mu[i:i + 1]), vae.decode(z)]))
        labels.append(f"cloud {k + 1} (a {y_test[i]})")
    C.wrote(plots.image_rows(rows, args.out / "cloud_decodes.png", row_labels=labels,
                             title="Each row: a test image, the decode of its centre mu, then decodes of\n"
                                   f"z = mu + sigma * eps for {DRAWS} draws eps ~ N(0, I) "
                                   "(the same draws in every row)"))

    # -- numbers over many images ---------------------------------------------------------------
    n = 200 if quick else 1000
    C.heading(f"Decodes of {DRAWS} points of each of {n} test images' clouds")
    eps = rng.standard_normal((n, DRAWS, 2)).astype(np.float32)
    centre = vae.decode(mu[:n])                                           # (n, 784)
    draws = C.decode(vae, (mu[:n, None] + sigma[:n, None] * eps).reshape(-1, 2)).reshape(n, DRAWS, -1)
    within = np.mean((draws - centre[:, None]) ** 2)
    other = np.roll(np.arange(n), 1)                                      # each image's neighbour in the list
    differ = y_test[:n] != y_test[other]
    between = np.mean((centre[differ] - centre[other][differ]) ** 2)
    print(f"  mean squared pixel difference, a cloud point's decode vs its centre's decode: {within:.4f}")
    print(f"  the same between the centres' decodes of two test images of different digits:  {between:.4f}")
    print(f"  so moving inside a cloud changes the picture {between / within:.1f} x less than changing the image")
    flat = draws.reshape(-1, 784)
    if clf is not None:
        c_centre, c_draws = C.classify(clf, centre), C.classify(clf, flat)
        same = np.mean(c_draws["pred"].reshape(n, DRAWS) == c_centre["pred"][:, None])
        true = np.mean(c_draws["pred"].reshape(n, DRAWS) == y_test[:n, None])
        centre_ok = np.mean(c_centre["pred"] == y_test[:n])
        print(f"  the classifier gives a cloud point's decode the digit of its centre's decode {100 * same:.1f} % "
              f"of the time ({100 * true:.1f} % the image's true digit; {100 * centre_ok:.1f} % for the "
              f"centres themselves)")
    else:
        _, nn_centre = nearest(centre)
        _, nn_draws = nearest(flat)
        same = np.mean(nn_draws.reshape(n, DRAWS) == nn_centre[:, None])
        print(f"  the nearest training image of a cloud point's decode has the same label as that of its "
              f"centre's decode {100 * same:.1f} % of the time")
    C.done(args)


if __name__ == "__main__":
    main()
