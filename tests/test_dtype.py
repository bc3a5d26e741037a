"""float32 end to end: a float32 model's training step (forward, backward, optimizer), textbook and
fast alike, makes no float64 array; the fast twin's step makes no large temporary; the arrays it
reuses never leak out of the public methods; and the float64 gradient checks still pass."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from npvae import fast, losses
from npvae.gradcheck import TOLERANCE, check_model, run_all
from npvae.layers import ACTIVATIONS, activation, sigmoid
from npvae.models import VAE, Autoencoder
from npvae.optim import SGD, Adam

ACTS = sorted(ACTIVATIONS)


def reachable_arrays(obj, path="model", seen=None):
    """Every ndarray reachable from obj through attributes, dicts, lists and tuples, with its path."""
    seen = set() if seen is None else seen
    if id(obj) in seen or isinstance(obj, (np.random.Generator, str, bytes, int, float, type(None))):
        return
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        yield path, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from reachable_arrays(v, f"{path}[{k!r}]", seen)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from reachable_arrays(v, f"{path}[{i}]", seen)
    elif hasattr(obj, "__dict__"):
        for k, v in vars(obj).items():
            yield from reachable_arrays(v, f"{path}.{k}", seen)


def make_model(kind, likelihood, act, dtype=np.float32, d=12, hidden=(8, 6), z=3):
    if kind == "vae":
        return VAE(d, list(hidden), z, likelihood=likelihood, activation=act, dtype=dtype, rng=1, beta=0.5)
    return Autoencoder(d, list(hidden), z, likelihood=likelihood, activation=act, dtype=dtype, rng=1)


# --------------------------------------------------------------------------------------------
# No float64 anywhere in a float32 model's step
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["textbook", "fast"])
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("likelihood", ["bernoulli", "l2"])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("kind", ["vae", "ae"])
def test_float32_step_makes_no_float64_array(kind, act, likelihood, optimizer, path):
    rng = np.random.default_rng(0)
    model = make_model(kind, likelihood, act)
    x32 = rng.uniform(0, 1, (5, 12)).astype(np.float32)
    x64 = rng.uniform(0, 1, (4, 12))                       # float64 data: cast by the textbook model
    eps64 = rng.standard_normal((4, 3))                    # a float64 eps: cast too
    if path == "fast":                                     # the twin takes batches fit has checked and cast
        stepper, opt = fast.twin(model), fast.make_optimizer(optimizer, model, 1e-3)
        x64 = x64.astype(np.float32)
    else:
        stepper, opt = model, {"adam": Adam, "sgd": SGD}[optimizer](model.params, lr=1e-3)
    returned = []
    for x, eps in ((x32, None), (x64, eps64 if kind == "vae" else None), (x32, None)):   # two batch sizes
        report, grads = stepper.loss_and_grads(x, eps) if kind == "vae" else stepper.loss_and_grads(x)
        assert all(type(v) is float for v in report.values())
        returned += list(grads.values())
        opt.step(grads)
    arrays = list(reachable_arrays(stepper)) + list(reachable_arrays(opt, "optimizer"))
    arrays += [(f"grads[{i}]", g) for i, g in enumerate(returned)]
    if path == "fast":
        assert any(".buffers" in p for p, _ in arrays), "the twin kept no buffers"
    for path, a in arrays:
        if a.dtype.kind == "f":
            assert a.dtype == np.float32, f"{path} is {a.dtype}"


@pytest.mark.parametrize("kind", ["vae", "ae"])
def test_float32_public_methods_return_float32(kind):
    model = make_model(kind, "bernoulli", "relu")
    x = np.random.default_rng(0).uniform(0, 1, (4, 12))
    outputs = [model.decode(np.zeros((2, 3))), model.decode_logits(np.zeros((2, 3)))]
    outputs += list(model.encode(x)) if kind == "vae" else [model.encode(x)]
    if kind == "vae":
        outputs += [model.sample(3, rng=0), model.reconstruct(x)]
    for a in outputs:
        assert a.dtype == np.float32


@pytest.mark.parametrize("name", ACTS)
def test_activations_and_their_twins_keep_float32(name):
    x = np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4) + np.float32(0.01)
    for layer in (activation(name), fast._layer_twin(activation(name))):
        y = layer.forward(x)
        dx = layer.backward(np.ones_like(y))
        assert y.dtype == dx.dtype == np.float32
        for path, a in reachable_arrays(layer, name):
            assert a.dtype in (np.float32, np.bool_), f"{path} is {a.dtype}"


@pytest.mark.parametrize("likelihood", ["l2", "bernoulli"])
def test_reconstruction_losses_and_their_twins_keep_float32(likelihood):
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((3, 5)) * 4).astype(np.float32)
    x = rng.uniform(0, 1, (3, 5)).astype(np.float32)
    buffers: dict = {}
    loss, g = fast.RECONSTRUCTION[likelihood](logits, x, buffers)
    assert isinstance(loss, float) and g.dtype == np.float32
    assert buffers and all(a.dtype == np.float32 for a in buffers.values())
    # the twin and the textbook loss: the same numbers
    loss2, g2 = losses.RECONSTRUCTION[likelihood](logits, x)
    assert g2.dtype == np.float32
    assert loss == loss2
    np.testing.assert_array_equal(g, g2)


def test_sigmoid_keeps_float32_and_its_relative_precision():
    x = np.array([-100.0, -40.0, -10.0, 0.0, 10.0, 40.0], dtype=np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        s = sigmoid(x)
    assert s.dtype == np.float32
    want = 1 / (1 + np.exp(-x.astype(np.float64)))
    np.testing.assert_allclose(s[1:], want[1:], rtol=1e-6)        # sigmoid(-40) = 4.25e-18, not 0
    assert 0 <= s[0] < 1e-38
    out = np.empty_like(x)
    assert fast._sigmoid(x, out) is out
    np.testing.assert_array_equal(out, s)


# --------------------------------------------------------------------------------------------
# The training step allocates no large temporary (it writes into arrays kept from step to step)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("likelihood", ["bernoulli", "l2"])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("kind", ["vae", "ae"])
def test_training_step_allocates_no_batch_sized_array(kind, act, likelihood):
    n, d, h, z = 128, 300, 256, 2
    model = (VAE(d, [h], z, likelihood=likelihood, activation=act, rng=0) if kind == "vae"
             else Autoencoder(d, [h], z, likelihood=likelihood, activation=act, rng=0))
    twin, opt = fast.twin(model), fast.make_optimizer("adam", model, 1e-3)
    x = np.random.default_rng(0).uniform(0, 1, (n, d)).astype(np.float32)
    for _ in range(2):                        # the first steps allocate the arrays that are reused
        opt.step(twin.loss_and_grads(x)[1], overwrite_grads=True)
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        opt.step(twin.loss_and_grads(x)[1], overwrite_grads=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # An (N, H) float32 array is the smallest array of the step's size: any float64 copy or any
    # temporary of a layer's or a loss's result would be at least that big. What the step may
    # allocate: (N, Z) arrays (tiny with Z = 2), and NumPy's 32 KB buffer for casting the ReLU mask.
    smallest = n * h * 4
    assert peak - start < smallest / 2, f"the step allocated {peak - start} bytes at its peak (an (N, H) array is {smallest})"


# --------------------------------------------------------------------------------------------
# Reused arrays never leak out of the public methods
# --------------------------------------------------------------------------------------------


def test_public_methods_return_arrays_that_later_calls_do_not_overwrite():
    rng = np.random.default_rng(0)
    model = VAE(12, [8], 3, likelihood="bernoulli", rng=0)
    x1, x2 = rng.uniform(0, 1, (4, 12)), rng.uniform(0, 1, (4, 12))
    mu1, logvar1 = model.encode(x1)
    images1 = model.decode(mu1)
    saved = [a.copy() for a in (mu1, logvar1, images1)]
    fast.twin(model).loss_and_grads(x2.astype(np.float32))   # a fast training step: reuses its arrays
    model.encode(x2)
    model.decode(np.ones((4, 3)))
    for before, now in zip(saved, (mu1, logvar1, images1)):
        np.testing.assert_array_equal(before, now)


def test_twins_write_into_the_same_array_and_textbook_layers_make_new_ones():
    layer = activation("relu")
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    assert layer.forward(x) is not layer.forward(x)
    twin = fast._layer_twin(layer)
    y1 = twin.forward(x)
    assert twin.forward(x) is y1                                  # same shape: the same array
    assert twin.forward(x[:2]).shape == (2, 4)                    # another batch size: another array


def test_twin_loss_and_grads_is_repeatable_with_reused_arrays():
    rng = np.random.default_rng(0)
    model = VAE(12, [8, 6], 3, likelihood="bernoulli", dtype=np.float64, rng=0)
    twin = fast.twin(model)
    x, eps = rng.uniform(0, 1, (5, 12)), rng.standard_normal((5, 3))
    r1, g1 = twin.loss_and_grads(x, eps)
    g1 = {k: v.copy() for k, v in g1.items()}
    twin.loss_and_grads(rng.uniform(0, 1, (7, 12)))              # another batch in between
    r2, g2 = twin.loss_and_grads(x, eps)
    assert r1 == r2
    for k in g1:
        np.testing.assert_array_equal(g1[k], g2[k], err_msg=k)


# --------------------------------------------------------------------------------------------
# float64 still passes the gradient checks
# --------------------------------------------------------------------------------------------


def test_float64_gradient_checks_still_pass():
    rows = run_all()
    bad = [(r.component, r.parameter, r.error) for r in rows if not r.passed]
    assert rows and not bad


@pytest.mark.parametrize("act", ["relu", "tanh", "softplus", "leaky_relu"])
@pytest.mark.parametrize("likelihood", ["bernoulli", "l2"])
def test_float64_model_gradients_after_steps_of_another_batch_size(likelihood, act):
    # The arrays a step reuses are sized by the batch: check the gradient after they were resized.
    rng = np.random.default_rng(3)
    model = VAE(6, [5], 2, likelihood=likelihood, activation=act, dtype=np.float64, rng=2, beta=0.7)
    twin = fast.twin(model)
    twin.loss_and_grads(rng.uniform(0, 1, (9, 6)))
    x, eps = rng.uniform(0, 1, (4, 6)), rng.standard_normal((4, 2))
    _, grads = twin.loss_and_grads(x, eps)
    fast_grads = {k: g.copy() for k, g in grads.items()}
    rows = check_model(model, x, eps)
    assert max(r.error for r in rows) < TOLERANCE
    _, textbook = model.loss_and_grads(x, eps)
    for k in textbook:
        np.testing.assert_array_equal(fast_grads[k], textbook[k], err_msg=k)
