"""The main job's figures: what `npvae train` writes for the study note's VAE, kept for the README.

`npvae train` (no arguments) trains the study note's VAE, 784-400-20 with the L2 loss plus KL, and draws
its standard figures into its run folder. This demo takes the same run (trained once into runs/,
shared with the other demos) and draws those figures with the same code, npvae.figures.write_figures,
into <out>/train/: test images and their reconstructions, 100 samples from the prior, linear
interpolations between test images, and the two losses per epoch.

    python demos/main_job.py [--out DIR] [--quick] [--runs DIR] [--seed N]
"""

from __future__ import annotations

import _common as C
from npvae import figures


def main(argv: list[str] | None = None) -> None:
    args = C.parse_args(__doc__, argv)
    vae, history = C.get_run(C.VAE_20, args.runs, args.quick)
    x_test, y_test = C.load_split("test", args.quick)
    last = history[-1]
    C.heading("The run")
    print(f"  After {last['epoch']} epochs: test loss {last['test_loss']:.2f} per image "
          f"(reconstruction {last['test_recon']:.2f} + KL {last['test_kl']:.2f})")
    for path in figures.write_figures(vae, history, x_test, y_test, args.out / "train", seed=args.seed):
        C.wrote(path)
    C.done(args)


if __name__ == "__main__":
    main()
