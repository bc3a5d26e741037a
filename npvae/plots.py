"""Figure helpers that write the standard PNG figures of a run (image grids, loss curves, latent plots),
and general line and bar charts in panels."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

DPI = 120
_NO_MATPLOTLIB = "figures need matplotlib: pip install 'npvae[plot]'"


# --------------------------------------------------------------------------------------
# matplotlib plumbing: imported lazily, because the core of npvae needs NumPy only.
# We build a matplotlib.figure.Figure on an Agg canvas ourselves, so no global pyplot
# state (current figure, GUI backend) is ever touched: safe on headless machines.
# --------------------------------------------------------------------------------------

def _new_figure(figsize: tuple[float, float], **kwargs: Any):
    """Return an off-screen Figure of `figsize` inches drawn by the Agg (PNG) renderer."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(_NO_MATPLOTLIB) from err
    fig = Figure(figsize=figsize, dpi=DPI, **kwargs)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path) -> Path:
    """Write `fig` as a PNG to `path` (creating parent directories), release it, return the Path."""
    path = Path(path)
    if path.suffix.lower() != ".png":      # PNG bytes under another name would mislead every viewer
        raise ValueError(f"{path}: figures are written as PNG; give a path ending in .png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.1)
    fig.clear()  # the figure was never registered with pyplot: clearing it is all "closing" takes
    return path


# --------------------------------------------------------------------------------------
# Input checking and tiling (pure NumPy, unit-testable without matplotlib).
# --------------------------------------------------------------------------------------

def _as_images(images: Any, image_shape: tuple[int, int], name: str = "images",
               allow_empty: bool = False) -> np.ndarray:
    """(N, H*W) flat or (N, H, W) images -> float array (N, H, W).

    Flat rows are reshaped with `image_shape`; 3-D input keeps its own (H, W).
    """
    arr = np.asarray(images, dtype=float)
    if arr.ndim == 2:
        if len(image_shape) != 2 or min(image_shape) < 1:
            raise ValueError(f"image_shape must be (H, W) with H, W >= 1, got {image_shape}")
        h, w = int(image_shape[0]), int(image_shape[1])
        if arr.shape[1] != h * w:
            raise ValueError(f"{name}: each image has {arr.shape[1]} pixels, but image_shape "
                             f"{(h, w)} needs {h * w}")
        arr = arr.reshape(arr.shape[0], h, w)
    elif arr.ndim != 3:
        raise ValueError(f"{name} must have shape (N, H*W) or (N, H, W), got {arr.shape}")
    if arr.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{name} is empty: there is nothing to draw")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _tile(images: Any, nrows: int, ncols: int, image_shape: tuple[int, int],
          pad: int = 1, pad_value: float = 1.0) -> np.ndarray:
    """Tile N <= nrows*ncols images row-major into one 2-D array.

    images: (N, H*W) or (N, H, W). Returns (nrows*H + (nrows-1)*pad, ncols*W + (ncols-1)*pad).
    Image k goes to grid row k // ncols, column k % ncols: its top-left pixel is at
    (row * (H + pad), col * (W + pad)). Separators and unused cells hold `pad_value`.
    """
    imgs = _as_images(images, image_shape, allow_empty=True)
    n, h, w = imgs.shape
    if nrows < 1 or ncols < 1 or pad < 0:
        raise ValueError(f"need nrows, ncols >= 1 and pad >= 0, got {nrows}, {ncols}, {pad}")
    if n > nrows * ncols:
        raise ValueError(f"{n} images do not fit in a {nrows} x {ncols} grid")
    canvas = np.full((nrows * h + (nrows - 1) * pad, ncols * w + (ncols - 1) * pad),
                     pad_value, dtype=float)
    for k in range(n):
        top, left = (k // ncols) * (h + pad), (k % ncols) * (w + pad)
        canvas[top:top + h, left:left + w] = imgs[k]
    return canvas


def _centres(count: int, size: int, pad: int = 1) -> list[float]:
    """Pixel coordinate of the middle of each of `count` tiles of `size` px (for tick marks)."""
    return [i * (size + pad) + (size - 1) / 2 for i in range(count)]


def _few(count: int, most: int = 11) -> list[int]:
    """Indices of the tiles to label: all of them, or about 5 spread out when there are many."""
    if count <= most:
        return list(range(count))
    return sorted({int(round(i)) for i in np.linspace(0, count - 1, 5)})


def _show_canvas(canvas: np.ndarray, title: str | None, *, yticks=None, xticks=None,
                 xticks_on_top: bool = False, xlabel: str | None = None,
                 ylabel: str | None = None):
    """Draw a tiled grey-scale canvas pixel-exactly; ticks are (positions, labels) pairs.

    The axes fills the whole figure, which is sized so that one image pixel is an integer
    number of screen pixels (crisp, no smoothing); titles and labels sit outside it and
    are kept by `bbox_inches="tight"` when saving.
    """
    h, w = canvas.shape
    # Magnify by a whole number: about 1000 px on the long side, at most 4x unless the
    # canvas is tiny (a single small image is still blown up to >= 120 px).
    scale = int(np.clip(round(1000 / max(h, w)), 1, max(4, math.ceil(120 / max(h, w)))))
    fig = _new_figure((w * scale / DPI, h * scale / DPI))
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.imshow(canvas, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_xticks(*(xticks or ([], [])))
    ax.set_yticks(*(yticks or ([], [])))
    ax.tick_params(length=0, labelsize=9)
    if xticks_on_top:
        ax.xaxis.tick_top()
        ax.xaxis.set_label_position("top")
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=11)
    return fig


# --------------------------------------------------------------------------------------
# Image figures.
# --------------------------------------------------------------------------------------

def image_grid(images: Any, path: str | Path, *, nrows: int | None = None,
               ncols: int | None = None, title: str | None = None,
               row_labels: Sequence[str] | None = None,
               image_shape: tuple[int, int] = (28, 28)) -> Path:
    """Draw N images (N, H*W) or (N, H, W), row-major in a grid.

    All image figures draw 0 as black and 1 as white; values outside [0, 1] are clipped.

    Default ncols = ceil(sqrt(N)) and nrows = ceil(N / ncols). `row_labels` (one str per
    row) are written at the left of each row.
    """
    imgs = _as_images(images, image_shape)
    n, h, w = imgs.shape
    if (nrows is not None and nrows < 1) or (ncols is not None and ncols < 1):
        raise ValueError(f"nrows and ncols must be >= 1, got nrows={nrows}, ncols={ncols}")
    if ncols is None:
        ncols = math.ceil(math.sqrt(n)) if nrows is None else math.ceil(n / nrows)
    if nrows is None:
        nrows = math.ceil(n / ncols)
    if nrows * ncols < n:
        raise ValueError(f"{n} images do not fit in nrows={nrows} x ncols={ncols}")
    yticks = None
    if row_labels is not None:
        if len(row_labels) != nrows:
            raise ValueError(f"row_labels has {len(row_labels)} entries but the grid has {nrows} rows")
        yticks = (_centres(nrows, h), list(row_labels))
    fig = _show_canvas(_tile(imgs, nrows, ncols, image_shape), title, yticks=yticks)
    return _save(fig, path)


def image_rows(rows: Sequence[Any], path: str | Path, *, row_labels: Sequence[str],
               title: str | None = None, image_shape: tuple[int, int] = (28, 28)) -> Path:
    """Draw each array of `rows` (a list of (n_i, H*W) or (n_i, H, W)) as one labelled row.

    Rows may have different lengths; the short ones are padded with blank cells.
    """
    if len(rows) == 0:
        raise ValueError("rows is empty: there is nothing to draw")
    if len(row_labels) != len(rows):
        raise ValueError(f"row_labels has {len(row_labels)} entries but there are {len(rows)} rows")
    arrays = [_as_images(r, image_shape, name=f"rows[{i}]", allow_empty=True)
              for i, r in enumerate(rows)]
    if len({a.shape[1:] for a in arrays}) != 1:
        raise ValueError(f"all rows must hold images of one size, got {[a.shape[1:] for a in arrays]}")
    ncols = max(len(a) for a in arrays)
    if ncols == 0:
        raise ValueError("every row is empty: there is nothing to draw")
    h, w = arrays[0].shape[1:]
    # Lay the rows out on a full nrows x ncols grid; missing cells stay blank (pad value 1).
    grid = np.ones((len(arrays) * ncols, h, w))
    for i, a in enumerate(arrays):
        grid[i * ncols:i * ncols + len(a)] = a
    canvas = _tile(grid, len(arrays), ncols, (h, w))
    fig = _show_canvas(canvas, title, yticks=(_centres(len(arrays), h), list(row_labels)))
    return _save(fig, path)


def reconstructions(originals: Any, reconstructed: Any, path: str | Path, *,
                    title: str = "Originals and their reconstructions",
                    image_shape: tuple[int, int] = (28, 28), ncols: int | None = None,
                    row_labels: tuple[str, str] = ("original", "reconstruction")) -> Path:
    """Draw originals (N, H*W) above their reconstructions (N, H*W), column by column.

    With `ncols` < N the pairs of rows wrap: originals 0..ncols-1, their reconstructions,
    then the next ncols originals, and so on.
    """
    orig = _as_images(originals, image_shape, name="originals")
    reco = _as_images(reconstructed, image_shape, name="reconstructed")
    if orig.shape != reco.shape:
        raise ValueError(f"originals {orig.shape} and reconstructed {reco.shape} differ in shape")
    ncols = len(orig) if ncols is None else ncols
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    rows, labels = [], []
    for start in range(0, len(orig), ncols):
        rows += [orig[start:start + ncols], reco[start:start + ncols]]
        labels += list(row_labels)
    return image_rows(rows, path, row_labels=labels, title=title, image_shape=image_shape)


def interpolation_grid(paths_images: Any, path: str | Path, *,
                       row_labels: Sequence[str] | None = None, title: str | None = None,
                       image_shape: tuple[int, int] = (28, 28)) -> Path:
    """Draw latent interpolations: (n_paths, n_steps, H*W) or (n_paths, n_steps, H, W).

    Each path is one row from its start (t=0, left) to its end (t=1, right).
    """
    arr = np.asarray(paths_images, dtype=float)
    if arr.ndim not in (3, 4):
        raise ValueError("paths_images must have shape (n_paths, n_steps, H*W) or "
                         f"(n_paths, n_steps, H, W), got {arr.shape}")
    n_paths, n_steps = arr.shape[:2]
    imgs = _as_images(arr.reshape(n_paths * n_steps, *arr.shape[2:]), image_shape,
                      name="paths_images")
    h, w = imgs.shape[1:]
    yticks = None
    if row_labels is not None:
        if len(row_labels) != n_paths:
            raise ValueError(f"row_labels has {len(row_labels)} entries but there are {n_paths} paths")
        yticks = (_centres(n_paths, h), list(row_labels))
    t = np.linspace(0.0, 1.0, n_steps) if n_steps > 1 else np.zeros(1)
    cols = _few(n_steps)
    xticks = ([_centres(n_steps, w)[j] for j in cols], [f"t={t[j]:.2g}" for j in cols])
    fig = _show_canvas(_tile(imgs, n_paths, n_steps, (h, w)), title, yticks=yticks,
                       xticks=xticks, xticks_on_top=True)
    return _save(fig, path)


def manifold_codes(grid_size: int, extent: tuple[float, float, float, float]) -> np.ndarray:
    """Latent codes (grid_size**2, 2) in the order `latent_manifold` lays its images out.

    Row-major, top row first: column j has z1 = linspace(z1_min, z1_max)[j] and row i has
    z2 = linspace(z2_max, z2_min)[i], so z2 grows upwards as on an ordinary plot.
    """
    z1_min, z1_max, z2_min, z2_max = extent
    z1 = np.linspace(z1_min, z1_max, grid_size)
    z2 = np.linspace(z2_max, z2_min, grid_size)
    return np.stack([np.tile(z1, grid_size), np.repeat(z2, grid_size)], axis=1)


def _tick_cells(count: int, most: int = 7) -> list[int]:
    """Indices of the grid cells to tick: all of them, or 5-6 spread out symmetrically.

    Symmetric (cell i ticked <=> cell count-1-i ticked), so a grid that is symmetric about 0,
    like the Gaussian quantiles, gets ticks at +-z pairs: 5 ticks for an odd count, 6 for even.
    """
    if count <= most:
        return list(range(count))
    k = 5 if count % 2 else 6
    left = [int(math.floor(x + 0.5)) for x in np.linspace(0, count - 1, k)[:(k + 1) // 2]]
    return sorted(set(left) | {count - 1 - i for i in left})


def _axis_values(values: Any, grid_size: int, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.shape != (grid_size,):
        raise ValueError(f"{name} must have shape (grid_size,) = ({grid_size},), one value per "
                         f"{'column' if name.startswith('z1') else 'row'}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def latent_manifold(images: Any, path: str | Path, *, grid_size: int,
                    extent: tuple[float, float, float, float] | None = None,
                    z1_values: Any = None, z2_values: Any = None,
                    title: str | None = None,
                    image_shape: tuple[int, int] = (28, 28)) -> Path:
    """Draw decoded images (grid_size**2, H*W) as a grid_size x grid_size manifold.

    Images are row-major with the top row first, in the order of `manifold_codes`.
    The ticks show the z value of a few columns (z1) and rows (z2), given either as
    extent=(z1_min, z1_max, z2_min, z2_max) for an evenly spaced grid, or, for any other
    grid (say Gaussian quantiles), as z1_values (grid_size,): the z1 of each column, left
    to right, and/or z2_values (grid_size,): the z2 of each row, top row first (so usually
    decreasing, z2 growing upwards). Without either, the tiles are not ticked.
    """
    imgs = _as_images(images, image_shape)
    if grid_size < 1 or len(imgs) != grid_size * grid_size:
        raise ValueError(f"latent_manifold needs grid_size**2 = {grid_size * grid_size} "
                         f"images, got {len(imgs)}")
    h, w = imgs.shape[1:]
    if extent is not None and (z1_values is not None or z2_values is not None):
        raise ValueError("give either extent or z1_values/z2_values, not both")
    z1 = z2 = None
    fmt = "{:.3g}"
    if extent is not None:
        if len(extent) != 4 or not np.isfinite(np.asarray(extent, dtype=float)).all():
            raise ValueError(f"extent must be four finite numbers (z1_min, z1_max, z2_min, z2_max), got {extent}")
        codes = manifold_codes(grid_size, extent)
        z1, z2 = codes[:grid_size, 0], codes[::grid_size, 1]
        fmt = "{:.2g}"
    if z1_values is not None:
        z1 = _axis_values(z1_values, grid_size, "z1_values")
    if z2_values is not None:
        z2 = _axis_values(z2_values, grid_size, "z2_values")
    idx = _tick_cells(grid_size)
    xticks = None if z1 is None else ([_centres(grid_size, w)[j] for j in idx],
                                      [fmt.format(z1[j] + 0.0) for j in idx])
    yticks = None if z2 is None else ([_centres(grid_size, h)[i] for i in idx],
                                      [fmt.format(z2[i] + 0.0) for i in idx])
    fig = _show_canvas(_tile(imgs, grid_size, grid_size, (h, w)), title,
                       xticks=xticks, yticks=yticks, xlabel="z1", ylabel="z2")
    return _save(fig, path)


# --------------------------------------------------------------------------------------
# Curves and charts.
# --------------------------------------------------------------------------------------

def _series(history: Sequence[Mapping[str, float]], key: str) -> tuple[list, list]:
    """(epochs, values) of `key` over the epochs of `history` that recorded it."""
    points = [(h.get("epoch", i + 1), h[key]) for i, h in enumerate(history)
              if h.get(key) is not None]
    return [p[0] for p in points], [float(p[1]) for p in points]


def _check_history(history: Any, name: str = "history") -> None:
    if (isinstance(history, Mapping) or not isinstance(history, Sequence) or len(history) == 0
            or not all(isinstance(h, Mapping) for h in history)):
        raise ValueError(f"{name} must be a non-empty list of dicts, one per epoch")
    if not any(k in h for h in history for k in ("train_recon", "test_recon", "train_loss", "test_loss")):
        raise ValueError(f"{name} has no 'train_recon'/'test_recon'/'train_loss'/'test_loss' key")


def _has(history: Sequence[Mapping], *keys: str) -> bool:
    return any(h.get(k) is not None for h in history for k in keys)


def _style_curve_axes(ax, title: str, ylabel: str, epochs: Sequence[float]) -> None:
    """Title, labels, grid; whole-number epoch ticks (each epoch ticked when there are few)."""
    from matplotlib.ticker import MaxNLocator
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    if len(set(epochs)) <= 10:
        ax.set_xticks(sorted(set(epochs)))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


# The unit of the reconstruction term of each likelihood (npvae.losses): the Bernoulli
# cross-entropy is a negative log-likelihood in nats; the L2 loss, a sum of squared errors over
# the pixels, is not (it is -log N(x; x_hat, I/2) minus a constant, see npvae.evaluate).
RECON_UNITS = {"l2": "sum of squared errors per image", "bernoulli": "nats per image"}
KL_UNIT = "nats per image"


def _recon_label(likelihood: str | None, explicit: str | None, fallback: str) -> str:
    """The y label of a reconstruction panel: `explicit`, else the likelihood's unit, else `fallback`."""
    if likelihood is not None and likelihood not in RECON_UNITS:
        raise ValueError(f"likelihood must be one of {sorted(RECON_UNITS)} or None, got {likelihood!r}")
    if explicit:
        return explicit
    return RECON_UNITS[likelihood] if likelihood is not None else fallback


def training_curves(history: Sequence[Mapping[str, float]], path: str | Path, *,
                    title: str | None = None, ylabel: str | None = None,
                    likelihood: str | None = None, recon_ylabel: str | None = None) -> Path:
    """Plot per-epoch losses: reconstruction (left) and KL (right), train solid, test dashed.

    history: list of dicts like {"epoch", "train_recon", "train_kl", "test_recon", ...};
    KL and test keys may be missing (autoencoder / no test set). Without recon keys the
    total "train_loss"/"test_loss" is drawn instead.

    Units: the KL panel is in nats per image. The reconstruction panel's unit depends on the
    likelihood: likelihood="l2" labels it "sum of squared errors per image" (the L2 loss is
    not in nats), "bernoulli" "nats per image"; with neither it is "reconstruction loss per
    image". recon_ylabel sets the reconstruction panel's label directly; ylabel sets the
    label of every panel (recon_ylabel, when given, still wins on the reconstruction panel).
    """
    _check_history(history)
    has_kl = _has(history, "train_kl", "test_kl")
    base = "recon" if _has(history, "train_recon", "test_recon") else "loss"
    fallback = "reconstruction loss per image" if base == "recon" else "loss per image"
    first_label = _recon_label(likelihood, recon_ylabel or ylabel, fallback)
    if base == "loss" and has_kl:   # a VAE's total loss recon + beta * KL has no single unit
        first_label = recon_ylabel or ylabel or fallback
    panels = [(base, "reconstruction term" if base == "recon" else "loss", first_label)]
    if has_kl:
        panels.append(("kl", "KL term  KL(q(z|x) || p(z))", ylabel or KL_UNIT))
    fig = _new_figure((4.6 * len(panels), 3.6), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    marker = "o" if len(history) <= 40 else None
    for ax, (key, panel_title, panel_ylabel) in zip(axes, panels):
        seen: list[float] = []
        for split, style in (("train", "-"), ("test", "--")):
            epochs, values = _series(history, f"{split}_{key}")
            if values:
                ax.plot(epochs, values, style, marker=marker, markersize=4, label=split)
                seen += epochs
        _style_curve_axes(ax, panel_title, panel_ylabel, seen)
        ax.legend()
    if len(panels) == 1:  # an autoencoder: one panel, one title
        axes[0].set_title(title or "Training curves")
    else:
        fig.suptitle(title or "Training curves: reconstruction vs KL")
    return _save(fig, path)


def beta_curves(histories: Mapping[str, Sequence[Mapping[str, float]]], path: str | Path, *,
                title: str | None = None, split: str | None = None,
                likelihood: str | None = None, recon_ylabel: str | None = None) -> Path:
    """Compare runs {label: history}: reconstruction panel and KL panel, one line per run.

    split: "train" or "test"; by default "test" when every run recorded it, else "train".
    The KL panel is in nats per image; the reconstruction panel is labelled as in
    `training_curves`: by likelihood ("l2": sum of squared errors per image, "bernoulli":
    nats per image, None: "reconstruction loss per image"), or directly by recon_ylabel.
    """
    if not isinstance(histories, Mapping) or len(histories) == 0:
        raise ValueError("histories must be a non-empty dict {run label: history}")
    for label, hist in histories.items():
        _check_history(hist, name=f"histories[{label!r}]")
    if split is None:
        split = "test" if all(_has(h, "test_recon", "test_loss") for h in histories.values()) else "train"
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    recon_label = _recon_label(likelihood, recon_ylabel, "reconstruction loss per image")
    has_kl = any(_has(h, f"{split}_kl") for h in histories.values())
    panels = [("recon", f"reconstruction term ({split})", recon_label)]
    if has_kl:
        panels.append(("kl", f"KL term ({split})", KL_UNIT))
    fig = _new_figure((4.6 * len(panels), 3.6), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (key, panel_title, panel_ylabel) in zip(axes, panels):
        seen: list[float] = []
        for label, hist in histories.items():
            wanted = key if key == "kl" or _has(hist, f"{split}_recon") else "loss"
            epochs, values = _series(hist, f"{split}_{wanted}")
            ax.plot(epochs, values, marker="o" if len(values) <= 40 else None,
                    markersize=4, label=label)
            seen += epochs
        _style_curve_axes(ax, panel_title, panel_ylabel, seen)
    axes[-1].legend(title="run", loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle(title or "Reconstruction vs KL across runs")
    return _save(fig, path)


def _check_ellipses(ellipses: Any) -> list[tuple[np.ndarray, np.ndarray, str | None]]:
    """ellipses items (mu, sigma) or (mu, sigma, name) -> [(mu (2,), sigma (2,), name or None)]."""
    out = []
    for i, item in enumerate(ellipses or []):
        if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
            raise ValueError(f"ellipses[{i}] must be (mu, sigma) or (mu, sigma, name)")
        mu, sigma = np.asarray(item[0], dtype=float), np.asarray(item[1], dtype=float)
        name = item[2] if len(item) == 3 else None
        if (mu.shape != (2,) or sigma.shape != (2,) or not np.all(np.isfinite(mu))
                or not np.all(np.isfinite(sigma)) or np.any(sigma < 0)):
            raise ValueError(f"ellipses[{i}] must be (mu (2,), sigma (2,)) finite with sigma >= 0, "
                             f"got shapes {mu.shape}, {sigma.shape}")
        if name is not None and not isinstance(name, str):
            raise ValueError(f"ellipses[{i}]: the name must be a str, got {type(name).__name__}")
        out.append((mu, sigma, name))
    return out


def _check_points(points: Any) -> list[tuple[np.ndarray, str]]:
    """points items (z, name) -> [(z (2,), name)]."""
    out = []
    for i, item in enumerate(points or []):
        if not isinstance(item, (tuple, list)) or len(item) != 2 or not isinstance(item[1], str):
            raise ValueError(f"points[{i}] must be (z (2,), name: str)")
        z = np.asarray(item[0], dtype=float)
        if z.shape != (2,) or not np.all(np.isfinite(z)):
            raise ValueError(f"points[{i}]: z must be finite with shape (2,), got {z.shape}")
        out.append((z, item[1]))
    return out


def _check_paths(paths: Any) -> list[np.ndarray]:
    """paths items (T, 2) with T >= 2 -> float arrays."""
    out = []
    for i, item in enumerate(paths or []):
        arr = np.asarray(item, dtype=float)
        if arr.ndim != 2 or arr.shape[1] != 2 or len(arr) < 2:
            raise ValueError(f"paths[{i}] must have shape (T, 2) with T >= 2 points, got {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"paths[{i}] contains NaN or infinite values")
        out.append(arr)
    return out


def _group_nearby(points: list[tuple[np.ndarray, str]], near: float) -> list[tuple[np.ndarray, list[str]]]:
    """Group points closer than `near` to a group's first point: [(position, [names])]."""
    groups: list[tuple[np.ndarray, list[str]]] = []
    for z, name in points:
        group = next((g for g in groups if np.linalg.norm(g[0] - z) < near), None)
        if group is None:
            groups.append((z, [name]))
        else:
            group[1].append(name)
    return groups


def latent_scatter(codes: Any, labels: Any, path: str | Path, *, title: str | None = None,
                   ellipses: Sequence[tuple] | None = None,
                   class_names: Sequence[str] | None = None,
                   points: Sequence[tuple[Any, str]] | None = None,
                   points_label: str | None = None,
                   paths: Sequence[Any] | None = None,
                   xlabel: str = "z1", ylabel: str = "z2",
                   legend_title: str | None = None,
                   max_points: int | None = None) -> Path:
    """Scatter 2-D codes (N, 2) coloured by integer labels (N,), with a class legend.

    ellipses: optional list of (mu (2,), sigma (2,)) or (mu (2,), sigma (2,), name) drawn as
        axis-aligned mu +- 2 sigma ellipses with their centres marked (e.g. the encoder's
        q(z|x) for a few images); a name is written at the ellipse's upper right.
    points: optional list of (z (2,), name), each marked with a black star and labelled with
        its name; points closer than 4 % of the codes' range share one label ("1, 7").
        points_label: the legend entry of the stars (none by default).
    paths: optional list of (T, 2) arrays (T >= 2), drawn as black lines through their T
        points with an arrow head at the end (e.g. a code moved toward another).
    xlabel, ylabel: the axis labels ("PC1"/"PC2" for a PCA projection, say).
    legend_title: the title of the class legend (default "class").
    max_points: draw only a random subset of this many codes (a smaller, lighter PNG);
        the legend still lists every class.
    """
    codes = np.asarray(codes, dtype=float)
    labels = np.asarray(labels)
    if codes.ndim != 2 or codes.shape[1] != 2:
        raise ValueError(f"codes must have shape (N, 2), got {codes.shape}")
    if labels.ndim != 1 or len(labels) != len(codes):
        raise ValueError(f"labels must have shape (N,) = ({len(codes)},) to match codes, got {labels.shape}")
    if len(codes) == 0 or not np.all(np.isfinite(codes)):
        raise ValueError("codes must be non-empty and finite")
    if labels.dtype.kind not in "biuf" or not np.all(np.mod(labels, 1) == 0):
        raise ValueError(f"labels must be integer class ids, got dtype {labels.dtype}")
    labels = labels.astype(int)
    classes = np.unique(labels)
    if class_names is not None and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise ValueError(f"class_names has {len(class_names)} names but labels go up to {labels.max()}")
    triples = _check_ellipses(ellipses)
    marked = _check_points(points)
    lines = _check_paths(paths)
    if max_points is not None and (isinstance(max_points, bool) or not isinstance(max_points, (int, np.integer))
                                   or max_points < 1):
        raise ValueError(f"max_points must be a positive int or None, got {max_points!r}")

    fig = _new_figure((6.4, 5.4), layout="constrained")  # (raises the ImportError if needed)
    from matplotlib import colormaps
    from matplotlib.lines import Line2D
    from matplotlib.patches import Ellipse
    from matplotlib.ticker import MaxNLocator
    ax = fig.add_subplot()
    # A random order, so no class is painted last, on top; with max_points, a random subset.
    order = np.random.default_rng(0).permutation(len(codes))[:max_points]
    handles = []
    if len(classes) <= 10:  # distinct tab10 colours, named in a legend
        colour_of = {c: colormaps["tab10"](i) for i, c in enumerate(classes)}
        ax.scatter(codes[order, 0], codes[order, 1], s=5, alpha=0.6, linewidths=0,
                   c=[colour_of[c] for c in labels[order]])
        handles = [Line2D([], [], linestyle="", marker="o", color=colour_of[c],
                          label=class_names[c] if class_names is not None else str(c))
                   for c in classes]
    else:  # too many classes for distinct colours: a continuous colour bar
        dots = ax.scatter(codes[order, 0], codes[order, 1], s=5, alpha=0.6, linewidths=0,
                          c=labels[order], cmap="viridis")
        fig.colorbar(dots, ax=ax, label=legend_title or "class", ticks=MaxNLocator(integer=True))
    for mu, sigma, name in triples:
        ax.add_patch(Ellipse((mu[0], mu[1]), 4 * sigma[0], 4 * sigma[1], fill=False,
                             edgecolor="black", linewidth=1.2))
        ax.plot(mu[0], mu[1], "k+", markersize=9)
        if name:
            ax.annotate(name, (mu[0], mu[1]), xytext=(mu[0] + 2 * sigma[0], mu[1] + 2 * sigma[1]),
                        fontsize=11, fontweight="bold", ha="left", va="bottom")
    if triples:
        handles.append(Line2D([], [], linestyle="", marker="+", markersize=9, color="black",
                              label="mu ± 2 sigma"))
    for p in lines:
        ax.plot(p[:, 0], p[:, 1], "-", color="black", linewidth=1.0)
        ax.plot(p[:, 0], p[:, 1], "o", color="black", markersize=2)
        ax.annotate("", xy=(p[-1, 0], p[-1, 1]), xytext=(p[-2, 0], p[-2, 1]),
                    arrowprops=dict(arrowstyle="->", color="black", lw=1.5))
    for z, _ in marked:
        ax.plot(z[0], z[1], "k*", markersize=13, markeredgecolor="white")
    near = 0.04 * float(np.ptp(codes, axis=0).max())   # stars closer than this share one label
    for z, names in _group_nearby(marked, near):
        ax.annotate(", ".join(names), (z[0], z[1]), xytext=(5, 5), textcoords="offset points",
                    fontsize=10, fontweight="bold",
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.75))
    if marked and points_label:
        handles.append(Line2D([], [], linestyle="", marker="*", markersize=10, color="black",
                              label=points_label))
    if handles:
        ax.legend(handles=handles, title=(legend_title or "class") if len(classes) <= 10 else None,
                  loc="center left", bbox_to_anchor=(1.02, 0.5))
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.set_title(title or "Latent codes")
    return _save(fig, path)


def bar_chart(values: Mapping[str, float], path: str | Path, *, title: str | None = None,
              ylabel: str | None = None) -> Path:
    """Draw {name: value} as labelled bars with each value printed on its bar."""
    if not isinstance(values, Mapping) or len(values) == 0:
        raise ValueError("values must be a non-empty dict {name: number}")
    names = [str(k) for k in values]
    numbers = np.asarray(list(values.values()), dtype=float)
    if not np.all(np.isfinite(numbers)):
        raise ValueError("values must all be finite numbers")
    fig = _new_figure((max(4.0, 1.0 + 0.9 * len(names)), 3.8), layout="constrained")
    ax = fig.add_subplot()
    bars = ax.bar(names, numbers, color=[f"C{i % 10}" for i in range(len(names))])
    ax.bar_label(bars, labels=[f"{v:.4g}" for v in numbers], padding=2, fontsize=9)
    ax.margins(y=0.15)
    ax.axhline(0.0, color="black", linewidth=0.8)
    if any(len(n) > 10 for n in names):
        ax.tick_params(axis="x", labelrotation=25)
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title or "")
    return _save(fig, path)


_LINE_PANEL_KEYS = {"series", "title", "xlabel", "ylabel", "ylim", "hline"}


def _panel_dicts(panels: Any, known: set[str]) -> list[Mapping[str, Any]]:
    """Check that panels is a non-empty list of dicts whose keys are all in `known`; return it."""
    if isinstance(panels, Mapping) or not isinstance(panels, Sequence) or len(panels) == 0:
        raise ValueError("panels must be a non-empty list of dicts, one per panel")
    for i, panel in enumerate(panels):
        if not isinstance(panel, Mapping):
            raise ValueError(f"panels[{i}] must be a dict, got {type(panel).__name__}")
        unknown = set(panel) - known
        if unknown:
            raise ValueError(f"panels[{i}] has unknown keys {sorted(unknown)}; known: {sorted(known)}")
    return list(panels)


def _check_line_panels(panels: Any) -> list[list[tuple[str, np.ndarray, np.ndarray, dict]]]:
    """Validate line_chart panels; return each panel's series as [(label, x (T,), y (T,), style)]."""
    checked = []
    for i, panel in enumerate(_panel_dicts(panels, _LINE_PANEL_KEYS)):
        series = panel.get("series")
        if not isinstance(series, Mapping) or len(series) == 0:
            raise ValueError(f"panels[{i}]['series'] must be a non-empty dict {{label: (x, y)}}")
        rows = []
        for label, item in series.items():
            where = f"panels[{i}]['series'][{label!r}]"
            if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
                raise ValueError(f"{where} must be (x, y) or (x, y, style dict)")
            x, y = np.asarray(item[0], dtype=float), np.asarray(item[1], dtype=float)
            style = item[2] if len(item) == 3 else {}
            if x.ndim != 1 or y.shape != x.shape or len(x) == 0:
                raise ValueError(f"{where}: x and y must be 1-D of one non-zero length, "
                                 f"got shapes {x.shape} and {y.shape}")
            if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
                raise ValueError(f"{where}: x and y must be finite numbers")
            if not isinstance(style, Mapping):
                raise ValueError(f"{where}: the third item must be a dict of line options")
            rows.append((str(label), x, y, dict(style)))
        if "ylim" in panel:
            ylim = np.asarray(panel["ylim"], dtype=float)
            if ylim.shape != (2,) or not np.all(np.isfinite(ylim)) or ylim[0] >= ylim[1]:
                raise ValueError(f"panels[{i}]['ylim'] must be (low, high) with low < high, got {panel['ylim']}")
        if "hline" in panel:
            hline = panel["hline"]
            try:
                level = float(hline[0]) if isinstance(hline, (tuple, list)) and len(hline) == 2 else math.nan
            except (TypeError, ValueError):
                level = math.nan
            if not math.isfinite(level):
                raise ValueError(f"panels[{i}]['hline'] must be (y: finite number, label: str), got {hline!r}")
        checked.append(rows)
    return checked


def line_chart(panels: Sequence[Mapping[str, Any]], path: str | Path, *, title: str | None = None,
               ncols: int | None = None) -> Path:
    """Draw line plots in panels side by side (or wrapped onto rows with `ncols`).

    Each panel is a dict:
      "series": {label: (x (T,), y (T,))} or {label: (x, y, style)}, one line per entry, with
                markers; style is a dict of matplotlib line options (color, linestyle,
                marker, linewidth, ...) overriding the defaults (colour C0, C1, ... in order).
                A label starting with "_" is left out of the legend.
      optional: "title", "xlabel", "ylabel"; "ylim": (low, high); "hline": (y, label), a
                dotted grey reference level named in the legend.
    ncols: panels per row (default: all on one row); the last row may be partly empty.
    """
    checked = _check_line_panels(panels)
    ncols = len(panels) if ncols is None else ncols
    if isinstance(ncols, bool) or not isinstance(ncols, (int, np.integer)) or ncols < 1:
        raise ValueError(f"ncols must be a positive int, got {ncols!r}")
    ncols = min(int(ncols), len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = _new_figure((4.6 * ncols, 3.7 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    for ax, panel, rows in zip(axes, panels, checked):
        for i, (label, x, y, style) in enumerate(rows):
            ax.plot(x, y, **{"marker": "o", "markersize": 4, "color": f"C{i % 10}", **style},
                    label=label)
        if "hline" in panel:
            level, label = panel["hline"]
            ax.axhline(float(level), color="grey", linestyle=":", label=str(label))
        if "ylim" in panel:
            ax.set_ylim(*panel["ylim"])
        ax.set_title(panel.get("title", ""), fontsize=10)
        ax.set_xlabel(panel.get("xlabel", ""))
        ax.set_ylabel(panel.get("ylabel", ""))
        ax.grid(alpha=0.3)
        if any(not h.get_label().startswith("_") for h in ax.get_lines()):
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def bar_panels(panels: Sequence[Mapping[str, Any]], path: str | Path, *,
               title: str | None = None) -> Path:
    """Draw labelled bars in panels side by side, each value printed on its bar.

    Each panel is a dict: "values": {name: number} (one bar each, in order); optional
    "title", "ylabel", "ylim": (bottom, top), and "colors": one matplotlib colour per bar (default C0, C1, ...).
    Panels are as wide as their number of bars, so bars have one width throughout.
    """
    checked = []
    for i, panel in enumerate(_panel_dicts(panels, {"values", "title", "ylabel", "colors", "ylim"})):
        values = panel.get("values")
        if not isinstance(values, Mapping) or len(values) == 0:
            raise ValueError(f"panels[{i}]['values'] must be a non-empty dict {{name: number}}")
        numbers = np.asarray(list(values.values()), dtype=float)
        if numbers.ndim != 1 or not np.all(np.isfinite(numbers)):
            raise ValueError(f"panels[{i}]['values'] must all be finite numbers")
        colors = panel.get("colors")
        if colors is not None and len(colors) != len(numbers):
            raise ValueError(f"panels[{i}]['colors'] has {len(colors)} colours for {len(numbers)} bars")
        checked.append(([str(k) for k in values], numbers,
                        list(colors) if colors is not None else [f"C{j % 10}" for j in range(len(numbers))]))
    sizes = [len(names) for names, _, _ in checked]
    fig = _new_figure((0.62 * sum(sizes) + 1.3 * len(panels), 4.2), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False, width_ratios=[n + 1 for n in sizes])[0]
    for ax, panel, (names, numbers, colors) in zip(axes, panels, checked):
        bars = ax.bar(range(len(names)), numbers, color=colors)
        ax.bar_label(bars, labels=[f"{v:.3g}" for v in numbers], padding=2, fontsize=8)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.margins(y=0.15)
        if (numbers < 0).any():
            ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_ylabel(panel.get("ylabel", ""))
        ax.set_title(panel.get("title", ""), fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        if panel.get("ylim") is not None:
            ax.set_ylim(*panel["ylim"])
    if title:
        fig.suptitle(title)
    return _save(fig, path)
