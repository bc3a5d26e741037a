"""Argument and data checks: a clear error for bad input, never a silent coercion.

The textbook files (npvae.layers, losses, models, optim) and the models' bookkeeping (npvae.base)
call these, so that their own lines stay the maths. Shapes: N batch, D input, Z latent, C classes.
"""

from __future__ import annotations

import math

import numpy as np

Array = np.ndarray

LIKELIHOODS = ("l2", "bernoulli", "gaussian")
DECODER_OUTPUTS = ("sigmoid", "linear")


def _number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def as_generator(rng: np.random.Generator | int | None) -> np.random.Generator:
    """Return `rng` itself if it is a Generator, else a new Generator seeded with it."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or (isinstance(rng, (int, np.integer)) and not isinstance(rng, bool)):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be a numpy.random.Generator, an int seed or None, got {type(rng).__name__}")


def size(value, what: str) -> int:
    """A layer size: a whole number >= 1 (not a float, a string or a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{what}={value!r}: sizes must be whole numbers >= 1")
    return int(value)


def sizes(values, what: str) -> list[int]:
    """Hidden sizes: one int (one hidden layer) or a list of ints ([] for none)."""
    if isinstance(values, (int, np.integer)) and not isinstance(values, bool):
        values = [values]
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ValueError(f"{what} must be an int or a list of ints, got {values!r}")
    return [size(h, f"each of {what}") for h in values]


def likelihood_settings(likelihood: str, dtype, decoder_output: str, sigma2) -> tuple[np.dtype, str | float | None]:
    """Check the likelihood, dtype, decoder output and sigma2 of a model. Returns (the dtype, the
    Gaussian's sigma2 setting: "learned", "optimal" or a float; None for the other likelihoods)."""
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    if decoder_output not in DECODER_OUTPUTS:
        raise ValueError(f"decoder_output must be one of {DECODER_OUTPUTS}, got {decoder_output!r}")
    if decoder_output == "linear" and likelihood != "gaussian":
        raise ValueError(f"decoder_output='linear' gives the mean of a Gaussian: it needs likelihood='gaussian', "
                         f"not {likelihood!r}")
    if likelihood != "gaussian":
        if sigma2 != "learned":
            raise ValueError(f"sigma2={sigma2!r} is the noise of likelihood='gaussian', not of {likelihood!r}")
        return dtype, None
    if isinstance(sigma2, str) and sigma2 in ("learned", "optimal"):
        return dtype, sigma2
    if not (_number(sigma2) and sigma2 > 0 and np.isfinite(sigma2)):
        raise ValueError(f"sigma2 must be 'learned', 'optimal' or a finite number > 0, got {sigma2!r}")
    return dtype, float(sigma2)


def beta(value) -> float:
    """The weight of the KL term: a number in [0, 1e30]. Far above 1, beta * dKL overflows float32
    (3.4e38) on its way back through the encoder and the gradients become inf or NaN; 1e30 leaves
    room for gradients of size 1e8."""
    if not (_number(value) and 0 <= value <= 1e30):
        raise ValueError(f"beta must be a number in [0, 1e30], got {value!r}")
    return float(value)


def _values(x: Array, likelihood: str, name: str) -> None:
    lo, hi = x.min(), x.max()             # min and max propagate NaN: they find NaN and inf too
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"{name} contains NaN or inf")
    if likelihood != "gaussian" and (lo < 0 or hi > 1):   # a Gaussian is a density on all reals
        raise ValueError(f"{name} must have values in [0, 1] (the {likelihood} likelihood's targets), "
                         f"got values in [{lo:g}, {hi:g}]")


def batch(x: Array, input_dim: int, likelihood: str, dtype: np.dtype, name: str = "x") -> Array:
    """A batch of images (N, D), checked, in `dtype`."""
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != input_dim:
        raise ValueError(f"{name} must have shape (N, {input_dim}), got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape (0, {input_dim}))")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{name} must be a floating-point array (pixels scaled to [0, 1]), got dtype {x.dtype}")
    _values(x, likelihood, name)
    return x.astype(dtype, copy=False)


def data_set(images: Array, input_dim: int, likelihood: str, name: str = "images") -> None:
    """A whole data set (N, D), N >= 1: uint8 pixels, or floats that pass `batch`'s value checks."""
    images = np.asarray(images)
    if images.ndim != 2 or images.shape[1] != input_dim or images.shape[0] == 0:
        raise ValueError(f"{name} must have shape (N, {input_dim}) with N >= 1, got shape {images.shape}")
    if images.dtype != np.uint8:
        if not np.issubdtype(images.dtype, np.floating):
            raise ValueError(f"{name} must be uint8 pixels or floats in [0, 1], got dtype {images.dtype}")
        _values(images, likelihood, name)


def codes(z: Array, latent_dim: int, dtype: np.dtype, name: str = "z") -> Array:
    """Codes (N, Z) of real, finite numbers, in `dtype` (z to decode, or a given eps)."""
    z = np.asarray(z)
    if z.ndim != 2 or z.shape[1] != latent_dim:
        raise ValueError(f"{name} must have shape (N, {latent_dim}), got shape {z.shape}")
    if not (np.issubdtype(z.dtype, np.floating) or np.issubdtype(z.dtype, np.integer)):
        raise ValueError(f"{name} must hold real numbers, got dtype {z.dtype}")
    if z.size and not np.isfinite(z).all():
        raise ValueError(f"{name} contains NaN or inf")
    return z.astype(dtype, copy=False)


def eps(eps: Array, n: int, latent_dim: int, dtype: np.dtype) -> Array:
    """A given draw eps: shape (n, Z), real and finite, in `dtype`."""
    if np.shape(eps) != (n, latent_dim):
        raise ValueError(f"eps must have shape ({n}, {latent_dim}) (batch, latent), got shape {np.shape(eps)}")
    return codes(eps, latent_dim, dtype, "eps")


def temperature(value) -> None:
    """A sampling temperature: a finite number >= 0."""
    if not (value >= 0 and np.isfinite(value)):
        raise ValueError(f"temperature must be a finite number >= 0, got {value}")


def labels(labels: Array, n: int, num_classes: int) -> Array:
    """Class labels for n rows: integers of shape (n,) in [0, C)."""
    labels = np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers of shape ({n},), got {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
    return labels


# -- the optimizers -------------------------------------------------------------------------


def positive(name: str, value: float) -> float:
    """A learning rate or Adam's eps: a positive, finite real number."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive, finite number, got {value!r}")
    return float(value)


def grads(grads: dict[str, Array], params: dict[str, Array]) -> None:
    """The gradients of an optimizer step: the names and shapes of the parameters."""
    if grads.keys() != params.keys():
        raise ValueError(f"gradient names {sorted(grads)} differ from parameter names {sorted(params)}")
    for k, p in params.items():
        if grads[k].shape != p.shape:
            raise ValueError(f"gradient {k!r} has shape {grads[k].shape}, parameter has {p.shape}")


def load_checked_state(optimizer, state: dict[str, Array]) -> None:
    """Check every entry of `state` against optimizer.state_dict() (the same names and shapes,
    finite real numbers), then set them all with optimizer._set_state: all or nothing."""
    mine = optimizer.state_dict()
    if state.keys() != mine.keys():
        raise ValueError(f"optimizer state has keys {sorted(state)}, expected {sorted(mine)}")
    checked = {k: state_entry(k, state[k], mine[k].shape) for k in mine}
    for k, v in checked.items():
        optimizer._set_state(k, v)


def state_entry(key: str, value, shape: tuple[int, ...]) -> Array:
    """One entry of a saved optimizer state, checked: its shape, finite real numbers, a step
    count "t" that is a whole number >= 0, and sums of squares ("v...") >= 0."""
    value = np.asarray(value)
    if value.shape != shape:
        raise ValueError(f"optimizer state {key!r} has shape {value.shape}, expected {shape}")
    if not (np.issubdtype(value.dtype, np.integer) or np.issubdtype(value.dtype, np.floating)) \
            or not np.isfinite(value).all():
        raise ValueError(f"optimizer state {key!r} must hold finite real numbers, got dtype {value.dtype}")
    if key == "t" and not (value == int(value) and value >= 0):
        raise ValueError(f"optimizer state 't' (the step count) must be a whole number >= 0, got {value}")
    if key.split(".")[0] == "v" and (value < 0).any():
        raise ValueError(f"optimizer state {key!r} (a mean of squares) must be >= 0")
    return value
