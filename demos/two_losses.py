"""Demo 7: the two losses, and the balance between them.

The study note: the VAE's loss is the sum of two terms that pull in almost opposite directions. The
reconstruction term wants each image's cloud tiny (a point, like the autoencoder's), so the
decoder can be exact; the KL term wants every cloud to be N(0, I), as large as the whole space.
Weighting the KL term by beta moves the balance: a small beta gives sharp reconstructions and a
poorly shaped cloud; a large beta a well-shaped cloud and blurry, averaged reconstructions.

What it draws and measures (the study note's 784-400-20 VAE, trained with beta = 0.5, 1 and 4):
  two_losses.png          the reconstruction and KL terms per epoch (test set), one line per beta
  two_losses_images.png   per beta: reconstructions of the same test images, and samples
and per beta: the final reconstruction error and KL, the number of latent dimensions in use, and
how digit-like the samples are.

    python demos/two_losses.py [--out DIR] [--quick] [--runs DIR] [--seed N]
"""

from __future__ import annotations

import numpy as np

import _common as C
from npvae import plots

BETAS = (0.5, 1.0, 4.0)


def main(argv: list[str] | None = None) -> None:
    args = C.parse_args(__doc__, argv)
    quick, rng = args.quick, args.rng
    runs = {beta: C.get_run({**C.VAE_20, "beta": beta}, args.runs, quick) for beta in BETAS}
    x_test, y_test = C.load_split("test", quick)
    nearest = C.NearestTraining(quick)
    clf = C.get_classifier(quick)
    if clf is not None:
        from npvae import evaluate

    likelihood = runs[BETAS[0]][0].likelihood          # "l2": the recon term is a sum of squared errors
    C.wrote(plots.beta_curves({f"beta = {beta:g}": hist for beta, (_, hist) in runs.items()},
                              args.out / "two_losses.png", likelihood=likelihood,
                              title="The two terms of the VAE loss per epoch, for three weights beta of the KL term"))

    n = 300 if quick else 1000
    eps = rng.standard_normal((n, 20)).astype(np.float32)
    C.heading("After training, per beta (test set)")
    print(f"  {'beta':>5s} {'recon (L2)':>11s} {'KL':>7s} {'loss':>8s} {'dims in use':>12s} "
          f"{'sample nearest':>15s}" + (f" {'sample conf.':>13s} {'recon acc.':>11s}" if clf is not None else ""))
    rows, labels = [x_test[:12]], ["test images"]
    for beta, (model, hist) in runs.items():
        last = hist[-1]
        mu, _ = model.encode(x_test)
        in_use = int(np.sum(mu.var(0) > 0.01))
        samples = C.decode(model, eps)
        line = (f"  {beta:5g} {last['test_recon']:11.2f} {last['test_kl']:7.2f} "
                f"{last['test_recon'] + beta * last['test_kl']:8.2f} {in_use:9d}/20 "
                f"{nearest(samples)[0].mean():15.4f}")
        if clf is not None:
            recon_acc = evaluate.reconstruction_accuracy(model, clf, x_test, y_test)
            line += f" {C.classify(clf, samples)['confidence']:13.3f} {100 * recon_acc:10.1f}%"
        print(line)
        rows += [model.reconstruct(x_test[:12]), samples[:12]]
        labels += [f"beta {beta:g}: reconstructions", f"beta {beta:g}: samples"]
    print("  (recon: the L2 term per image; KL in nats per image; dims in use: latent dimensions whose mu varies "
          "across the test images, variance > 0.01; sample nearest: mean squared pixel distance of decodes of "
          "z ~ N(0, I) to the nearest training image; sample conf.: the digit classifier's mean confidence on "
          "them; recon acc.: its accuracy on the reconstructions)")
    C.wrote(plots.image_rows(rows, args.out / "two_losses_images.png", row_labels=labels,
                             title="The balance: reconstructions of the same test images and decodes of the same "
                                   "draws z ~ N(0, I),\nfor each weight beta of the KL term"))
    C.done(args)


if __name__ == "__main__":
    main()
