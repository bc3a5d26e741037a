"""Tests for demos/: the maths in demos/_common.py, and every demo run end to end with --quick.

The demos are scripts, not a package: demos/ is put on sys.path to import _common, and each demo
is run as `python demos/NAME.py --quick` in a subprocess, headless, writing into a temporary
folder. All the demo runs share one temporary runs folder, so each quick model is trained once.
"""

import math
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

DEMOS_DIR = Path(__file__).resolve().parent.parent / "demos"
sys.path.insert(0, str(DEMOS_DIR))
import _common as C  # noqa: E402

# Every demo and the PNG files it must write.
FIGURES = {
    "ae_vs_vae": ["ae_vs_vae.png", "ae_vs_vae_steps.png", "ae_vs_vae_breakdown.png", "ae_vs_vae_numbers.png"],
    "cloud": ["cloud.png", "cloud_decodes.png"],
    "interpolation": ["interpolation.png", "interpolation_paths.png"],
    "latent_space": ["latent_vae.png", "latent_ae.png", "manifold_vae.png", "manifold_ae.png",
                     "latent_pca_vae.png", "latent_pca_ae.png"],
    "moving_between_clouds": ["moving_clouds.png", "moving_decodes.png", "moving_switch.png",
                              "attribute_thickness.png", "attribute_slant.png", "attribute_measured.png"],
    "generation": ["generation.png", "generation_temperature.png", "generation_numbers.png"],
    "main_job": ["train/reconstructions.png", "train/samples.png", "train/interpolation.png",
                 "train/training_curves.png"],
    "two_losses": ["two_losses.png", "two_losses_images.png"],
    "explore": ["explore.png"],
    "balance": ["balance.png", "balance_images.png"],
    "linear_vae": ["linear_vae_spectrum.png", "linear_vae_images.png"],
    "conditional": ["conditional_style_grid.png", "conditional_analogy.png", "conditional_accuracy.png"],
    "quadrants": ["quadrants_1.png", "quadrants_2.png", "quadrants_3.png"],
}
# The demos run by the default (fast) test suite; the others are marked slow (pytest -m slow).
FAST = ("cloud", "generation", "main_job")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------
# The maths in _common
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("p, z", [(0.5, 0.0), (0.975, 1.959963984540054), (0.025, -1.959963984540054),
                                  (0.8413447460685429, 1.0), (0.95, 1.6448536269514722),
                                  (0.999, 3.090232306167813), (1e-6, -4.753424308822899),
                                  (0.01, -2.3263478740408408)])
def test_inverse_normal_cdf_known_quantiles(p, z):
    assert C.inverse_normal_cdf(p) == pytest.approx(z, abs=1e-9)


def test_inverse_normal_cdf_inverts_the_cdf():
    p = np.linspace(0.001, 0.999, 999)
    z = C.inverse_normal_cdf(p)
    assert z.shape == p.shape
    phi = np.array([0.5 * (1 + math.erf(v / math.sqrt(2))) for v in z])
    np.testing.assert_allclose(phi, p, rtol=0, atol=1e-12)
    assert np.all(np.diff(z) > 0)                                   # increasing
    np.testing.assert_allclose(z, -z[::-1], atol=1e-9)             # symmetric about p = 0.5


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5])
def test_inverse_normal_cdf_rejects_probabilities_outside_0_1(bad):
    with pytest.raises(ValueError):
        C.inverse_normal_cdf([0.5, bad])


def test_slerp_unit_endpoints_stay_on_the_sphere_with_equal_angle_steps():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(20), rng.standard_normal(20)
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    t = np.linspace(0, 1, 11)
    path = C.slerp(a, b, t)                                         # (11, 20)
    np.testing.assert_allclose(path[0], a, atol=1e-12)
    np.testing.assert_allclose(path[-1], b, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(path, axis=1), 1.0, atol=1e-12)
    angles = np.arccos(np.clip(np.sum(path[1:] * path[:-1], axis=1), -1, 1))
    np.testing.assert_allclose(angles, np.arccos(a @ b) / 10, atol=1e-9)
    # the straight line, by contrast, dips inside the sphere
    assert np.linalg.norm(0.5 * (a + b)) < 1


def test_slerp_batched_and_parallel_endpoints():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    t = np.linspace(0, 1, 5)
    batched = C.slerp(a, b, t)
    assert batched.shape == (4, 5, 3)
    for i in range(4):
        np.testing.assert_allclose(batched[i], C.slerp(a[i], b[i], t), atol=1e-12)
    # parallel endpoints: the straight line, no division by sin(0)
    np.testing.assert_allclose(C.slerp(a[0], 2 * a[0], t), a[0] * (1 + t)[:, None], atol=1e-9)


def test_pca_2d_finds_the_main_axes():
    rng = np.random.default_rng(0)
    # variance 9 along e1 + e2, 4 along e3, 0.01 elsewhere, around a non-zero mean
    basis = np.eye(5)
    axis1, axis2 = (basis[0] + basis[1]) / np.sqrt(2), basis[2]
    x = (3 * rng.standard_normal((5000, 1)) * axis1 + 2 * rng.standard_normal((5000, 1)) * axis2
         + 0.1 * rng.standard_normal((5000, 5)) + 7.0)
    projected, axes, explained = C.pca_2d(x)
    assert projected.shape == (5000, 2) and axes.shape == (2, 5)
    assert abs(axes[0] @ axis1) == pytest.approx(1, abs=1e-3)
    assert abs(axes[1] @ axis2) == pytest.approx(1, abs=1e-3)
    np.testing.assert_allclose(axes @ axes.T, np.eye(2), atol=1e-12)
    np.testing.assert_allclose(projected.mean(0), 0, atol=1e-9)
    np.testing.assert_allclose(projected.var(0), [9, 4], rtol=0.06)
    assert explained[0] > explained[1] > 0 and explained.sum() < 1
    total = x.var(0).sum()
    np.testing.assert_allclose(explained, projected.var(0) / total, rtol=1e-9)


def test_nearest_training_image_is_itself_for_a_training_image():
    nearest = C.NearestTraining(quick=True)
    dist, label = nearest(nearest.x[:5])
    np.testing.assert_allclose(dist, 0, atol=1e-6)
    np.testing.assert_array_equal(label, nearest.y[:5])


def test_nearest_training_image_can_leave_out_the_image_itself():
    # a decode made from training image i must be compared with the other training images
    nearest = C.NearestTraining(quick=True)
    x = nearest.x[:5]
    dist, _ = nearest(x, chunk=2, exclude=np.arange(5))
    d2 = ((x[:, None, :] - nearest.x[None, :, :]) ** 2).mean(2)        # by brute force
    d2[np.arange(5), np.arange(5)] = np.inf
    np.testing.assert_allclose(dist, d2.min(1), rtol=1e-4)
    assert (dist > 1e-3).all()


def test_attribute_measures_on_drawn_strokes():
    from moving_between_clouds import slant, thickness
    upright, leaning, thick = np.zeros((28, 28)), np.zeros((28, 28)), np.zeros((28, 28))
    for r in range(4, 24):
        upright[r, 13] = 1                      # |
        leaning[r, 24 - r // 2 - 2] = 1         # /: two rows up, one column right
        thick[r, 12:15] = 1                     # a stroke three pixels wide
    images = np.stack([upright, leaning, thick]).reshape(3, 784)
    s = slant(images)
    assert s[0] == pytest.approx(0, abs=1e-9) and s[2] == pytest.approx(0, abs=1e-9)
    assert s[1] == pytest.approx(0.5, abs=0.05)
    t = thickness(images)
    assert t[0] == pytest.approx(1, rel=0.1) and t[2] == pytest.approx(3, rel=0.15)


# --------------------------------------------------------------------------------------------
# The demos, end to end
# --------------------------------------------------------------------------------------------

def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    """One runs folder for all the demos of this module: each quick model is trained once."""
    return tmp_path_factory.mktemp("runs")


def run_demo(name: str, out: Path, runs: Path) -> str:
    env = {**os.environ, "MPLBACKEND": "Agg"}
    result = subprocess.run([sys.executable, str(DEMOS_DIR / f"{name}.py"), "--quick", "--out", str(out),
                             "--runs", str(runs)], capture_output=True, text=True, env=env, timeout=900,
                            cwd=out)
    assert result.returncode == 0, f"demos/{name}.py failed:\n{result.stdout}\n{result.stderr}"
    for figure in FIGURES[name]:
        path = out / figure
        assert path.is_file(), f"demos/{name}.py did not write {figure}:\n{result.stdout}"
        width, height = png_size(path)
        assert width >= 100 and height >= 100, (figure, width, height)
        assert path.stat().st_size < 2_000_000
        assert f"wrote {path}" in result.stdout               # and it says where
    return result.stdout


# demos/explore.py photographs its page with Chromium (.ci/run installs it).
NEEDS_CHROMIUM = pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")),
                                    reason="demos/explore.py needs chromium (apt-get install chromium)")


def _marks(name: str) -> tuple:
    return (() if name in FAST else (pytest.mark.slow,)) + ((NEEDS_CHROMIUM,) if name == "explore" else ())


@pytest.mark.parametrize("name", [pytest.param(name, marks=_marks(name)) for name in FIGURES])
def test_demo_runs_quick_and_writes_its_figures(name, tmp_path, runs_dir):
    stdout = run_demo(name, tmp_path, runs_dir)
    assert "Done in" in stdout
    # every block of numbers says they come from small models, not the README's full runs
    assert stdout.count("\n== ") == stdout.count("(--quick: numbers of small models") >= 1, stdout
    assert "they are not the README's" in stdout


def test_quick_never_writes_the_committed_figures(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(C, "QUICK_FIGURES", tmp_path / "quick")
    monkeypatch.setattr(C, "_quick", False)
    assert C.parse_args(C.__doc__, ["--quick"]).out == tmp_path / "quick"
    assert (tmp_path / "quick").is_dir()
    assert C.parse_args(C.__doc__, []).out == C.FIGURES                # full runs make the README's figures
    for out in (C.FIGURES, C.FIGURES / "train"):
        with pytest.raises(SystemExit) as e:
            C.parse_args(C.__doc__, ["--quick", "--out", str(out)])
        assert e.value.code == 2 and "--quick would overwrite the README's figures" in capsys.readouterr().err


def test_init_comparison_quick_says_its_numbers_are_not_the_readmes(monkeypatch, capsys):
    import init_comparison
    monkeypatch.setattr(init_comparison, "run", lambda rule, seed, quick: 30.0)
    init_comparison.main(["--quick"])
    assert "these are not the README's numbers" in capsys.readouterr().out


def test_demos_reuse_a_trained_run(tmp_path, runs_dir):
    """Running a demo again finds its run in the runs folder and says so, instead of training again."""
    run_demo("cloud", tmp_path, runs_dir)
    stdout = run_demo("cloud", tmp_path, runs_dir)
    assert "reusing trained run" in stdout and "vae-l2-h400-z2" in stdout
    assert "Training VAE" not in stdout


def test_every_demo_is_listed():
    scripts = {p.stem for p in DEMOS_DIR.glob("*.py")} - {"_common", "make_figures", "init_comparison"}
    assert scripts == set(FIGURES)
    from make_figures import DEMOS, LONG
    assert set(DEMOS) | set(LONG) == set(FIGURES) and not set(DEMOS) & set(LONG)


def test_demos_draw_only_with_npvae_plots():
    """The demos use npvae's public API and npvae.plots for their figures: no matplotlib of their own."""
    for script in DEMOS_DIR.glob("*.py"):
        text = script.read_text()
        assert "import matplotlib" not in text and "from matplotlib" not in text, script.name
    for name in ("line_chart", "bar_panels", "cloud_scatter", "_figure", "_save"):
        assert not hasattr(C, name), f"_common.{name} should be gone (it is in npvae.plots)"


def test_init_comparison_baseline_is_npvae_train_and_the_rules_differ(tmp_path):
    """demos/init_comparison.py (no figures): its "pytorch" row is exactly `npvae train` with the
    same settings, and the other rules really draw other parameters."""
    import io
    import json

    import init_comparison
    from npvae.runs import train_run
    loss = init_comparison.run("pytorch", seed=0, quick=True)
    out = train_run({"epochs": 1, "train_size": 2000, "test_size": 500}, tmp_path / "run", figures=False,
                    stream=io.StringIO())
    assert loss == json.loads((out / "history.json").read_text())[-1]["test_loss"]
    others = {rule: init_comparison.run(rule, seed=0, quick=True) for rule in ("he+glorot", "he")}
    assert len({loss, *others.values()}) == 3


@pytest.mark.slow
@pytest.mark.parametrize("name", ["linear_vae", "balance"])
def test_quick_run_without_out_writes_outside_the_committed_figures(name, tmp_path, runs_dir):
    """`--quick` with the default --out writes into runs/quick-figures (C.QUICK_FIGURES), not demos/figures."""
    committed = {f: (C.FIGURES / f).stat().st_mtime_ns for f in FIGURES[name] if (C.FIGURES / f).exists()}
    env = {**os.environ, "MPLBACKEND": "Agg"}
    result = subprocess.run([sys.executable, str(DEMOS_DIR / f"{name}.py"), "--quick", "--runs", str(runs_dir)],
                            capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    for figure in FIGURES[name]:
        assert (C.QUICK_FIGURES / figure).is_file()
    assert committed == {f: (C.FIGURES / f).stat().st_mtime_ns for f in committed}
