"""The standard figures of a run, as `npvae train` and `npvae figures` write them into its folder:
reconstructions, samples, interpolations, the training curves, the latent scatter, and a
conditional run's style grid and analogies. The drawing is npvae.plots (matplotlib, imported
only when a figure is drawn).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TextIO

import numpy as np

from .cvae import CVAE
from .data import as_float, in_batches
from .models import VAE


def _codes(model, images: np.ndarray) -> np.ndarray:
    """The point in latent space of each image (uint8 or float): mu for a VAE, z for an AE. (N, Z)."""
    # uint8 images are converted a batch at a time, not all at once (31 MB for the test set)
    return in_batches(lambda batch: model.codes(as_float(batch)), images)


def figure_reconstruct(model, x_test: np.ndarray, out: Path, n: int = 12, y_test: np.ndarray | None = None) -> Path:
    """reconstructions.png: n test images over their reconstructions (a CVAE's with their labels y_test)."""
    from . import plots
    x = as_float(x_test[:n])
    recon = model.reconstruct(x, y_test[:n]) if isinstance(model, CVAE) else model.decode(_codes(model, x))
    return plots.reconstructions(x, recon, out / "reconstructions.png",
                                 title=f"Test images (top) and their reconstructions (bottom), {type(model).__name__}")


def figure_sample(model, out: Path, rng: np.random.Generator, n: int = 100, digit: int | None = None) -> Path:
    """samples.png: n decodes of z ~ N(0, I) (digit: only a CVAE's, see figure_conditional_samples)."""
    from . import plots
    if isinstance(model, CVAE):
        return figure_conditional_samples(model, out, rng, n, digit)
    if digit is not None:
        raise ValueError(f"--digit needs a conditional model (npvae train --model cvae); this run is a "
                         f"{type(model).__name__}")
    z = rng.standard_normal((n, model.latent_dim)).astype(model.dtype)
    what = "samples from the prior N(0, I)" if isinstance(model, VAE) else "decodes of z ~ N(0, I) (an AE has no prior)"
    return plots.image_grid(model.decode(z), out / "samples.png", ncols=10, title=f"{type(model).__name__}: {what}")


def figure_conditional_samples(model: CVAE, out: Path, rng: np.random.Generator, n: int = 100,
                               digit: int | None = None) -> Path:
    """samples.png of a CVAE: n samples of one digit, or (digit None) rows of each digit, own z each."""
    from . import plots
    c = model.num_classes
    if digit is not None:
        if isinstance(digit, bool) or not isinstance(digit, (int, np.integer)) or not 0 <= digit < c:
            raise ValueError(f"--digit must be a label in [0, {c}), got {digit!r}")
        y = np.full(n, digit)
        title = f"CVAE: samples of the digit {digit}, z ~ N(0, I)"
    else:
        y = np.repeat(np.arange(c), max(1, n // c))
        title = "CVAE: samples of each digit (one row each), a new z ~ N(0, I) for every image"
    z = rng.standard_normal((len(y), model.latent_dim)).astype(model.dtype)
    name = "samples.png" if digit is None else f"samples_digit{digit}.png"
    return plots.image_grid(model.decode(z, y), out / name, ncols=10 if digit is not None else len(y) // c,
                            title=title)


def figure_style_grid(model: CVAE, out: Path, rng: np.random.Generator, ncols: int = 12,
                      name: str = "style_grid.png") -> Path:
    """The style grid: a row per digit, a column per z ~ N(0, I), one z shared by a whole column."""
    from . import plots
    c = model.num_classes
    z = rng.standard_normal((ncols, model.latent_dim)).astype(model.dtype)
    images = model.decode(np.tile(z, (c, 1)), np.repeat(np.arange(c), ncols))        # row-major: digit, then z
    return plots.image_grid(images, out / name, nrows=c, ncols=ncols,
                            row_labels=[str(d) for d in range(c)],
                            title="CVAE style grid: each column decodes one z with every label")


def figure_analogy(model: CVAE, x_test: np.ndarray, y_test: np.ndarray, out: Path, n: int = 8,
                   name: str = "analogy.png") -> Path:
    """The analogies: a test image (left), then its code z = mu(x, y) decoded with each label 0..C-1."""
    from . import plots
    c = model.num_classes
    x, y = as_float(x_test[:n]), np.asarray(y_test[:n])
    mu = model.codes(x, y)                                                             # (n, Z)
    decodes = model.decode(np.repeat(mu, c, axis=0), np.tile(np.arange(c), len(x))).reshape(len(x), c, -1)
    rows = [np.concatenate([x[i:i + 1], np.ones_like(x[i:i + 1]), decodes[i]]) for i in range(len(x))]
    return plots.image_rows(rows, out / name, row_labels=[f"{int(d)}" for d in y],
                            title="CVAE analogies: a test image (left, its label at the side), its code "
                                  "decoded with the labels 0-9")


def figure_interpolate(model, x_test: np.ndarray, out: Path, pairs: int = 6, steps: int = 10) -> Path:
    """interpolation.png: for pairs of test images, decodes of steps points on the line between their codes."""
    from . import plots
    if isinstance(model, CVAE):
        raise ValueError("interpolate draws VAE and AE runs; a CVAE run's figures are style_grid.png and "
                         "analogy.png (npvae train --model cvae writes them)")
    pairs = min(pairs, len(x_test) // 2)             # a small test set gives fewer rows
    if pairs < 1:
        raise ValueError(f"an interpolation needs at least 2 test images, the run has {len(x_test)}")
    codes = _codes(model, x_test[:2 * pairs])
    a, b = codes[0::2], codes[1::2]                                   # (pairs, Z) each
    t = np.linspace(0, 1, steps, dtype=model.dtype)[None, :, None]    # (1, steps, 1)
    path = (1 - t) * a[:, None, :] + t * b[:, None, :]                # (pairs, steps, Z)
    images = model.decode(path.reshape(-1, model.latent_dim)).reshape(pairs, steps, -1)
    return plots.interpolation_grid(images, out / "interpolation.png",
                                    title=f"Linear interpolation between the codes of two test images, {type(model).__name__}")


def write_figures(model, history: list[dict], x_test: np.ndarray, y_test: np.ndarray, out: Path,
                  seed: int = 0, stream: TextIO | None = None) -> list[Path]:
    """All standard figures of a run; the 2-D latent scatter only when Z = 2.

    Interrupted (Ctrl-C), it says on `stream` which figures are missing and how to redraw them.
    """
    from . import plots
    rng = np.random.default_rng(seed)
    if isinstance(model, CVAE):
        figures = [("reconstructions.png", lambda: figure_reconstruct(model, x_test, out, y_test=y_test)),
                   ("samples.png", lambda: figure_sample(model, out, rng)),
                   ("style_grid.png", lambda: figure_style_grid(model, out, rng)),
                   ("analogy.png", lambda: figure_analogy(model, x_test, y_test, out))]
    else:
        figures = [("reconstructions.png", lambda: figure_reconstruct(model, x_test, out)),
                   ("samples.png", lambda: figure_sample(model, out, rng))]
        if len(x_test) >= 2:
            figures.append(("interpolation.png", lambda: figure_interpolate(model, x_test, out)))
    curves_units = ({"recon_ylabel": "nats per image, -log N(x; mean, sigma^2 I)"} if model.likelihood == "gaussian"
                    else {"likelihood": model.likelihood})
    figures.append(("training_curves.png", lambda: plots.training_curves(
        history, out / "training_curves.png", **curves_units, title=curves_title(model))))
    if model.latent_dim == 2 and not isinstance(model, CVAE):
        figures.append(("latent.png", lambda: plots.latent_scatter(
            _codes(model, x_test), y_test, out / "latent.png", title="Test set in latent space, coloured by digit")))
    paths: list[Path] = []
    try:
        for _, draw in figures:
            paths.append(draw())
    except KeyboardInterrupt:
        (out / figures[len(paths)][0]).unlink(missing_ok=True)     # half written, or from before
        if stream is not None:
            missing = ", ".join(name for name, _ in figures[len(paths):])
            stream.write(f"\nInterrupted while drawing the figures: {missing} not written (the checkpoint is "
                         f"complete). Redraw them with: {shlex.join(['npvae', 'figures', str(out)])}\n")
        raise
    return paths


def require_matplotlib() -> None:
    """Raise ImportError, before any training, if the figures cannot be drawn."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError("figures need matplotlib: pip install 'npvae[plot]', or pass --no-figures to train "
                          "without them") from None


LOSS_NAMES = {"l2": "L2 loss", "bernoulli": "Bernoulli loss", "gaussian": "Gaussian loss"}


def curves_title(model) -> str:
    """The training figure's title, e.g. "VAE, L2 loss: reconstruction and KL per epoch" (spelled
    out: "VAE (l2)" reads like "VAE (12)")."""
    what = "reconstruction and KL per epoch" if isinstance(model, (VAE, CVAE)) else "the loss per epoch"
    return f"{type(model).__name__}, {LOSS_NAMES.get(model.likelihood, model.likelihood)}: {what}"

