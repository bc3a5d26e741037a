"""Demo: the linear VAE and its exact answer, probabilistic PCA, on MNIST pixels.

The study note says the VAE's two losses pull against each other and training balances them.
For one VAE that balance has a known answer: with no hidden layers and a Gaussian decoder of
linear output (q(z|x) = N(A x + a, diag(exp(logvar))), p(x|z) = N(W z + b, sigma^2 I)), the best
ELBO equals the maximum log-likelihood of probabilistic PCA (Tipping and Bishop 1999; Lucas,
Tucker, Grosse and Norouzi 2019). With the pixel covariance's eigenvalues l_1 >= l_2 >= ...:
a learned sigma^2 is the mean of the 784 - 20 smallest, and a fixed sigma^2 keeps exactly the
latent dimensions with l_j > sigma^2; the others collapse to the prior, predicted before any
training. npvae.ppca computes all of it in closed form (an eigen-decomposition of a 784 x 784
covariance), then the linear VAE is trained with npvae and measured against it, its ELBO exact
(no sampling).

What it draws and measures (MNIST pixels in [0, 1], Z = 20):
  linear_vae_spectrum.png  the eigenvalues of the pixel covariance against the fixed sigma^2
                           levels: a latent dimension survives where its eigenvalue is above
  linear_vae_images.png    test images, their pPCA reconstructions (the posterior mean decoded)
                           and decodes of z ~ N(0, I), for a learned sigma^2 and for 1/2
and the pPCA log-likelihood per image for a learned sigma^2 and for sigma^2 = 0.01, 0.1, 1/2 (the
L2 loss's) and 1, with the number of the 20 dimensions that survive; then the linear VAE
VAE(784, [], 20, likelihood="gaussian", decoder_output="linear") trained with npvae's fit, for a
learned sigma^2 and for 1/2: its exact ELBO, log-likelihood, sigma^2 and active units beside the
closed form, and how long it trained.

    python demos/linear_vae.py [--out DIR] [--quick] [--runs DIR] [--seed N]
"""

from __future__ import annotations

import math
import time

import numpy as np

import _common as C
from npvae import plots, ppca

Z = 20
FIXED = (0.01, 0.1, 0.5, 1.0)                  # 0.5: the L2 loss sum (x - x_hat)^2 is this Gaussian
ACTIVE_VARIANCE = 0.01                          # active unit: Var_x E[z_j|x] > 0.01 (Burda et al. 2015)
# Training the linear VAE (measured by hand on synthetic data, tests/test_ppca.py: the rotation of
# W towards orthogonal rows is slow, and the encoder needs the final decay of the learning rate).
# 20 epochs on MNIST: what a shared 2-core machine could run in the time; more epochs close more
# of the gap (the synthetic test needs ~80,000 steps for 0.01 nats).
TRAINING = {"epochs": 20, "lr": 3e-3, "final_lr": 1e-5, "hold": 0.75, "batch_size": 128}
QUICK_TRAINING = {**TRAINING, "epochs": 4}


def main(argv: list[str] | None = None) -> None:
    args = C.parse_args(__doc__, argv)
    if args.quick and args.out.resolve() == C.FIGURES.resolve():
        args.out = args.runs / "quick-figures"          # quick runs never overwrite the committed figures
        args.out.mkdir(parents=True, exist_ok=True)
    x_train, _ = C.load_split("train", args.quick)
    x_test, _ = C.load_split("test", args.quick)

    C.heading(f"Probabilistic PCA in closed form: {len(x_train)} training images, D = {x_train.shape[1]}, Z = {Z}")
    start = time.perf_counter()
    spectrum = ppca.spectrum(x_train)                  # one eigen-decomposition for every fit
    seconds = time.perf_counter() - start
    fits = {"learned": ppca.fit_ppca(spectrum, Z)}
    fits.update({s2: ppca.fit_ppca(spectrum, Z, s2) for s2 in FIXED})
    l = fits["learned"].eigenvalues
    print(f"  eigenvalues of the pixel covariance: l_1 = {l[0]:.3f}, l_20 = {l[Z - 1]:.4f}, l_21 = {l[Z]:.4f}; "
          f"total variance {l.sum():.2f}; {int(np.sum(l < 1e-10))} of {len(l)} are 0 (pixels that never vary "
          f"and their combinations)")
    print(f"  (the covariance and its eigen-decomposition took {seconds:.1f} s)")
    print(f"\n  {'sigma^2':>12s} {'dims kept':>10s} {'active (Var E[z|x] > 0.01)':>27s} "
          f"{'log p(x) train':>15s} {'log p(x) test':>14s} {'ELBO, best encoder':>19s}")
    rows = {}
    for key, fit in fits.items():
        A, a = ppca.optimal_encoder(fit.W, fit.b, fit.sigma2)
        mu, logvar = ppca.linear_encoder(x_test, A, a)
        rows[key] = {
            "fit": fit, "train": fit.log_likelihood,
            "test": float(ppca.marginal_log_likelihood(x_test, fit.W, fit.b, fit.sigma2).mean()),
            "elbo_train": float(np.mean(_batched_elbo(x_train, fit, A, a))),
            # E[z_j|x] = (x - b) . w_j / (|w_j|^2 + sigma2) has variance (l_j - sigma2) / l_j on the
            # training data: a kept direction with l_j within 1 % of sigma2 does not count as active.
            "active": int(np.sum(mu.var(0) > ACTIVE_VARIANCE)),
        }
        r = rows[key]
        label = f"learned {fit.sigma2:.4f}" if key == "learned" else f"{fit.sigma2:g}"
        print(f"  {label:>12s} {fit.active:7d}/{Z} {r['active']:24d}/{Z} {r['train']:15.2f} {r['test']:14.2f} "
              f"{r['elbo_train']:19.2f}")
    print("  (log p(x): nats per image, a density on R^784, so it can be positive and is not comparable with a "
          "Bernoulli NLL;\n   dims kept: rows of W that are not 0, #{j <= 20 : l_j > sigma^2}; the ELBO with the best "
          "encoder equals log p(x) on the training set, as it must)")
    half = fits[0.5]
    above = int(np.sum(l > 0.5))
    print(f"\n  With the L2 loss's sigma^2 = 1/2, {half.active} of the {Z} latent dimensions survive in closed form "
          f"(l_{Z} = {l[Z - 1]:.3f}); {above} eigenvalues in all are above 1/2,\n  so a linear VAE with more latent "
          f"dimensions would keep {above} and collapse the rest. The study note's nonlinear 784-400-20 L2 VAE keeps "
          f"16 of 20\n  (README, npvae evaluate).")

    C.wrote(spectrum_figure(l, args.out / "linear_vae_spectrum.png"))
    C.wrote(images_figure(fits, x_test, args.rng, args.out / "linear_vae_images.png"))

    C.heading("The linear VAE trained by npvae (784-20, Gaussian decoder, linear output)")
    trained = {key: train_linear_vae(key, x_train, x_test, args.quick, args.seed) for key in ("learned", 0.5)}
    if any(t is not None for t in trained.values()):
        print(f"  {'sigma^2':>16s} {'ELBO train':>11s} {'closed form':>12s} {'gap':>7s} {'ELBO test':>10s} "
              f"{'log p(x) test':>14s} {'active':>7s} {'epochs':>7s} {'seconds':>8s}")
        for key, t in trained.items():
            if t is None:
                continue
            gap = rows[key]["train"] - t["elbo_train"]
            print(f"  {t['label']:>16s} {t['elbo_train']:11.2f} {rows[key]['train']:12.2f} {gap:7.3f} "
                  f"{t['elbo_test']:10.2f} {t['ll_test']:14.2f} {t['active']:4d}/{Z} {t['epochs']:7d} "
                  f"{t['seconds']:8.0f}")
        print("  (gap: closed form minus the trained model's exact ELBO, nats per training image)")
    C.done(args)


def _batched_elbo(x, fit, A, a, batch=10000) -> np.ndarray:
    return np.concatenate([ppca.elbo(x[s:s + batch], fit.W, fit.b, fit.sigma2,
                                     *ppca.linear_encoder(x[s:s + batch], A, a))
                           for s in range(0, len(x), batch)])


def spectrum_figure(l: np.ndarray, path):
    j = np.arange(1, 61)
    series = {"eigenvalue l_j": (j, np.log10(l[:60]), {"color": "black"})}
    for i, s2 in enumerate(FIXED):
        kept = int(np.sum(l[:Z] > s2))
        series[f"sigma^2 {s2:g}: keeps {kept}"] = (
            j, np.full(len(j), math.log10(s2)), {"color": f"C{i}", "marker": "", "linestyle": "--"})
    learned = ppca.learned_sigma2(l, Z)
    series[f"learned sigma^2 {learned:.3g}"] = (
        j, np.full(len(j), math.log10(learned)), {"color": "C4", "marker": "", "linestyle": ":"})
    series["_latent_dim"] = ([Z, Z], [math.log10(l[59]), math.log10(l[0])], {"color": "grey", "marker": "",
                                                                              "linewidth": 0.8})
    return plots.line_chart([{"series": series, "xlabel": "j (grey: Z = 20)",
                              "ylabel": "log10 of the variance"}], path,
                            title="The pixel covariance's eigenvalues: a linear VAE\nkeeps the first 20 "
                                  "that are above sigma^2")


def images_figure(fits: dict, x_test: np.ndarray, rng: np.random.Generator, path):
    x = x_test[:12]
    z = rng.standard_normal((12, Z))
    rows, labels = [x], ["test images"]
    for key in ("learned", 0.5):
        fit = fits[key]
        A, a = ppca.optimal_encoder(fit.W, fit.b, fit.sigma2)
        mu, _ = ppca.linear_encoder(x, A, a)
        name = f"sigma^2 {fit.sigma2:.3g}" + (" (learned)" if key == "learned" else " (L2)")
        rows += [np.clip(mu @ fit.W + fit.b, 0, 1), np.clip(z @ fit.W + fit.b, 0, 1)]
        labels += [f"{name}: reconstructions", f"{name}: z ~ N(0, I)"]
    return plots.image_rows(rows, path, row_labels=labels,
                            title="Probabilistic PCA with Z = 20 (the optimal linear VAE): the mean "
                                  "z W + b, clipped to [0, 1]")


# --------------------------------------------------------------------------------------------
# The linear VAE trained by npvae
# --------------------------------------------------------------------------------------------

def train_linear_vae(sigma2, x_train, x_test, quick: bool, seed: int) -> dict:
    """Train VAE(784, [], 20, likelihood="gaussian", sigma2=..., decoder_output="linear") with
    fit, then read its arrays and compute the exact ELBO and log p(x) with npvae.ppca."""
    from npvae.evaluate import active_units
    from npvae.models import VAE
    from npvae.optim import Adam
    from npvae.train import fit

    model = VAE(x_train.shape[1], [], Z, likelihood="gaussian", sigma2=sigma2, decoder_output="linear", rng=seed)
    cfg = QUICK_TRAINING if quick else TRAINING
    hold = int(cfg["hold"] * cfg["epochs"])

    def schedule(epoch: int) -> float:          # constant, then an exponential decay to final_lr
        if epoch <= hold:
            return cfg["lr"]
        return cfg["lr"] * (cfg["final_lr"] / cfg["lr"]) ** ((epoch - hold) / max(1, cfg["epochs"] - hold))

    start = time.perf_counter()
    fit(model, Adam(model.params, lr=cfg["lr"]), x_train, epochs=cfg["epochs"], batch_size=cfg["batch_size"],
        rng=np.random.default_rng(seed), lr_schedule=schedule)
    seconds = time.perf_counter() - start
    arrays = ppca.linear_vae_arrays(model, None if sigma2 == "learned" else math.log(sigma2))

    def mean_over(fn, x, batch=10000):
        return float(np.mean(np.concatenate([fn(x[s:s + batch]) for s in range(0, len(x), batch)])))

    return {"label": f"learned {arrays.sigma2:.4f}" if sigma2 == "learned" else f"{sigma2:g}",
            "elbo_train": mean_over(arrays.elbo, x_train), "elbo_test": mean_over(arrays.elbo, x_test),
            "ll_test": mean_over(arrays.log_likelihood, x_test), "active": active_units(model, x_test),
            "epochs": cfg["epochs"], "seconds": seconds}


if __name__ == "__main__":
    main()
