"""Gradient checks: every hand-written backward pass against central differences, in float64.

For a scalar function f and each element x_i of an input,

    df/dx_i  ~=  (f(x + h e_i) - f(x - h e_i)) / (2 h),     h = 1e-5,

with an error of order h^2 (about 1e-10) plus rounding (about 1e-16 / h = 1e-11, relative to f).
The agreement is measured as

    rel_error(a, b) = max_i |a_i - b_i| / max(1e-8, max_i (|a_i| + |b_i|)),

the largest difference relative to the size of the gradient. (Dividing element by element
instead would flag elements whose true gradient is 0 and whose estimate is rounding noise.)
A correct backward pass gives errors around 1e-9 or below; a wrong one, around 1e-2 or above.
`python -m npvae gradcheck` runs `run_all` and fails if any error exceeds 1e-6.

A layer y = g(x) is checked through f(x) = sum(g(x) * R) with a fixed random R: then df/dy = R,
so `backward(R)` must return df/dx.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import cvae, fast, layers, losses
from .models import VAE, Autoencoder, Reparameterize

Array = np.ndarray
H = 1e-5
TOLERANCE = 1e-6


def rel_error(a: Array, b: Array) -> float:
    """max|a - b| / max(1e-8, max(|a| + |b|)): the relative error used by every check."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b)) / max(1e-8, float(np.max(np.abs(a) + np.abs(b)))))


def numerical_gradient(f: Callable[[], float], x: Array, h: float = H) -> Array:
    """Central-difference gradient of f() with respect to the array x, which f reads.

    x is perturbed in place, one element at a time, and restored exactly. Any memory layout
    works (a transposed or sliced view too): each element is written through its index.
    """
    if x.dtype != np.float64:
        raise ValueError(f"gradient checks need float64 (h = {h} is lost in float32 rounding), got {x.dtype}")
    grad = np.zeros(x.shape)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + h
        f_plus = f()
        x[i] = old - h
        f_minus = f()
        x[i] = old
        grad[i] = (f_plus - f_minus) / (2 * h)
    return grad


@dataclass
class Row:
    """One line of the gradient-check table."""

    component: str
    parameter: str
    shape: tuple[int, ...]
    error: float

    @property
    def passed(self) -> bool:
        return self.error <= TOLERANCE


# --------------------------------------------------------------------------------------------
# Checks for each kind of component
# --------------------------------------------------------------------------------------------


def check_layer(layer: layers.Layer, x: Array, rng: np.random.Generator, name: str | None = None) -> list[Row]:
    """Check dL/dx and every parameter gradient of a layer, with L = sum(layer(x) * R)."""
    name = name or repr(layer)
    R = rng.standard_normal(layer.forward(x).shape)
    R_before = R.copy()
    dx = layer.backward(R)
    if not np.array_equal(R, R_before):
        raise AssertionError(f"{name}.backward wrote into dout")
    analytic = {"x": dx, **{k: g.copy() for k, g in layer.grads.items()}}
    arrays = {"x": x, **layer.params}

    def f() -> float:
        return float(np.sum(layer.forward(x) * R))

    return [Row(name, k, arrays[k].shape, rel_error(analytic[k], numerical_gradient(f, arrays[k])))
            for k in analytic]


def check_function(name: str, fn: Callable[..., tuple], inputs: dict[str, Array]) -> list[Row]:
    """Check a loss fn(*inputs) -> (value, grad_1, ..., grad_k) against central differences.

    The first k inputs are differentiated; any further input (targets) is held fixed.
    """
    value, *grads = fn(*inputs.values())
    names = list(inputs)[:len(grads)]
    rows = []
    for k, g in zip(names, grads):
        numeric = numerical_gradient(lambda: fn(*inputs.values())[0], inputs[k])
        rows.append(Row(name, k, inputs[k].shape, rel_error(g, numeric)))
    return rows


def check_reparameterize(mu: Array, logvar: Array, eps: Array, rng: np.random.Generator) -> list[Row]:
    """Check the reparameterization step z = mu + exp(0.5 logvar) eps in mu and logvar."""
    step = Reparameterize()
    R = rng.standard_normal(mu.shape)
    step.forward(mu, logvar, eps)
    dmu, dlogvar = step.backward(R)

    def f() -> float:
        return float(np.sum(step.forward(mu, logvar, eps) * R))

    return [Row("Reparameterize", "mu", mu.shape, rel_error(dmu, numerical_gradient(f, mu))),
            Row("Reparameterize", "logvar", logvar.shape, rel_error(dlogvar, numerical_gradient(f, logvar)))]


def check_model(model: Autoencoder | VAE, x: Array, eps: Array | None = None, name: str | None = None) -> list[Row]:
    """Check the gradient of the model's whole loss in every parameter, for a fixed eps."""
    name = name or f"{type(model).__name__}({model.likelihood})"
    if isinstance(model, VAE):
        _, grads = model.loss_and_grads(x, eps=eps)
        loss = lambda: model.loss(x, eps=eps)["loss"]    # noqa: E731
    else:
        _, grads = model.loss_and_grads(x)
        loss = lambda: model.loss(x)["loss"]             # noqa: E731
    analytic = {k: g.copy() for k, g in grads.items()}
    return [Row(name, k, p.shape, rel_error(analytic[k], numerical_gradient(loss, p)))
            for k, p in model.params.items()]


def check_label_join(x: Array, y: Array, num_classes: int, rng: np.random.Generator) -> list[Row]:
    """Check the label join [x | onehot(y)] in x, with L = sum(join(x, y) * R) (y is held fixed)."""
    join = cvae.LabelJoin(num_classes)
    R = rng.standard_normal(join.forward(x, y).shape)
    dx = join.backward(R)

    def f() -> float:
        return float(np.sum(join.forward(x, y) * R))

    return [Row(repr(join), "x", x.shape, rel_error(dx, numerical_gradient(f, x)))]


def check_conditional_model(model, x: Array, *inputs, name: str | None = None) -> list[Row]:
    """Check a model whose loss takes more than the images: model.loss(x, *inputs) (labels, eps)."""
    name = name or f"{type(model).__name__}"
    _, grads = model.loss_and_grads(x, *inputs)
    analytic = {k: g.copy() for k, g in grads.items()}
    loss = lambda: model.loss(x, *inputs)["loss"]        # noqa: E731
    return [Row(name, k, p.shape, rel_error(analytic[k], numerical_gradient(loss, p)))
            for k, p in model.params.items()]


# --------------------------------------------------------------------------------------------
# Everything, on small random shapes
# --------------------------------------------------------------------------------------------


def away_from_kink(x: Array, margin: float = 0.05) -> Array:
    """Push values away from 0, where ReLU and LeakyReLU have no derivative."""
    return np.where(x >= 0, x + margin, x - margin)


def run_all(seed: int = 0) -> list[Row]:
    """Check every layer, activation, loss, the reparameterization, both models (three likelihoods)
    and the conditional models of npvae.cvae."""
    rng = np.random.default_rng(seed)
    f64 = np.float64
    N, D, Z = 4, 7, 3
    rows: list[Row] = []

    rows += check_layer(layers.Dense(5, 6, rng=rng, dtype=f64), rng.standard_normal((N, 5)), rng)
    for act_name in layers.ACTIVATIONS:
        x = away_from_kink(rng.standard_normal((N, 6)) * 2)
        rows += check_layer(layers.activation(act_name), x, rng)
    rows += check_layer(layers.mlp([5, 4, 3], "tanh", rng=rng, dtype=f64), rng.standard_normal((N, 5)), rng,
                        name="mlp(5-4-3, tanh)")

    logits, x01 = rng.standard_normal((N, D)) * 3, rng.uniform(0, 1, (N, D))
    rows += check_function("l2_reconstruction", losses.l2_reconstruction, {"logits": logits, "x": x01})
    rows += check_function("bernoulli_reconstruction", losses.bernoulli_reconstruction,
                           {"logits": logits.copy(), "x": x01})
    # the Gaussian loss in its mean and its log-variance t = log sigma^2 (x held fixed)
    rows += check_function("gaussian_reconstruction", lambda mean, t, x: losses.gaussian_reconstruction(mean, x, t),
                           {"mean": rng.uniform(0, 1, (N, D)), "log_sigma2": np.array([-0.7]), "x": x01})
    mu, logvar = rng.standard_normal((N, Z)), rng.standard_normal((N, Z))
    rows += check_function("kl_standard_normal", losses.kl_standard_normal, {"mu": mu, "logvar": logvar})
    rows += check_function("softmax_cross_entropy", losses.softmax_cross_entropy,
                           {"logits": rng.standard_normal((N, 5)), "labels": rng.integers(0, 5, N)})
    rows += check_reparameterize(mu.copy(), logvar.copy(), rng.standard_normal((N, Z)), rng)

    x = rng.uniform(0, 1, (N, D))
    eps = rng.standard_normal((N, Z))
    for likelihood in ("l2", "bernoulli"):
        ae = Autoencoder(D, [5, 4], Z, activation="tanh", dtype=f64, rng=rng, likelihood=likelihood)
        rows += check_model(ae, x)
        vae = VAE(D, [5, 4], Z, likelihood=likelihood, beta=0.7, activation="tanh", dtype=f64, rng=rng)
        rows += check_model(vae, x, eps)
    relu_vae = VAE(D, [6], Z, likelihood="bernoulli", activation="relu", dtype=f64, rng=rng)
    rows += check_model(relu_vae, x, eps, name="VAE(bernoulli, relu)")
    # the Gaussian likelihood: a learned log sigma^2 (a parameter), the "optimal" sigma^2 (whose
    # gradient is the fixed-sigma^2 one: the envelope theorem, checked here), a fixed one; the
    # linear VAE (no hidden layers, linear output) on data outside [0, 1]
    for sigma2, output in (("learned", "sigmoid"), ("optimal", "linear"), (0.3, "sigmoid")):
        vae = VAE(D, [5], Z, likelihood="gaussian", sigma2=sigma2, decoder_output=output, activation="tanh",
                  dtype=f64, rng=rng)
        rows += check_model(vae, x, eps, name=f"VAE(gaussian, sigma2={sigma2}, {output})")
    ae = Autoencoder(D, [5], Z, activation="tanh", dtype=f64, rng=rng, likelihood="gaussian", decoder_output="linear")
    ae.params["log_sigma2"][...] = -0.5
    rows += check_model(ae, x, name="Autoencoder(gaussian, learned, linear)")
    linear = VAE(D, [], Z, likelihood="gaussian", decoder_output="linear", dtype=f64, rng=rng)
    linear.params["log_sigma2"][...] = 0.4
    rows += check_model(linear, 3 * x - 1, eps, name="linear VAE(gaussian, learned)")

    # The conditional models (npvae.cvae): the label join, the Gaussian-to-Gaussian KL, the CVAE
    # with both likelihoods, and the quadrant task's baseline and structured CVAE (on 4 x 4 images).
    C = 3
    y = rng.integers(0, C, N)
    rows += check_label_join(rng.standard_normal((N, D)), y, C, rng)
    rows += check_function("kl_gaussians", losses.kl_gaussians,
                           {"mu_q": rng.standard_normal((N, Z)), "logvar_q": rng.standard_normal((N, Z)),
                            "mu_p": rng.standard_normal((N, Z)), "logvar_p": rng.standard_normal((N, Z))})
    for likelihood in ("l2", "bernoulli"):
        model = cvae.CVAE(D, [5, 4], Z, num_classes=C, likelihood=likelihood, beta=0.7, activation="tanh",
                          dtype=f64, rng=rng)
        rows += check_conditional_model(model, x, y, eps, name=f"CVAE({likelihood})")
    visible = cvae.quadrant_mask(2, side=4)
    images = rng.uniform(0, 1, (N, 16))
    baseline = cvae.Baseline(visible, 16, [6, 5], dtype=f64, rng=rng)
    rows += check_conditional_model(baseline, images, name="Baseline(quadrants)")
    structured = cvae.StructuredCVAE(baseline, [6, 5], Z, rng=rng)
    rows += check_conditional_model(structured, images, rng.standard_normal((N, Z)), name="StructuredCVAE")
    return rows


# --------------------------------------------------------------------------------------------
# The fast twin against the textbook path, bit for bit
# --------------------------------------------------------------------------------------------


def fast_agreement(seed: int = 0) -> tuple[list[str], list[str]]:
    """Run every component's fast twin (npvae.fast) and its textbook version on the same inputs,
    in float32 and float64. Returns (the components whose outputs and gradients agree bit for
    bit, those that do not). tests/test_fast.py checks the same over many more shapes."""
    rng = np.random.default_rng(seed)
    N, D, H, Z = 5, 7, 6, 3
    same, differ = [], []

    def record(name: str, textbook: list, twin: list) -> None:
        ok = len(textbook) == len(twin) and all(np.array_equal(a, b) for a, b in zip(textbook, twin))
        (same if ok else differ).append(name)

    for dtype in (np.float32, np.float64):
        tag = np.dtype(dtype).name
        x = away_from_kink(rng.standard_normal((N, H)) * 2).astype(dtype)
        dout = rng.standard_normal((N, H)).astype(dtype)
        for layer in [layers.Dense(H, H, rng=rng, dtype=dtype), *map(layers.activation, layers.ACTIVATIONS)]:
            twin = fast._layer_twin(layer)
            twin.grads = {k: np.zeros_like(p) for k, p in layer.params.items()}
            out, dx = twin.forward(x).copy(), twin.backward(dout).copy()
            record(f"{layer!r} {tag}", [layer.forward(x), layer.backward(dout), *layer.grads.values()],
                   [out, dx, *twin.grads.values()])
        logits, x01 = (rng.standard_normal((N, D)) * 3).astype(dtype), rng.uniform(0, 1, (N, D)).astype(dtype)
        for name in fast.RECONSTRUCTION:
            value, grad = fast.RECONSTRUCTION[name](logits, x01, {})
            record(f"{name} loss {tag}", list(losses.RECONSTRUCTION[name](logits, x01)), [value, grad.copy()])
        eps = rng.standard_normal((N, Z)).astype(dtype)
        for likelihood in ("l2", "bernoulli"):
            for model in (Autoencoder(D, [H, 4], Z, likelihood=likelihood, dtype=dtype, rng=seed),
                          VAE(D, [H, 4], Z, likelihood=likelihood, beta=0.7, dtype=dtype, rng=seed)):
                args = (x01, eps) if isinstance(model, VAE) else (x01,)
                report, grads = model.loss_and_grads(*args)
                textbook = [*report.values(), *grads.values()]
                report, grads = fast.twin(model).loss_and_grads(*args)
                record(f"{type(model).__name__}({likelihood}) {tag}", textbook, [*report.values(), *grads.values()])
    return same, differ


def format_table(rows: list[Row]) -> str:
    """The rows as an aligned text table."""
    header = ("component", "parameter", "shape", "max rel error", "result")
    body = [(r.component, r.parameter, str(r.shape), f"{r.error:.2e}", "pass" if r.passed else "FAIL")
            for r in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)) for line in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the table for `run_all`; return 1 if any entry exceeds the tolerance, else 0."""
    start = time.perf_counter()
    rows = run_all()
    print(format_table(rows))
    failed = [r for r in rows if not r.passed]
    worst = max(r.error for r in rows)
    print(f"\n{len(rows)} checks, {len(rows) - len(failed)} passed, {len(failed)} failed; "
          f"largest error {worst:.2e} (tolerance {TOLERANCE:.0e}, float64, h = {H:g}); "
          f"{time.perf_counter() - start:.1f} s")
    same, differ = fast_agreement()
    print(f"Fast path (npvae.fast): {len(same)} of {len(same) + len(differ)} components reproduce the "
          f"textbook path bit for bit (outputs and gradients, float32 and float64)"
          + (f"; differ: {', '.join(differ)}" if differ else ""))
    return 1 if failed or differ else 0


if __name__ == "__main__":
    sys.exit(main())
