"""Demo: the balance between the two losses is a noise level, and it can be learned.

The study note says the VAE's two losses pull against each other and training balances them.
With the L2 loss that balance is set by a number nobody chose: sum (x - x_hat)^2 is the negative
log-density of N(x; x_hat, sigma^2 I) with sigma^2 = 1/2, up to a constant, so the L2 loss plus
the KL term is the Gaussian VAE's loss at sigma^2 = 1/2, and the Gaussian loss at any sigma^2 is
the L2 loss with the KL term weighted by beta = 2 sigma^2. A small sigma^2 says "the pixels are
nearly noiseless": sharp reconstructions, a large KL, a poorly shaped cloud. A large one says
"most of what you see is noise": blurry averages, few latent dimensions in use. Letting the
decoder learn sigma^2 (or setting it to each batch's mean squared error, the "optimal sigma" of
Rybkin, Daniilidis and Levine 2021) lets the data choose the balance.

What it draws and measures (the study note's 784-400-20 VAE, 10 epochs, for sigma^2 = 0.01,
0.1, 1/2 (the L2 loss), 1, the optimal sigma and a learned sigma^2):
  balance.png         per sigma^2: the reconstruction error per pixel, the KL term, the latent
                      dimensions in use and how digit-like the samples are
  balance_images.png  per sigma^2: reconstructions of the same test images, and samples
and per sigma^2 the test set's -ELBO under its own Gaussian, the equivalent beta of the L2 loss,
and for the learned and optimal rows the sigma^2 the model settled on.

Each row is a run of `npvae train --likelihood gaussian --sigma2 S` (S = 0.01, 0.1, 1, optimal,
learned), reused from runs/ when it is there; sigma^2 = 1/2 is the L2 VAE's own run.

    python demos/balance.py [--out DIR] [--quick] [--runs DIR] [--seed N]
"""

from __future__ import annotations

import math

import numpy as np

import _common as C
from npvae import plots, ppca

Z = 20
FIXED = (0.01, 0.1, 0.5, 1.0)
SETTINGS = (*FIXED, "optimal", "learned")


def run_settings(sigma2) -> dict:
    """The run's settings for one sigma^2 (on top of the study note's VAE). sigma^2 = 1/2 is the
    L2 VAE itself (C.VAE_20): the Gaussian loss at sigma^2 = 1/2 is the L2 loss plus a constant,
    with the same gradients, so it is trained once and shared with the other demos."""
    if sigma2 == 0.5:
        return C.VAE_20
    return {**C.VAE_20, "likelihood": "gaussian", "sigma2": sigma2}


def label(sigma2) -> str:
    if sigma2 == 0.5:
        return "sigma^2 1/2 (L2)"
    return f"sigma^2 {sigma2}" if isinstance(sigma2, str) else f"sigma^2 {sigma2:g}"


def model_sigma2(model, sigma2, x: np.ndarray) -> float:
    """The noise variance the model uses: the fixed value, the learned exp(log_sigma2), or for
    "optimal" the mean squared error per pixel of its reconstructions of x."""
    if sigma2 == "learned":
        return float(np.exp(model.params["log_sigma2"][0]))
    if sigma2 == "optimal":
        return C.recon_error(model, x)
    return float(sigma2)


def negative_elbo(model, x: np.ndarray, sigma2: float, rng: np.random.Generator) -> tuple[float, float, float]:
    """(-ELBO, expected reconstruction term, KL) per image under N(x; x_hat, sigma2 I), one draw of
    eps per image: 0.5 * sum_d [(x_d - x_hat_d)^2 / sigma2 + log(2 pi sigma2)] + KL."""
    mu, logvar = model.encode(x)
    z = mu + np.exp(0.5 * logvar) * rng.standard_normal(mu.shape).astype(mu.dtype)
    x_hat = C.decode(model, z)
    sse = np.sum((x.astype(np.float64) - x_hat) ** 2, axis=1)
    recon = 0.5 * (sse / sigma2 + x.shape[1] * math.log(2 * math.pi * sigma2))
    kl = ppca.kl_to_prior(mu, logvar)
    return float(np.mean(recon + kl)), float(np.mean(recon)), float(np.mean(kl))


def main(argv: list[str] | None = None) -> None:
    args = C.parse_args(__doc__, argv)
    if args.quick and args.out.resolve() == C.FIGURES.resolve():
        args.out = args.runs / "quick-figures"          # quick runs never overwrite the committed figures
        args.out.mkdir(parents=True, exist_ok=True)
    quick, rng = args.quick, args.rng
    runs = {}
    for sigma2 in SETTINGS:
        runs[sigma2] = C.get_run(run_settings(sigma2), args.runs, quick)
    x_test, y_test = C.load_split("test", quick)
    nearest = C.NearestTraining(quick)
    clf = C.get_classifier(quick)
    from npvae.evaluate import active_units

    n = 300 if quick else 1000
    eps = rng.standard_normal((n, Z)).astype(np.float32)
    C.heading("After training, per sigma^2 (test set)")
    print(f"  {'':18s} {'sigma^2 used':>12s} {'beta of L2':>10s} {'-ELBO':>9s} {'MSE/pixel':>10s} {'KL':>7s} "
          f"{'dims in use':>12s} {'sample nearest':>15s}" + (f" {'sample conf.':>13s}" if clf is not None else ""))
    rows, row_labels = [x_test[:12]], ["test images"]
    sample_key = "samples: confidence" if clf is not None else "samples: nearest"
    measured = {"MSE per pixel": {}, "KL (nats)": {}, "dims in use": {}, sample_key: {}}
    for sigma2, (model, _) in runs.items():
        used = model_sigma2(model, sigma2, x_test)
        nelbo, _, kl = negative_elbo(model, x_test, used, np.random.default_rng(args.seed))
        mse = C.recon_error(model, x_test)
        in_use = active_units(model, x_test)
        samples = C.decode(model, eps)
        near = float(nearest(samples)[0].mean())
        line = (f"  {label(sigma2):18s} {used:12.4g} {2 * used:10.4g} {nelbo:9.2f} {mse:10.4f} {kl:7.2f} "
                f"{in_use:9d}/{Z} {near:15.4f}")
        name = label(sigma2).replace("sigma^2 ", "")
        measured["MSE per pixel"][name] = mse
        measured["KL (nats)"][name] = kl
        measured["dims in use"][name] = in_use
        measured[sample_key][name] = near
        if clf is not None:
            confidence = C.classify(clf, samples)["confidence"]
            measured[sample_key][name] = confidence
            line += f" {confidence:13.3f}"
        print(line)
        rows += [model.reconstruct(x_test[:12]), samples[:12]]
        row_labels += [f"{label(sigma2)}: reconstructions", f"{label(sigma2)}: samples"]
    print("  (sigma^2 used: the fixed value, the learned one, or for 'optimal' the test MSE per pixel; beta of L2: "
          "the KL weight that gives the L2 loss the same optimum, 2 sigma^2;\n   -ELBO: nats per image under "
          "N(x; x_hat, sigma^2 I), one draw of eps, a continuous density (not comparable with a Bernoulli NLL); "
          "MSE/pixel: of the reconstructions at z = mu;\n   dims in use: latent dimensions whose E[z|x] varies across "
          "the test images by more than 0.01; sample nearest: mean squared pixel distance of decodes of "
          "z ~ N(0, I) to the nearest training image)")
    C.wrote(plots.bar_panels([{"values": values, "title": title} for title, values in measured.items()],
                             args.out / "balance.png",
                             title="The balance of the two losses is a noise level sigma^2: the study note's "
                                   "784-400-20 VAE for each sigma^2"))
    C.wrote(plots.image_rows(rows, args.out / "balance_images.png", row_labels=row_labels,
                             title="Reconstructions of the same test images and decodes of the same draws "
                                   "z ~ N(0, I), for each sigma^2"))
    C.done(args)


if __name__ == "__main__":
    main()
