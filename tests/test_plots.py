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
