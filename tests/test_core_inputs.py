"""Bad input to the core API is refused with a message, never coerced silently (issue 14, items 1, 2,
12 and 14: the model, optimizer and fit parts)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from npvae.models import VAE, Autoencoder
from npvae.optim import Adam
from npvae.train import TrainingDiverged, fit


@pytest.mark.parametrize("cls", [VAE, Autoencoder])
@pytest.mark.parametrize("args, pattern", [
    ((784, "64", 2), "hidden_dims"),            # was hidden layers [6, 4]
    ((784, [64], 2.5), "latent_dim"),           # was latent_dim 2
    ((784, [1.7], 2), "hidden_dims"),           # was [1]
    ((784.0, [8], 2), "input_dim"),
    ((784, [True], 2), "hidden_dims"),
    ((784, [0], 2), "hidden_dims"),
])
def test_sizes_must_be_whole_numbers(cls, args, pattern):
    with pytest.raises(ValueError, match=pattern):
        cls(*args)


def test_one_int_means_one_hidden_layer():
    assert VAE(784, 400, 20).hidden_dims == [400] and Autoencoder(784, 400, 20).hidden_dims == [400]
    assert repr(VAE(784, 400, 20)) == "VAE(784-400-20, l2, 652,824 parameters)"
    assert repr(Autoencoder(6, [5, 4], 3, likelihood="bernoulli")).startswith("Autoencoder(6-5-4-3, bernoulli, ")


@pytest.mark.parametrize("beta", [1e300, -1.0, float("nan"), float("inf"), "big", True])
def test_a_beta_whose_gradients_overflow_is_refused(beta):
    with pytest.raises(ValueError, match="beta"):
        VAE(6, [4], 2, beta=beta)
    model = VAE(6, [4], 2)
    with pytest.raises(ValueError, match="beta"):
        model.beta = beta


def test_the_largest_beta_gives_finite_gradients():
    model = VAE(6, [4], 2, beta=1e30, rng=0)
    x = np.random.default_rng(0).uniform(0, 1, (5, 6))
    report, grads = model.loss_and_grads(x)
    assert np.isfinite(report["loss"]) and all(np.isfinite(g).all() for g in grads.values())


@pytest.mark.parametrize("eps, pattern", [
    (np.array([[object(), 1.0]] * 3, dtype=object), "real numbers"),   # was "ufunc 'isfinite' not supported"
    (np.ones((3, 2), dtype=complex), "real numbers"),
    (np.full((3, 2), np.nan), "NaN"),
])
def test_eps_must_be_real_and_finite(eps, pattern):
    model = VAE(6, [4], 2, rng=0)
    with pytest.raises(ValueError, match=pattern):
        model.loss_and_grads(np.full((3, 6), 0.5), eps=eps)


def test_complex_images_are_refused():
    with pytest.raises(ValueError, match="floating-point"):
        VAE(6, [4], 2).loss_and_grads(np.full((3, 6), 0.5 + 0j))


def test_fit_checks_the_test_images_before_training():
    model = VAE(12, [8], 2, rng=0)
    before = {k: v.copy() for k, v in model.params.items()}
    train = np.zeros((40, 12), dtype=np.uint8)
    with pytest.raises(ValueError, match="eval_images must have shape"):
        fit(model, Adam(model.params), train, eval_images=np.zeros((10, 9), dtype=np.uint8), epochs=1,
            batch_size=10, rng=np.random.default_rng(0), log=io.StringIO())
    for k in before:                                       # not one step was taken
        np.testing.assert_array_equal(model.params[k], before[k])


@pytest.mark.parametrize("path", [{}, {"fast": False}], ids=["fast", "textbook"])
def test_no_epoch_with_non_finite_parameters_reaches_on_epoch_end(path):
    # lr 1e30: the last batch's loss can still be finite while the parameters are 1e30 or inf,
    # and the epoch's test loss NaN: that epoch must never be checkpointed.
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (64, 12), dtype=np.uint8)
    model = VAE(12, [8], 2, rng=0)
    saved = []
    with np.errstate(all="ignore"), pytest.raises(TrainingDiverged) as info:
        fit(model, Adam(model.params, lr=1e30), train, eval_images=train[:16], epochs=3, batch_size=64,
            rng=np.random.default_rng(0), on_epoch_end=lambda h: saved.append(len(h)), log=io.StringIO(), **path)
    assert saved == [] and info.value.epoch == 1
    assert "the checkpoint of the last complete epoch is kept" in str(info.value)


def test_the_divergence_message_names_what_became_non_finite():
    e = TrainingDiverged(3, None, float("nan"), what="parameter dec0.W")
    assert str(e).startswith("parameter dec0.W became nan in epoch 3.")
    assert str(TrainingDiverged(2, 7, float("inf"))).startswith("the loss became inf at epoch 2, batch 7.")
