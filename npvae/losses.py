"""Losses, each returning its value and its gradient.

Convention for every reported loss: sum over pixels (or latent dimensions) for each example, then
the mean over the batch: a loss "per image", as the PyTorch VAE example reports it. The
gradients returned are gradients of that batch mean, so they carry a factor 1 / N.

The `*_per_example` functions return the per-example sums (N,) without gradients; evaluation
code uses them.

Speed: the reconstruction losses work on (N, D) arrays, the largest of a training step. They
compute in place, one NumPy operation at a time, in at most two arrays: the gradient they return
and one scratch array. Given `buffers` (a dict, see `npvae.layers.reusable`), both are kept there
and reused on the next call, so the training step allocates nothing here; the returned gradient
is then overwritten by the next call with the same `buffers`.

Shapes: N batch size, D pixels, Z latent dimensions, C classes.
"""

from __future__ import annotations

import numpy as np

from .layers import reusable, sigmoid, zeros

Array = np.ndarray


def _scratch(buffers: dict[str, Array] | None, name: str, logits: Array, x: Array) -> Array:
    """An uninitialised array of the shape of logits: kept in `buffers` if given, else new."""
    dtype = np.result_type(logits, x)
    if buffers is None:
        return np.empty(logits.shape, dtype=dtype)
    return reusable(buffers, name, logits.shape, dtype)


# --------------------------------------------------------------------------------------------
# Reconstruction: the decoder outputs logits (N, D); the image it predicts is x_hat = sigmoid(logits)
# --------------------------------------------------------------------------------------------


def l2_per_example(logits: Array, x: Array) -> Array:
    """Sum over pixels of (x - x_hat)^2 with x_hat = sigmoid(logits). logits, x: (N, D) -> (N,)."""
    diff = x - sigmoid(logits)
    return np.einsum("nd,nd->n", diff, diff)


def l2_reconstruction(logits: Array, x: Array, buffers: dict[str, Array] | None = None) -> tuple[float, Array]:
    """The seed's loss: L = mean_n sum_d (x_nd - x_hat_nd)^2, with x_hat = sigmoid(logits).

    logits, x: (N, D). Returns (L, dL/dlogits of shape (N, D)). buffers: see the module docstring.
    """
    # dL/dx_hat = 2 (x_hat - x) / N and dx_hat/dlogits = x_hat (1 - x_hat), so
    # dL/dlogits = 2 (x_hat - x) x_hat (1 - x_hat) / N.
    n = x.shape[0]
    x_hat = sigmoid(logits, out=_scratch(buffers, "work", logits, x))
    diff = np.subtract(x_hat, x, out=_scratch(buffers, "dlogits", logits, x))
    loss = np.einsum("nd,nd->", diff, diff) / n
    dlogits = diff                                       # built in place from here on
    dlogits *= x_hat
    dlogits *= np.subtract(1, x_hat, out=x_hat)          # 1 - x_hat (x_hat itself is done with)
    dlogits *= 2 / n
    return float(loss), dlogits


def bernoulli_per_example(logits: Array, x: Array) -> Array:
    """Binary cross-entropy summed over pixels, from logits. logits, x: (N, D) -> (N,).

    -[x log s(l) + (1 - x) log(1 - s(l))] = softplus(l) - x l = max(l, 0) - x l + log(1 + exp(-|l|)).
    The last form never exponentiates a positive number, so logits of +-1000 stay finite.
    Targets x may be anywhere in [0, 1] (continuous pixels are the usual case).
    """
    out, work = _scratch(None, "out", logits, x), _scratch(None, "work", logits, x)
    return _bernoulli_per_pixel(logits, x, out, work).sum(axis=1)


def _bernoulli_per_pixel(logits: Array, x: Array, out: Array, work: Array,
                         buffers: dict[str, Array] | None = None) -> Array:
    """max(l, 0) - x l + log(1 + exp(-|l|)) for each pixel, written into `out`, one in-place step
    at a time (`work`: scratch space of the same shape). Returns out."""
    bce = np.abs(logits, out=out)
    np.negative(bce, out=bce)
    np.exp(bce, out=bce)
    np.log1p(bce, out=bce)                               # log(1 + exp(-|l|))
    zero = 0 if buffers is None else zeros(buffers, "zeros", logits.shape, logits.dtype)  # the same, faster
    bce += np.maximum(logits, zero, out=work)
    bce -= np.multiply(x, logits, out=work)
    return bce


def bernoulli_reconstruction(logits: Array, x: Array,
                             buffers: dict[str, Array] | None = None) -> tuple[float, Array]:
    """Bernoulli negative log-likelihood L = mean_n sum_d BCE(logits_nd, x_nd).

    logits, x: (N, D). Returns (L, dL/dlogits of shape (N, D)). buffers: see the module docstring.
    """
    n = x.shape[0]
    dlogits = _scratch(buffers, "dlogits", logits, x)   # scratch space until the gradient goes in
    loss = _bernoulli_per_pixel(logits, x, _scratch(buffers, "work", logits, x), work=dlogits,
                                buffers=buffers).sum() / n
    # d/dl [softplus(l) - x l] = sigmoid(l) - x, divided by N for the batch mean.
    sigmoid(logits, out=dlogits)
    dlogits -= x
    dlogits *= 1 / n
    return float(loss), dlogits


RECONSTRUCTION = {"l2": l2_reconstruction, "bernoulli": bernoulli_reconstruction}
RECONSTRUCTION_PER_EXAMPLE = {"l2": l2_per_example, "bernoulli": bernoulli_per_example}


# --------------------------------------------------------------------------------------------
# KL divergence of the encoder's Gaussian to the prior N(0, I)
# --------------------------------------------------------------------------------------------


def kl_per_example(mu: Array, logvar: Array) -> Array:
    """KL(N(mu, exp(logvar)) || N(0, I)) = -0.5 * sum_z (1 + logvar - mu^2 - exp(logvar)).

    mu, logvar: (N, Z) -> (N,). Computed as 0.5 * sum_z (mu^2 + (exp(logvar) - 1) - logvar) with
    expm1, which is exact near logvar = 0 where the textbook form cancels (and can dip below 0).
    Each term is >= 0 since e^t - 1 >= t.
    """
    return 0.5 * np.sum(mu * mu + np.expm1(logvar) - logvar, axis=1)


def kl_standard_normal(mu: Array, logvar: Array) -> tuple[float, Array, Array]:
    """Mean over the batch of the KL divergence to N(0, I).

    mu, logvar: (N, Z). Returns (KL, dKL/dmu, dKL/dlogvar), the gradients of shape (N, Z).
    """
    # d/dmu     [-0.5 (1 + lv - mu^2 - e^lv)] = mu
    # d/dlogvar [-0.5 (1 + lv - mu^2 - e^lv)] = 0.5 (e^lv - 1)      each divided by N.
    n = mu.shape[0]
    var_minus_1 = np.expm1(logvar)
    kl = 0.5 * np.sum(mu * mu + var_minus_1 - logvar) / n
    return float(kl), mu * (1 / n), var_minus_1 * (0.5 / n)


# --------------------------------------------------------------------------------------------
# Classification (the evaluation's digit classifier)
# --------------------------------------------------------------------------------------------


def log_softmax(logits: Array) -> Array:
    """log softmax along the last axis, shifted by the row maximum so exp never overflows. (N, C)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax_cross_entropy(logits: Array, labels: Array) -> tuple[float, Array]:
    """L = mean_n -log softmax(logits_n)[labels_n].

    logits: (N, C), labels: (N,) integers in [0, C). Returns (L, dL/dlogits (N, C)).
    """
    # dL/dlogits = (softmax(logits) - onehot(labels)) / N.
    n = logits.shape[0]
    labels = np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers of shape ({n},), got {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= logits.shape[1]):
        raise ValueError(f"labels must lie in [0, {logits.shape[1]}), got [{labels.min()}, {labels.max()}]")
    logp = log_softmax(logits)
    rows = np.arange(n)
    loss = -logp[rows, labels].sum() / n
    dlogits = np.exp(logp)
    dlogits[rows, labels] -= 1
    dlogits *= 1 / n
    return float(loss), dlogits
