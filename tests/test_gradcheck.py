"""Tests for npvae.gradcheck: the helpers give the right numbers, run_all and the command line pass,
and the checks do fail on a wrong backward pass."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from npvae import gradcheck, layers, losses
from npvae.gradcheck import (H, TOLERANCE, Row, away_from_kink, check_function, check_layer, check_model,
                             format_table, numerical_gradient, rel_error, run_all)
from npvae.layers import Dense, Tanh
from npvae.models import VAE, Reparameterize

REPO_ROOT = Path(__file__).resolve().parents[1]

COMPONENTS = ["Dense(5, 6)", "ReLU()", "LeakyReLU(alpha=0.01)", "Tanh()", "Sigmoid()", "Softplus()",
              "mlp(5-4-3, tanh)", "l2_reconstruction", "bernoulli_reconstruction", "kl_standard_normal",
              "softmax_cross_entropy", "Reparameterize", "Autoencoder(l2)", "VAE(l2)",
              "Autoencoder(bernoulli)", "VAE(bernoulli)", "VAE(bernoulli, relu)",
              "LabelJoin(3)", "kl_gaussians", "CVAE(l2)", "CVAE(bernoulli)", "Baseline(quadrants)", "StructuredCVAE",
              "gaussian_reconstruction", "VAE(gaussian, sigma2=learned, sigmoid)",
              "VAE(gaussian, sigma2=optimal, linear)", "VAE(gaussian, sigma2=0.3, sigmoid)",
              "Autoencoder(gaussian, learned, linear)", "linear VAE(gaussian, learned)"]


def test_constants():
    assert H == 1e-5 and TOLERANCE == 1e-6


# --------------------------------------------------------------------------------------------
# run_all and the command line
# --------------------------------------------------------------------------------------------


def test_run_all_passes_and_covers_every_component():
    rows = run_all()
    assert len(rows) > 50
    assert all(isinstance(r, Row) for r in rows)
    failing = [(r.component, r.parameter, r.error) for r in rows if not r.passed]
    assert not failing
    assert all(math.isfinite(r.error) and 0 <= r.error <= TOLERANCE for r in rows)
    assert {r.component for r in rows} == set(COMPONENTS)
    # every parameter of every model is in the table
    vae_rows = {r.parameter for r in rows if r.component == "VAE(l2)"}
    assert vae_rows == {f"{p}.{k}" for p in ("enc0", "enc1", "head", "dec0", "dec1", "dec2") for k in "Wb"}


def test_run_all_passes_for_other_seeds():
    for seed in (1, 2):
        assert all(r.passed for r in run_all(seed))


def test_command_line_gradcheck():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run([sys.executable, "-m", "npvae", "gradcheck"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for name in COMPONENTS:
        assert name in out, f"{name} missing from the table"
    header = out.splitlines()[0].split()
    assert header[:2] == ["component", "parameter"] and "result" in header
    assert "FAIL" not in out and " 0 failed" in out


# --------------------------------------------------------------------------------------------
# rel_error and numerical_gradient
# --------------------------------------------------------------------------------------------


def test_rel_error_on_hand_made_arrays():
    assert rel_error(np.array([1.0, 2.0]), np.array([1.0, 2.0])) == 0.0
    # max |a - b| = 0.1 over max (|a| + |b|) = 1 + 1.1 = 2.1
    assert rel_error(np.array([1.0]), np.array([1.1])) == pytest.approx(0.1 / 2.1, rel=1e-12)
    # the largest difference (0.5, at index 1) relative to the largest |a| + |b| (10 + 10, at index 0)
    assert rel_error(np.array([10.0, 1.0]), np.array([10.0, 1.5])) == pytest.approx(0.5 / 20, rel=1e-12)
    # opposite signs: |1 - (-1)| / (1 + 1) = 1
    assert rel_error(np.array([1.0]), np.array([-1.0])) == pytest.approx(1.0)
    # the denominator never falls below 1e-8: 1e-10 / 1e-8 = 0.01
    assert rel_error(np.zeros(2), np.array([0.0, 1e-10])) == pytest.approx(0.01, rel=1e-9)
    assert rel_error(np.zeros(3), np.zeros(3)) == 0.0
    assert rel_error(np.zeros((0, 2)), np.zeros((0, 2))) == 0.0
    assert isinstance(rel_error(np.ones(2), np.ones(2)), float)
    with pytest.raises(ValueError, match=r"\(2,\).*\(3,\)"):
        rel_error(np.zeros(2), np.zeros(3))


@settings(max_examples=40, deadline=None, database=None)
@given(a=hnp.arrays(np.float64, st.integers(1, 6), elements=st.floats(-1e3, 1e3)))
def test_rel_error_is_symmetric_and_bounded(a):
    b = a[::-1].copy()
    e = rel_error(a, b)
    assert e == rel_error(b, a)
    assert 0.0 <= e <= 1.0                   # |a - b| <= |a| + |b|


def test_numerical_gradient_of_a_cubic():
    x = np.array([[0.5, -1.0, 2.0], [3.0, 0.0, -0.25]])
    x_before = x.copy()
    grad = numerical_gradient(lambda: float(np.sum(x ** 3)), x)
    # d/dx sum(x^3) = 3 x^2; the central difference error is h^2 * f'''/6 = 1e-10 per element
    np.testing.assert_allclose(grad, 3 * x_before ** 2, rtol=1e-8, atol=1e-8)
    np.testing.assert_array_equal(x, x_before)         # x restored exactly, bit for bit
    assert grad.shape == x.shape and grad.dtype == np.float64


def test_numerical_gradient_of_a_function_of_two_arrays_differentiates_only_one():
    x, y = np.array([1.0, 2.0]), np.array([3.0, -4.0])
    # f = sum(x * y) + sum(x^2): df/dx = y + 2x = [5, 0]
    grad = numerical_gradient(lambda: float(np.sum(x * y) + np.sum(x ** 2)), x)
    np.testing.assert_allclose(grad, [5.0, 0.0], atol=1e-8)


@pytest.mark.parametrize("view", ["transposed", "column slice"])
def test_numerical_gradient_of_a_view_perturbs_the_viewed_memory(view):
    # mu is a column slice of the head's output, and W.T a transposed view: neither is
    # contiguous, and reshaping them would perturb a copy (the gradient would come out 0).
    base = np.arange(12.0).reshape(3, 4)
    x = base.T if view == "transposed" else base[:, 1:3]
    assert not x.flags.c_contiguous
    before = x.copy()
    grad = numerical_gradient(lambda: float(np.sum(x ** 2)), x)
    np.testing.assert_allclose(grad, 2 * before, atol=1e-6)             # d/dx sum(x^2) = 2x
    np.testing.assert_array_equal(x, before)


def test_numerical_gradient_refuses_float32():
    x = np.ones(3, dtype=np.float32)
    with pytest.raises(ValueError, match="float64.*float32"):
        numerical_gradient(lambda: float(x.sum()), x)


def test_away_from_kink():
    x = np.array([-1.0, -0.01, 0.0, 0.01, 2.0])
    y = away_from_kink(x, margin=0.05)
    np.testing.assert_allclose(y, [-1.05, -0.06, 0.05, 0.06, 2.05])
    assert (np.abs(away_from_kink(np.random.default_rng(0).standard_normal(1000))) >= 0.05).all()


# --------------------------------------------------------------------------------------------
# The checks can fail
# --------------------------------------------------------------------------------------------


class WrongTanh(Tanh):
    """tanh with a wrong derivative: 1 - y instead of 1 - y^2."""

    def backward(self, dout):
        return dout * (1 - self.y)


class WrongDense(Dense):
    """A dense layer that forgets to sum the bias gradient over the batch (takes row 0 only)."""

    def backward(self, dout):
        dx = super().backward(dout)
        self.grads["b"] = dout[0].copy()
        return dx


class InPlaceTanh(Tanh):
    """A correct derivative, but computed by overwriting dout."""

    def backward(self, dout):
        dout *= 1 - self.y * self.y
        return dout


def test_check_layer_catches_a_wrong_activation_derivative():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 5))
    right = check_layer(Tanh(), x, np.random.default_rng(1))
    wrong = check_layer(WrongTanh(), x, np.random.default_rng(1))
    assert right[0].passed and right[0].error < 1e-8
    assert not wrong[0].passed and wrong[0].error > 1e-3


def test_check_layer_catches_a_wrong_parameter_gradient():
    rng = np.random.default_rng(0)
    layer = WrongDense(3, 2, rng=rng, dtype=np.float64)
    rows = {r.parameter: r for r in check_layer(layer, rng.standard_normal((4, 3)), rng)}
    assert rows["x"].passed and rows["W"].passed
    assert not rows["b"].passed and rows["b"].error > 1e-3


def test_check_layer_catches_a_backward_that_writes_into_dout():
    with pytest.raises(AssertionError, match="wrote into dout"):
        check_layer(InPlaceTanh(), np.random.default_rng(0).standard_normal((3, 4)), np.random.default_rng(1))


def test_check_function_catches_a_wrong_loss_gradient():
    def l2_missing_sigmoid_slope(logits, x):
        loss, _ = losses.l2_reconstruction(logits, x)
        x_hat = layers.sigmoid(logits)
        return loss, 2 * (x_hat - x) / x.shape[0]       # forgot the factor x_hat (1 - x_hat)

    rng = np.random.default_rng(0)
    inputs = {"logits": rng.standard_normal((3, 4)), "x": rng.uniform(0, 1, (3, 4))}
    good = check_function("l2", losses.l2_reconstruction, dict(inputs))
    bad = check_function("l2 wrong", l2_missing_sigmoid_slope, dict(inputs))
    assert [r.parameter for r in good] == ["logits"] and good[0].passed
    assert not bad[0].passed and bad[0].error > 1e-3


def test_check_model_catches_the_sigma_equal_exp_logvar_bug_in_backward():
    class HalfMissing(Reparameterize):
        def backward(self, dz):
            return dz, dz * (self.sigma * self.eps)           # forgot the 0.5 of sigma = exp(0.5 logvar)

    rng = np.random.default_rng(0)
    vae = VAE(5, [4], 2, likelihood="bernoulli", activation="tanh", dtype=np.float64, rng=rng)
    x, eps = rng.uniform(0, 1, (3, 5)), rng.standard_normal((3, 2))
    assert all(r.passed for r in check_model(vae, x, eps))
    vae.reparam = HalfMissing()
    rows = {r.parameter: r for r in check_model(vae, x, eps)}
    assert not rows["head.W"].passed and rows["head.W"].error > 1e-3
    assert rows["dec0.W"].passed                            # the decoder is upstream of the bug


def test_row_and_table():
    ok, bad = Row("Thing", "W", (2, 3), 1e-9), Row("Other", "b", (3,), 2e-6)
    assert ok.passed and not bad.passed
    assert Row("Edge", "x", (1,), TOLERANCE).passed
    table = format_table([ok, bad])
    lines = table.splitlines()
    assert lines[0].split() == ["component", "parameter", "shape", "max", "rel", "error", "result"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert "Thing" in lines[2] and "1.00e-09" in lines[2] and lines[2].rstrip().endswith("pass")
    assert "Other" in lines[3] and "2.00e-06" in lines[3] and lines[3].rstrip().endswith("FAIL")


def test_main_returns_1_when_a_check_fails(monkeypatch, capsys):
    monkeypatch.setattr(gradcheck, "run_all", lambda seed=0: [Row("Broken", "W", (1,), 0.5)])
    assert gradcheck.main() == 1
    out = capsys.readouterr().out
    assert "Broken" in out and "FAIL" in out and "1 failed" in out


def test_fast_agreement_counts_every_component_and_finds_a_twin_that_differs(monkeypatch):
    from npvae import fast
    from npvae.gradcheck import fast_agreement
    same, differ = fast_agreement()
    assert len(same) == 24 and differ == []     # (Dense + 5 activations + 2 losses + 4 models) x 2 dtypes

    class SloppyTanh(fast._Tanh):               # 1 - y*y computed in another order: other rounding
        def backward(self, dout, need_dx=True):
            return dout - dout * self.y * self.y

    monkeypatch.setitem(fast.TWINS, Tanh, SloppyTanh)
    same, differ = fast_agreement()
    assert "Tanh() float32" in differ and "Tanh() float64" in differ
