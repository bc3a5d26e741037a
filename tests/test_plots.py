"""Tests for npvae.plots: every figure is a valid, sensibly sized PNG; tiling and validation are exact."""

import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("matplotlib")

from npvae import plots  # noqa: E402  (after the importorskip on purpose)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """Check the PNG signature and return (width, height) read from the IHDR chunk."""
    data = Path(path).read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def assert_sensible_png(path: Path) -> None:
    width, height = png_size(path)
    assert 100 <= width <= 4000 and 100 <= height <= 4000, (width, height)
    assert path.stat().st_size < 1_000_000


@pytest.fixture
def images() -> np.ndarray:
    """20 flat 28x28 'digits': a bright square on black, moving with the index."""
    out = np.zeros((20, 28, 28))
    for k in range(20):
        out[k, 4 + k // 2:12 + k // 2, 6:14 + k // 2] = 1.0
    return out.reshape(20, 784)


def history(epochs: int = 3, kl: bool = True, test: bool = True) -> list[dict]:
    rows = []
    for e in range(1, epochs + 1):
        row = {"epoch": e, "train_loss": 150.0 / e, "train_recon": 140.0 / e}
        if kl:
            row["train_kl"] = 10.0 + e
        if test:
            row.update(test_loss=155.0 / e, test_recon=145.0 / e)
            if kl:
                row["test_kl"] = 10.5 + e
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- _tile

def test_tile_places_each_image_with_padding():
    imgs = np.arange(1, 6)[:, None, None] * np.ones((5, 2, 2))  # image k is all (k + 1)
    imgs[0, 0, 1] = 9.0  # an asymmetric pixel, to catch transposes
    canvas = plots._tile(imgs, nrows=2, ncols=3, image_shape=(2, 2), pad=1, pad_value=-1.0)
    assert canvas.shape == (2 * 2 + 1, 3 * 2 + 2)
    expected = np.array([
        [1, 9, -1, 2, 2, -1, 3, 3],
        [1, 1, -1, 2, 2, -1, 3, 3],
        [-1, -1, -1, -1, -1, -1, -1, -1],
        [4, 4, -1, 5, 5, -1, -1, -1],   # the 6th cell is unused: pad value
        [4, 4, -1, 5, 5, -1, -1, -1],
    ], dtype=float)
    np.testing.assert_array_equal(canvas, expected)


def test_tile_reshapes_flat_input_and_allows_no_padding():
    flat = np.arange(12, dtype=float).reshape(2, 6)  # two 2x3 images
    canvas = plots._tile(flat, 1, 2, (2, 3), pad=0)
    np.testing.assert_array_equal(canvas, np.hstack([flat[0].reshape(2, 3), flat[1].reshape(2, 3)]))


@settings(max_examples=30, deadline=None)
@given(nrows=st.integers(1, 4), ncols=st.integers(1, 4), h=st.integers(1, 4),
       w=st.integers(1, 4), pad=st.integers(0, 2), data=st.data())
def test_tile_every_image_recoverable_from_its_cell(nrows, ncols, h, w, pad, data):
    n = data.draw(st.integers(0, nrows * ncols))
    imgs = np.random.default_rng(n).random((n, h, w))
    canvas = plots._tile(imgs, nrows, ncols, (h, w), pad=pad, pad_value=7.0)
    assert canvas.shape == (nrows * h + (nrows - 1) * pad, ncols * w + (ncols - 1) * pad)
    for k in range(n):
        top, left = (k // ncols) * (h + pad), (k % ncols) * (w + pad)
        np.testing.assert_array_equal(canvas[top:top + h, left:left + w], imgs[k])
    assert np.sum(canvas == 7.0) == canvas.size - n * h * w  # everything else is padding


def test_tile_rejects_too_many_images_and_wrong_pixel_count():
    with pytest.raises(ValueError, match="do not fit"):
        plots._tile(np.zeros((7, 4)), 2, 3, (2, 2))
    with pytest.raises(ValueError, match="783 pixels"):
        plots._tile(np.zeros((2, 783)), 1, 2, (28, 28))


# ----------------------------------------------------------------------------- every figure

def test_every_function_writes_a_png_and_returns_its_path(tmp_path, images):
    rng = np.random.default_rng(0)
    labels = np.arange(200) % 10
    codes = rng.normal(size=(200, 2)) + labels[:, None]
    calls = {
        "grid.png": lambda p: plots.image_grid(images, p, title="grid"),
        "rows.png": lambda p: plots.image_rows([images[:8], images[8:13]], p,
                                               row_labels=["test images", "AE reconstructions"]),
        "recon.png": lambda p: plots.reconstructions(images[:6], 1 - images[:6], p),
        "interp.png": lambda p: plots.interpolation_grid(images[:12].reshape(2, 6, 784), p,
                                                         row_labels=["a", "b"], title="paths"),
        "curves.png": lambda p: plots.training_curves(history(5), p, title="VAE"),
        "beta.png": lambda p: plots.beta_curves({"beta=1": history(4), "beta=4": history(4)}, p),
        "scatter.png": lambda p: plots.latent_scatter(
            codes, labels, p, title="codes", ellipses=[(np.zeros(2), np.array([0.5, 1.0]))]),
        "manifold.png": lambda p: plots.latent_manifold(images[:16], p, grid_size=4,
                                                        extent=(-2, 2, -2, 2), title="manifold"),
        "bar.png": lambda p: plots.bar_chart({"AE": 0.02, "VAE": 85.3}, p, title="numbers",
                                             ylabel="nats"),
    }
    for name, draw in calls.items():
        out = draw(str(tmp_path / name))  # a str path in, a Path out
        assert isinstance(out, Path) and out == tmp_path / name
        assert_sensible_png(out)


def test_parent_directories_are_created(tmp_path, images):
    out = plots.image_grid(images[:4], tmp_path / "a" / "b" / "grid.png")
    assert out.parent.is_dir()
    assert_sensible_png(out)


def test_image_grid_layout_and_3d_input(tmp_path, images):
    square = images.reshape(20, 28, 28)
    out = plots.image_grid(square[:6], tmp_path / "g.png", nrows=2,
                           row_labels=["first", "second"])
    wide = plots.image_grid(square[:6], tmp_path / "w.png", nrows=1)
    (w2, h2), (w1, h1) = png_size(out), png_size(wide)
    assert w1 / h1 > w2 / h2  # one row of 6 is wider than two rows of 3
    small = plots.image_grid(np.random.rand(3, 64), tmp_path / "s.png", image_shape=(8, 8))
    assert_sensible_png(small)


def test_latent_scatter_many_classes_and_class_names(tmp_path):
    rng = np.random.default_rng(1)
    out = plots.latent_scatter(rng.normal(size=(300, 2)), rng.integers(0, 15, 300),
                               tmp_path / "many.png")
    assert_sensible_png(out)
    out = plots.latent_scatter(rng.normal(size=(30, 2)), np.arange(30) % 3, tmp_path / "n.png",
                               class_names=["zero", "one", "two"])
    assert_sensible_png(out)


def test_training_curves_autoencoder_and_single_epoch(tmp_path):
    ae = plots.training_curves(history(4, kl=False), tmp_path / "ae.png")
    one = plots.training_curves(history(1), tmp_path / "one.png")
    only_loss = plots.training_curves([{"epoch": 1, "train_loss": 0.05}], tmp_path / "loss.png")
    for out in (ae, one, only_loss):
        assert_sensible_png(out)
    # The AE figure has a single panel, the VAE figure two: the VAE one is wider.
    assert png_size(one)[0] > 1.5 * png_size(ae)[0]


def test_beta_curves_without_test_keys(tmp_path):
    runs = {"beta=0.5": history(3, test=False), "beta=2": history(3, test=False)}
    assert_sensible_png(plots.beta_curves(runs, tmp_path / "b.png", title="beta"))


# ----------------------------------------------------------------------------- validation

def test_validation_errors_name_the_problem(tmp_path, images):
    out = tmp_path / "x.png"
    cases = [
        (lambda: plots.image_grid(np.zeros((3, 783)), out), "783 pixels"),
        (lambda: plots.image_grid(np.zeros(784), out), "shape"),
        (lambda: plots.image_grid(images[:4], out, nrows=2, row_labels=["a"]), "row_labels"),
        (lambda: plots.image_grid(images[:9], out, nrows=2, ncols=2), "do not fit"),
        (lambda: plots.image_grid(np.full((2, 784), np.nan), out), "NaN"),
        (lambda: plots.image_rows([images[:3]], out, row_labels=["a", "b"]), "row_labels"),
        (lambda: plots.reconstructions(images[:3], images[:4], out), "differ"),
        (lambda: plots.interpolation_grid(images, out), "paths_images"),
        (lambda: plots.latent_manifold(images[:15], out, grid_size=4), "grid_size"),
        (lambda: plots.latent_scatter(np.zeros((5, 2)), np.zeros(4), out), "labels"),
        (lambda: plots.latent_scatter(np.zeros((5, 3)), np.zeros(5), out), "codes"),
        (lambda: plots.latent_scatter(np.zeros((2, 2)), [0, 1], out,
                                      ellipses=[(np.zeros(3), np.ones(2))]), "ellipses"),
        (lambda: plots.latent_scatter(np.zeros((2, 2)), [0, 5], out, class_names=["a"]),
         "class_names"),
        (lambda: plots.training_curves([], out), "non-empty"),
        (lambda: plots.training_curves([{"epoch": 1}], out), "train_recon"),
        (lambda: plots.beta_curves({}, out), "non-empty"),
        (lambda: plots.bar_chart({}, out), "non-empty"),
        (lambda: plots.bar_chart({"a": float("inf")}, out), "finite"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    assert not out.exists()  # nothing is written for bad input


# ----------------------------------------------------------------------------- matplotlib is optional

def test_missing_matplotlib_gives_a_clear_import_error(tmp_path, images, monkeypatch):
    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    with pytest.raises(ImportError, match=r"pip install 'npvae\[plot\]'"):
        plots.image_grid(images[:4], tmp_path / "g.png")
    with pytest.raises(ImportError, match="figures need matplotlib"):
        plots.latent_scatter(np.zeros((3, 2)), [0, 1, 2], tmp_path / "s.png")


def test_importing_the_module_does_not_import_matplotlib():
    code = "import sys, npvae.plots; print('matplotlib' in sys.modules)"
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                            text=True, check=True)
    assert result.stdout.strip() == "False"


def test_manifold_codes_match_the_manifold_layout():
    codes = plots.manifold_codes(3, (-1.0, 1.0, -2.0, 2.0))
    assert codes.shape == (9, 2)
    np.testing.assert_array_equal(codes[:3], [[-1, 2], [0, 2], [1, 2]])  # top row: largest z2
    np.testing.assert_array_equal(codes[6:], [[-1, -2], [0, -2], [1, -2]])


# ----------------------------------------------------------------------------- line and bar panels

def line_panels() -> list[dict]:
    x = np.linspace(0, 1, 6)
    return [{"title": "two series", "xlabel": "t", "ylabel": "value",
             "series": {"up": (x, x ** 2), "down": (x, 1 - x, {"color": "0.5", "linestyle": "--"})},
             "hline": (0.5, "reference"), "ylim": (0, 1.05)},
            {"title": "hidden label", "series": {"_no legend": (x, np.sin(x))}},
            {"series": {"one point": ([1.0], [2.0])}}]


def test_line_chart_writes_a_png_and_wraps_panels(tmp_path):
    one_row = plots.line_chart(line_panels(), str(tmp_path / "row.png"), title="lines")
    assert isinstance(one_row, Path) and one_row == tmp_path / "row.png"
    wrapped = plots.line_chart(line_panels(), tmp_path / "wrap.png", title="lines", ncols=2)
    for out in (one_row, wrapped):
        assert_sensible_png(out)
    (w1, h1), (w2, h2) = png_size(one_row), png_size(wrapped)
    assert w1 > w2 and h2 > 1.5 * h1        # 3 panels in a row vs 2 + 1 on two rows
    # ncols larger than the number of panels is the single row
    assert png_size(plots.line_chart(line_panels()[:1], tmp_path / "one.png", ncols=4))[0] < w1


def test_bar_panels_writes_a_png_sized_by_its_bars(tmp_path):
    small = plots.bar_panels([{"values": {"AE": 0.02, "VAE": 0.03}, "title": "recon",
                               "ylabel": "error", "colors": ["C0", "C1"]}],
                             str(tmp_path / "small.png"), title="numbers")
    assert isinstance(small, Path) and small == tmp_path / "small.png"
    big = plots.bar_panels([{"values": {"a": 1.0, "b": -2.0, "c": 3.5}, "title": "signed"},
                            {"values": {f"bar {k}": float(k) for k in range(6)}, "ylabel": "count"}],
                           tmp_path / "big.png")
    for out in (small, big):
        assert_sensible_png(out)
    assert png_size(big)[0] > 1.5 * png_size(small)[0]   # 9 bars in two panels vs 2 bars


# ----------------------------------------------------------------------------- units of the loss curves

def axis_labels_drawn(monkeypatch) -> list[str]:
    """Record the y labels that plots sets (via _style_curve_axes), in order."""
    seen: list[str] = []
    original = plots._style_curve_axes

    def spy(ax, title, ylabel, epochs):
        seen.append(ylabel)
        original(ax, title, ylabel, epochs)
    monkeypatch.setattr(plots, "_style_curve_axes", spy)
    return seen


def test_training_curves_label_the_reconstruction_unit_by_likelihood(tmp_path, monkeypatch):
    seen = axis_labels_drawn(monkeypatch)
    cases = [
        ({"likelihood": "l2"}, ["sum of squared errors per image", "nats per image"]),
        ({"likelihood": "bernoulli"}, ["nats per image", "nats per image"]),
        ({}, ["reconstruction loss per image", "nats per image"]),   # unknown unit: no "nats" claimed
        ({"likelihood": "l2", "recon_ylabel": "L2 loss"}, ["L2 loss", "nats per image"]),
        ({"ylabel": "loss", "likelihood": "l2"}, ["loss", "loss"]),  # ylabel: every panel, as before
    ]
    for k, (kwargs, expected) in enumerate(cases):
        seen.clear()
        assert_sensible_png(plots.training_curves(history(3), tmp_path / f"c{k}.png", **kwargs))
        assert seen == expected, kwargs
    seen.clear()
    assert_sensible_png(plots.training_curves(history(3, kl=False), tmp_path / "ae.png", likelihood="l2"))
    assert seen == ["sum of squared errors per image"]               # an autoencoder: one panel


def test_beta_curves_label_the_reconstruction_unit_by_likelihood(tmp_path, monkeypatch):
    seen = axis_labels_drawn(monkeypatch)
    runs = {"beta=1": history(3), "beta=4": history(3)}
    for k, (kwargs, expected) in enumerate([
            ({"likelihood": "l2"}, ["sum of squared errors per image", "nats per image"]),
            ({"likelihood": "bernoulli"}, ["nats per image", "nats per image"]),
            ({"recon_ylabel": "squared error"}, ["squared error", "nats per image"]),
            ({}, ["reconstruction loss per image", "nats per image"])]):
        seen.clear()
        assert_sensible_png(plots.beta_curves(runs, tmp_path / f"b{k}.png", **kwargs))
        assert seen == expected, kwargs


# ----------------------------------------------------------------------------- latent_manifold ticks

def manifold_ticks(monkeypatch) -> dict:
    """Record the xticks/yticks that latent_manifold hands to _show_canvas."""
    seen: dict = {}
    original = plots._show_canvas

    def spy(canvas, title, **kwargs):
        seen.update(kwargs)
        return original(canvas, title, **kwargs)
    monkeypatch.setattr(plots, "_show_canvas", spy)
    return seen


def test_latent_manifold_ticks_from_z_values(tmp_path, monkeypatch):
    seen = manifold_ticks(monkeypatch)
    grid = 20
    q = np.sort(np.random.default_rng(0).normal(size=grid))       # an uneven grid
    imgs = np.random.default_rng(1).random((grid * grid, 16))
    out = plots.latent_manifold(imgs, str(tmp_path / "m.png"), grid_size=grid, image_shape=(4, 4),
                                z1_values=q, z2_values=q[::-1], title="quantiles")
    assert isinstance(out, Path) and out == tmp_path / "m.png"
    assert_sensible_png(out)
    (xpos, xlab), (ypos, ylab) = seen["xticks"], seen["yticks"]
    cells = [int(round(p / 5)) for p in xpos]           # a 4-px tile + 1 px of padding per cell
    assert cells == [0, 4, 8, 11, 15, 19]                # a few cells, symmetric about the middle
    assert xlab == [f"{q[j]:.3g}" for j in cells]        # each tick shows its column's z1
    assert ylab == [f"{q[::-1][i]:.3g}" for i in cells]  # rows top first: the largest z2 on top
    assert xpos == ypos
    # only one axis given: only that axis is ticked
    plots.latent_manifold(imgs, tmp_path / "m1.png", grid_size=grid, image_shape=(4, 4), z1_values=q)
    assert seen["xticks"] is not None and seen["yticks"] is None
    # no values, no extent: no ticks
    plots.latent_manifold(imgs, tmp_path / "m0.png", grid_size=grid, image_shape=(4, 4))
    assert seen["xticks"] is None and seen["yticks"] is None


def test_latent_manifold_extent_ticks_are_unchanged_for_small_grids(tmp_path, monkeypatch, images):
    seen = manifold_ticks(monkeypatch)
    plots.latent_manifold(images[:16], tmp_path / "m.png", grid_size=4, extent=(-2, 2, -1, 1))
    assert seen["xticks"][1] == ["-2", "-0.67", "0.67", "2"]
    assert seen["yticks"][1] == ["1", "0.33", "-0.33", "-1"]


# ----------------------------------------------------------------------------- latent_scatter options

def scatter_data(n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2)
    labels = np.arange(n) % 10
    return rng.normal(size=(n, 2)) + 3 * labels[:, None] * np.array([1.0, 0.5]), labels


def test_latent_scatter_named_ellipses_points_paths_and_labels(tmp_path, monkeypatch):
    codes, labels = scatter_data()
    drawn: dict = {}
    original = plots._save

    def keep_axes(fig, path):      # look at what was drawn just before the figure is saved
        ax = fig.axes[0]
        drawn["texts"] = [t.get_text() for t in ax.texts]
        drawn["arrows"] = sum(t.arrow_patch is not None for t in ax.texts)
        drawn["ellipses"] = len(ax.patches)
        drawn["xlabel"], drawn["ylabel"] = ax.get_xlabel(), ax.get_ylabel()
        drawn["legend"] = [t.get_text() for t in ax.get_legend().get_texts()]
        drawn["legend_title"] = ax.get_legend().get_title().get_text()
        drawn["dots"] = len(ax.collections[0].get_offsets())
        return original(fig, path)
    monkeypatch.setattr(plots, "_save", keep_axes)

    paths = [np.stack([np.linspace(0, 5, 8), np.linspace(0, 2, 8)], axis=1), [[1.0, 1.0], [2.0, 0.0]]]
    out = plots.latent_scatter(
        codes, labels, str(tmp_path / "s.png"), title="everything",
        ellipses=[(codes[0], [0.5, 1.0], "1"), (codes[1], np.array([1.0, 0.2]), "2"),
                  (codes[2], [0.3, 0.3])],                                   # named and unnamed
        points=[(np.array([0.0, 0.0]), "a"), (np.array([0.01, 0.0]), "b"), (np.array([20.0, 9.0]), "c")],
        points_label="marked", paths=paths, xlabel="PC1", ylabel="PC2", legend_title="digit",
        max_points=50)
    assert isinstance(out, Path) and out == tmp_path / "s.png"
    assert_sensible_png(out)
    assert drawn["ellipses"] == 3
    assert {"1", "2"} <= set(drawn["texts"])                    # the named ellipses are labelled
    assert "a, b" in drawn["texts"] and "c" in drawn["texts"]   # nearby points share one label
    assert "a" not in drawn["texts"] and "b" not in drawn["texts"]
    assert drawn["arrows"] == len(paths)                        # an arrow head per path
    assert (drawn["xlabel"], drawn["ylabel"]) == ("PC1", "PC2")
    assert drawn["dots"] == 50                                  # max_points: a subset is drawn
    assert drawn["legend"] == [str(d) for d in range(10)] + ["mu ± 2 sigma", "marked"]
    assert drawn["legend_title"] == "digit"

    # the defaults are unchanged: z1/z2, every code, a "class" legend without extra entries
    plots.latent_scatter(codes, labels, tmp_path / "plain.png")
    assert (drawn["xlabel"], drawn["ylabel"]) == ("z1", "z2")
    assert drawn["dots"] == len(codes) and drawn["texts"] == []
    assert drawn["legend"] == [str(d) for d in range(10)] and drawn["legend_title"] == "class"


def test_latent_scatter_max_points_gives_a_smaller_png(tmp_path):
    codes, labels = scatter_data(5000)
    full = plots.latent_scatter(codes, labels, tmp_path / "full.png")
    few = plots.latent_scatter(codes, labels, tmp_path / "few.png", max_points=100)
    assert_sensible_png(few)
    assert few.stat().st_size < full.stat().st_size
    # more than N is all of them: the same picture
    same = plots.latent_scatter(codes, labels, tmp_path / "same.png", max_points=10 ** 6)
    assert same.read_bytes() == full.read_bytes()


def test_new_options_validation_errors_name_the_problem(tmp_path, images):
    out = tmp_path / "x.png"
    codes, labels = np.zeros((4, 2)), np.arange(4)
    history_ok = history(2)
    good_series = {"s": ([0, 1], [1, 2])}
    cases = [
        # latent_scatter
        (lambda: plots.latent_scatter(codes, labels, out, ellipses=[(np.zeros(2),)]), r"ellipses\[0\]"),
        (lambda: plots.latent_scatter(codes, labels, out, ellipses=[(np.zeros(2), -np.ones(2), "a")]),
         "sigma >= 0"),
        (lambda: plots.latent_scatter(codes, labels, out, ellipses=[(np.zeros(2), np.ones(2), 3)]), "name"),
        (lambda: plots.latent_scatter(codes, labels, out, points=[(np.zeros(3), "a")]), r"points\[0\]"),
        (lambda: plots.latent_scatter(codes, labels, out, points=[np.zeros(2)]), r"points\[0\]"),
        (lambda: plots.latent_scatter(codes, labels, out, paths=[np.zeros((1, 2))]), r"paths\[0\].*T >= 2"),
        (lambda: plots.latent_scatter(codes, labels, out, paths=[np.zeros((3, 3))]), r"paths\[0\]"),
        (lambda: plots.latent_scatter(codes, labels, out, paths=[np.full((3, 2), np.nan)]), "NaN"),
        (lambda: plots.latent_scatter(codes, labels, out, max_points=0), "max_points"),
        # latent_manifold
        (lambda: plots.latent_manifold(images[:16], out, grid_size=4, z1_values=np.zeros(3)),
         r"z1_values.*\(4,\)"),
        (lambda: plots.latent_manifold(images[:16], out, grid_size=4, z2_values=[0, 1, np.inf, 2]), "z2_values"),
        (lambda: plots.latent_manifold(images[:16], out, grid_size=4, extent=(-1, 1, -1, 1),
                                       z1_values=np.zeros(4)), "not both"),
        # loss curves
        (lambda: plots.training_curves(history_ok, out, likelihood="gauss"), "likelihood"),
        (lambda: plots.beta_curves({"a": history_ok}, out, likelihood="gauss"), "likelihood"),
        # line_chart
        (lambda: plots.line_chart([], out), "non-empty"),
        (lambda: plots.line_chart({"series": good_series}, out), "list of dicts"),
        (lambda: plots.line_chart([{"series": {}}], out), "series"),
        (lambda: plots.line_chart([{"series": good_series, "ylable": "x"}], out), "unknown keys"),
        (lambda: plots.line_chart([{"series": {"s": ([0, 1, 2], [1, 2])}}], out), "same|one non-zero length"),
        (lambda: plots.line_chart([{"series": {"s": ([0, 1], [1, np.nan])}}], out), "finite"),
        (lambda: plots.line_chart([{"series": {"s": ([0, 1], [1, 2], "red")}}], out), "line options"),
        (lambda: plots.line_chart([{"series": good_series, "ylim": (1, 0)}], out), "ylim"),
        (lambda: plots.line_chart([{"series": good_series, "hline": ("a", "b")}], out), "hline"),
        (lambda: plots.line_chart([{"series": good_series}], out, ncols=0), "ncols"),
        # bar_panels
        (lambda: plots.bar_panels([], out), "non-empty"),
        (lambda: plots.bar_panels([{"values": {}}], out), "values"),
        (lambda: plots.bar_panels([{"values": {"a": np.inf}}], out), "finite"),
        (lambda: plots.bar_panels([{"values": {"a": 1, "b": 2}, "colors": ["C0"]}], out), "colours for 2 bars"),
        (lambda: plots.bar_panels([{"values": {"a": 1}, "color": ["C0"]}], out), "unknown keys"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    assert not out.exists()  # nothing is written for bad input


def test_bad_grid_sizes_extents_and_file_types_are_refused(tmp_path, images):
    for rows, cols in ((0, None), (None, 0), (2, -1)):
        with pytest.raises(ValueError, match="nrows and ncols must be >= 1"):
            plots.image_grid(images[:4], tmp_path / "g.png", nrows=rows, ncols=cols)
    grid = np.zeros((9, 784))
    with pytest.raises(ValueError, match="four finite numbers"):
        plots.latent_manifold(grid, tmp_path / "m.png", grid_size=3, extent=(np.nan, 1, -1, 1))
    for name in ("g.pdf", "g.jpg", "g"):               # PNG bytes under another name would mislead
        with pytest.raises(ValueError, match=r"\.png"):
            plots.image_grid(images[:4], tmp_path / name)
        assert not (tmp_path / name).exists()
