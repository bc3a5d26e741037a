"""The npvae command line: `python -m npvae COMMAND` or `npvae COMMAND`.

    npvae train                      train the study note's VAE on the bundled MNIST and write its figures
                                     (--model cvae: the label-conditioned VAE)
    npvae sample RUN                 a grid of samples from a saved run
    npvae reconstruct RUN            test images and their reconstructions
    npvae interpolate RUN            interpolations between test images
    npvae figures RUN                all the standard figures of a run (as `npvae train` draws them)
    npvae evaluate RUN               test ELBO, IWAE log-likelihood, active units, sample quality
    npvae explore RUN                one self-contained web page to play with the run's latent space
    npvae bench                      time the training step (matmul floor, PyTorch if installed)
    npvae gradcheck                  check every hand-written gradient
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from . import threads

# Before NumPy loads (the imports below load it): OpenBLAS's threads, from the cores free now.
THREADS = threads.configure(sys.argv[1:]) if "numpy" not in sys.modules else None

from .settings import CHOICES, DEFAULTS, PRESETS, nonnegative_float, nonnegative_int, positive_float, positive_int  # noqa: E402


class Terminated(KeyboardInterrupt):
    """SIGTERM (say, `kill PID` or a job scheduler), handled like Ctrl-C."""


def _raise_terminated(signum, frame):
    raise Terminated()


def sigma2_setting(text: str) -> str | float:
    """An argparse type for --sigma2: "learned", "optimal" or a finite number > 0."""
    return text if text in ("learned", "optimal") else positive_float(text)


def _add_train_options(p: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    # Every default is None here, so that we can tell which options were given (see _train).
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="named settings; iwae-mnist: the IWAE paper's 784-200-200-50 tanh Bernoulli VAE "
                        "(options given as well override it)")
    p.add_argument("--model", choices=CHOICES["model"], help=f"variational or plain autoencoder, or the label-conditioned VAE (default {d['model']})")
    p.add_argument("--likelihood", choices=CHOICES["likelihood"],
                   help=f"reconstruction loss: the study note's L2, Bernoulli cross-entropy, or a Gaussian "
                        f"N(x; mean, sigma^2 I) (default {d['likelihood']})")
    p.add_argument("--sigma2", type=sigma2_setting, metavar="learned|optimal|VALUE",
                   help="the Gaussian's variance: learned (a parameter), optimal (each batch's mean squared "
                        f"error) or a fixed number; 0.5 is the L2 loss (default {d['sigma2']})")
    p.add_argument("--decoder-output", choices=["sigmoid", "linear"],
                   help="the Gaussian's mean: sigmoid of the decoder's output, or the output itself "
                        f"(default {d['decoder_output']})")
    p.add_argument("--hidden", type=positive_int, nargs="+", metavar="H",
                   help=f"hidden layer sizes of the encoder; the decoder mirrors them (default {d['hidden'][0]})")
    p.add_argument("--latent", type=positive_int, metavar="Z", help=f"latent size (default {d['latent']})")
    p.add_argument("--activation", choices=CHOICES["activation"],
                   help=f"hidden activation (default {d['activation']})")
    p.add_argument("--beta", type=nonnegative_float, help=f"weight of the KL term (default {d['beta']:g})")
    p.add_argument("--warmup", type=nonnegative_int, metavar="K", help="linear KL warm-up over the first K epochs (default 0)")
    p.add_argument("--epochs", type=positive_int, help=f"total epochs; with --resume, the epoch to train up to (default {d['epochs']})")
    p.add_argument("--batch-size", type=positive_int, help=f"minibatch size (default {d['batch_size']})")
    p.add_argument("--lr", type=positive_float, help=f"learning rate (default {d['lr']:g})")
    p.add_argument("--optimizer", choices=CHOICES["optimizer"], help=f"optimizer (default {d['optimizer']})")
    p.add_argument("--clip", type=positive_float, metavar="NORM", help="clip the gradient's global norm to NORM (default: off)")
    p.add_argument("--seed", type=nonnegative_int,
                   help=f"seed of every random draw: same seed, same run (default {d['seed']})")
    p.add_argument("--dtype", choices=CHOICES["dtype"], help=f"floating-point type (default {d['dtype']})")
    p.add_argument("--data-dir", metavar="DIR", help="a folder of IDX files named like MNIST's (default: bundled MNIST)")
    p.add_argument("--binarize", choices=CHOICES["binarize"], help="pixel binarization (default none)")
    p.add_argument("--train-size", type=positive_int, metavar="N", help="use only the first N training images")
    p.add_argument("--test-size", type=positive_int, metavar="N", help="use only the first N test images")
    p.add_argument("--out", metavar="DIR", help="run folder (default runs/<name from the settings>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in the folder")
    p.add_argument("--no-figures", action="store_true", help="skip the figures at the end")
    p.add_argument("--threads", type=positive_int, metavar="N",
                   help="threads for matrix products and the fast path's elementwise work (default: the cores "
                        "free when the command starts; OPENBLAS_NUM_THREADS if set; with --resume, the run's own)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="npvae", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train_options(sub.add_parser("train", help="train a VAE or AE on MNIST (the main job)"))
    for name, what in (("sample", "a grid of samples from the prior"),
                       ("reconstruct", "test images beside their reconstructions"),
                       ("interpolate", "interpolations between pairs of test images")):
        p = sub.add_parser(name, help=f"{what}, from a saved run")
        p.add_argument("run", metavar="RUN", help="a run folder written by `npvae train` (or its checkpoint file)")
        p.add_argument("--out", metavar="DIR", help="where to write the PNG (default: the run folder)")
        p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the random draws (default 0)")
        if name == "sample":
            p.add_argument("--digit", type=int, metavar="D",
                           help="a conditional run (--model cvae): samples of this digit only (samples_digitD.png)")
    sub.add_parser("figures", help="all the standard figures of a saved run, into its folder").add_argument(
        "run", metavar="RUN", help="a run folder written by `npvae train` (or its checkpoint file)")
    from . import evaluate
    evaluate.add_arguments(sub.add_parser("evaluate", help="test ELBO, importance-weighted log-likelihood, "
                                                            "active units and sample quality of a run"))
    from . import explore
    explore.add_arguments(sub.add_parser("explore", help="write one self-contained HTML page to play with "
                                                          "a run's latent space (RUN/explore.html)"))
    from . import bench
    bench.add_arguments(sub.add_parser("bench", help="time the training step against the matmul floor and PyTorch"))
    sub.add_parser("gradcheck", help="check every hand-written gradient against central differences")
    return parser


def _train(args: argparse.Namespace) -> int:
    from .checkpoint import CheckpointError
    from .folders import RunInUse
    from .runs import describe_os_error, train_run
    from .train import TrainingDiverged
    if THREADS is not None:
        print(f"Threads: {THREADS}", flush=True)
    given = {k: v for k, v in vars(args).items() if k in DEFAULTS and v is not None}
    if args.resume and args.out is None:
        print("npvae train: --resume needs --out RUN_FOLDER (the run to continue)", file=sys.stderr)
        return 2
    preset = PRESETS[args.preset] if args.preset else {}
    if args.preset:
        given["preset"] = args.preset
    cfg = {**DEFAULTS, **preset, **given}
    if THREADS is not None and "threads" not in given:     # recorded: a resume uses them again
        cfg["threads"] = int(os.environ["OPENBLAS_NUM_THREADS"])
    try:
        train_run(cfg, args.out, resume=args.resume, overwrite=args.overwrite, figures=not args.no_figures,
                  given=sorted(given))
    except KeyboardInterrupt as e:
        return _interrupted_status(e)
    except (TrainingDiverged, CheckpointError, FileExistsError, RunInUse, ValueError, ImportError) as e:
        print(f"npvae train: {e}", file=sys.stderr)
        return 1
    except OSError as e:                 # disk full, a read-only folder, --out under a file, ...
        print(f"npvae train: {describe_os_error(e)}. Nothing saved before is lost; fix this and run the "
              f"command again (with --resume to continue a run).", file=sys.stderr)
        return 1
    return 0


def _interrupted_status(e: KeyboardInterrupt) -> int:
    """The exit status of a command stopped by SIGTERM (143) or Ctrl-C (130), as a shell gives them."""
    return 128 + (signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT)


def _figure(args: argparse.Namespace) -> int:
    import numpy as np

    from . import figures, folders, runs
    from .checkpoint import CheckpointError
    from .data import as_float
    try:
        model, ckpt = folders.load_run(args.run)
        cfg = {**DEFAULTS, **ckpt.config}
        if args.command == "figures":
            _, x_test, y_test = runs.load_data(cfg)
            paths = figures.write_figures(model, ckpt.history, x_test, y_test, folders.run_folder(args.run),
                                          seed=cfg["seed"], stream=sys.stdout)
            print("".join(f"wrote {p}\n" for p in paths), end="")
            return 0
        out = Path(args.out) if args.out else folders.run_folder(args.run)
        out.mkdir(parents=True, exist_ok=True)
        if args.command == "sample":
            path = figures.figure_sample(model, out, np.random.default_rng(args.seed), digit=args.digit)
        else:
            _, x_test, y_test = runs.load_data(cfg)
            x_test = as_float(x_test)
            if args.command == "reconstruct":
                path = figures.figure_reconstruct(model, x_test, out, y_test=y_test)
            else:
                path = figures.figure_interpolate(model, x_test, out)
    except KeyboardInterrupt as e:
        return _interrupted_status(e)
    except (CheckpointError, ValueError, ImportError) as e:      # no run there, its data gone, ...
        print(f"npvae {args.command}: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"npvae {args.command}: {runs.describe_os_error(e)}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _raise_terminated)    # SIGTERM stops a command as Ctrl-C does
    try:
        return _run(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    if args.command == "train":
        return _train(args)
    if args.command in ("sample", "reconstruct", "interpolate", "figures"):
        return _figure(args)
    if args.command == "evaluate":
        from . import evaluate
        return evaluate.run(args)
    if args.command == "explore":
        from . import explore
        return explore.run(args)
    if args.command == "bench":
        from . import bench
        return bench.run(args)
    if args.command == "gradcheck":
        from .gradcheck import main as gradcheck_main
        return gradcheck_main()
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
