"""Losses, each returning its value and its gradient.

Every reported loss is summed over pixels (or latent dimensions) for each example, then averaged
over the batch: a loss "per image", as the PyTorch VAE example reports it. The gradients are
those of that batch mean, so they carry a factor 1 / N. The `*_per_example` functions return
the per-example sums (N,) without gradients, for evaluation: they sum over the last axis, so
logits of shape (N, K, D), K decodes of each image, against x of shape (N, 1, D) give (N, K).

The decoder outputs logits (N, D); the image it predicts is x_hat = sigmoid(logits). The
Gaussian loss takes the decoder's mean itself (a sigmoid of the logits, or the raw output), and
the log-variance t = log sigma^2 shared by every pixel.

Shapes: N batch size, D pixels, Z latent dimensions, C classes.
"""

from __future__ import annotations

import math

import numpy as np

from . import checks
from .layers import sigmoid

Array = np.ndarray


def l2_per_example(logits: Array, x: Array) -> Array:
    """Sum over pixels of (x - x_hat)^2 with x_hat = sigmoid(logits). logits, x: (N, D) -> (N,)."""
    return np.sum((sigmoid(logits) - x) ** 2, axis=-1)


def l2_reconstruction(logits: Array, x: Array) -> tuple[float, Array]:
    """The study note's loss: L = mean_n sum_d (x_hat_nd - x_nd)^2, x_hat = sigmoid(logits).
    logits, x: (N, D). Returns (L, dL/dlogits of shape (N, D))."""
    # dL/dx_hat = 2 (x_hat - x) / N and dx_hat/dlogits = x_hat (1 - x_hat), so
    # dL/dlogits = (x_hat - x) x_hat (1 - x_hat) 2 / N.
    n = x.shape[0]
    x_hat = sigmoid(logits)
    diff = x_hat - x
    loss = np.sum(diff ** 2) / n
    return float(loss), diff * x_hat * (1 - x_hat) * (2 / n)


def bernoulli_per_pixel(logits: Array, x: Array) -> Array:
    """Binary cross-entropy of each pixel from its logit l. logits, x: (N, D) -> (N, D).

    -[x log s(l) + (1 - x) log(1 - s(l))] = softplus(l) - x l = log(1 + exp(-|l|)) + max(l, 0) - x l.
    The last form never exponentiates a positive number, so logits of +-1000 stay finite.
    Targets x may be anywhere in [0, 1] (continuous pixels are the usual case).
    """
    return np.log1p(np.exp(-np.abs(logits))) + np.maximum(logits, 0) - x * logits


def bernoulli_per_example(logits: Array, x: Array) -> Array:
    """Binary cross-entropy summed over pixels, from logits. logits, x: (N, D) -> (N,)."""
    return bernoulli_per_pixel(logits, x).sum(axis=-1)


def bernoulli_reconstruction(logits: Array, x: Array) -> tuple[float, Array]:
    """Bernoulli negative log-likelihood L = mean_n sum_d BCE(logits_nd, x_nd).
    logits, x: (N, D). Returns (L, dL/dlogits of shape (N, D))."""
    # d/dl [softplus(l) - x l] = sigmoid(l) - x, times 1 / N for the batch mean.
    n = x.shape[0]
    loss = bernoulli_per_pixel(logits, x).sum() / n
    return float(loss), (sigmoid(logits) - x) * (1 / n)


def gaussian_per_example(mean: Array, x: Array, log_sigma2: Array) -> Array:
    """-log N(x; mean, sigma^2 I), constant included: 0.5 * sum_d [(x_d - mean_d)^2 / sigma^2 + t + log 2 pi].

    mean, x: (N, D); log_sigma2 t = log sigma^2: shape (1,) (one variance for every pixel). -> (N,).
    At sigma^2 = 1/2 this is sum_d (x_d - mean_d)^2 + (D/2) log pi: the L2 loss plus a constant.
    """
    return 0.5 * np.sum((x - mean) ** 2 * np.exp(-log_sigma2) + log_sigma2 + math.log(2 * math.pi), axis=-1)


def gaussian_reconstruction(mean: Array, x: Array, log_sigma2: Array) -> tuple[float, Array, Array]:
    """Gaussian negative log-likelihood L = mean_n gaussian_per_example(mean, x, log_sigma2)_n.
    mean, x: (N, D); log_sigma2: (1,). Returns (L, dL/dmean (N, D), dL/dlog_sigma2 (1,))."""
    # With t = log sigma^2, l_n = 0.5 sum_d [(x - m)^2 e^-t + t + log 2 pi] and L = mean_n l_n:
    #   dL/dm = (m - x) e^-t / N
    #   dL/dt = 0.5 sum_nd [1 - (x - m)^2 e^-t] / N = D / 2 - SSE e^-t / (2 N),  SSE = sum_nd (x - m)^2.
    n, d = x.shape
    diff = mean - x
    inv_var = np.exp(-log_sigma2)                                  # (1,): 1 / sigma^2
    sse = np.sum(diff ** 2)
    loss = 0.5 * (sse * inv_var[0] + n * d * (log_sigma2[0] + math.log(2 * math.pi))) / n
    return float(loss), diff * (inv_var / n), 0.5 * d - 0.5 * sse * inv_var / n


RECONSTRUCTION = {"l2": l2_reconstruction, "bernoulli": bernoulli_reconstruction}
RECONSTRUCTION_PER_EXAMPLE = {"l2": l2_per_example, "bernoulli": bernoulli_per_example}


def kl_per_example(mu: Array, logvar: Array) -> Array:
    """KL(N(mu, exp(logvar)) || N(0, I)) = -0.5 * sum_z (1 + logvar - mu^2 - exp(logvar)).

    mu, logvar: (N, Z) -> (N,). Computed as 0.5 * sum_z (mu^2 + (exp(logvar) - 1) - logvar) with
    expm1, which is exact near logvar = 0 where the first form cancels (and can dip below 0).
    Each term is >= 0 since e^t - 1 >= t.
    """
    return 0.5 * np.sum(mu * mu + np.expm1(logvar) - logvar, axis=1)


def kl_standard_normal(mu: Array, logvar: Array) -> tuple[float, Array, Array]:
    """Mean over the batch of KL(N(mu, exp(logvar)) || N(0, I)).
    mu, logvar: (N, Z). Returns (KL, dKL/dmu, dKL/dlogvar), the gradients of shape (N, Z)."""
    # d/dmu     [-0.5 (1 + lv - mu^2 - e^lv)] = mu
    # d/dlogvar [-0.5 (1 + lv - mu^2 - e^lv)] = 0.5 (e^lv - 1)      each times 1 / N.
    n = mu.shape[0]
    var_minus_1 = np.expm1(logvar)
    kl = 0.5 * np.sum(mu * mu + var_minus_1 - logvar) / n
    return float(kl), mu * (1 / n), var_minus_1 * (0.5 / n)


def kl_gaussians(mu_q: Array, logvar_q: Array, mu_p: Array, logvar_p: Array) -> tuple[float, Array, Array, Array, Array]:
    """Mean over the batch of KL(N(mu_q, exp(logvar_q)) || N(mu_p, exp(logvar_p))), both diagonal.

    All four inputs: (N, Z). Per example
        KL = 0.5 * sum_z (logvar_p - logvar_q + (exp(logvar_q) + (mu_q - mu_p)^2) / exp(logvar_p) - 1),
    computed as 0.5 * sum_z ((exp(d) - 1) - d + (mu_q - mu_p)^2 exp(-logvar_p)) with d = logvar_q - logvar_p
    and expm1, exact near d = 0 (equal Gaussians give 0). With mu_p = logvar_p = 0 it is kl_standard_normal.
    Returns (KL, dKL/dmu_q, dKL/dlogvar_q, dKL/dmu_p, dKL/dlogvar_p), the gradients (N, Z).
    """
    # With r = exp(logvar_q - logvar_p) and s = (mu_q - mu_p)^2 exp(-logvar_p), KL = 0.5 sum (r - 1 - d + s):
    #   dKL/dmu_q = (mu_q - mu_p) exp(-logvar_p) = -dKL/dmu_p
    #   dKL/dlogvar_q = 0.5 (r - 1),   dKL/dlogvar_p = 0.5 (1 - r - s)       each times 1 / N.
    n = mu_q.shape[0]
    d = logvar_q - logvar_p
    r_minus_1 = np.expm1(d)
    inv_var_p = np.exp(-logvar_p)
    diff = mu_q - mu_p
    s = diff * diff * inv_var_p
    kl = 0.5 * np.sum(r_minus_1 - d + s) / n
    dmu_q = diff * inv_var_p * (1 / n)
    return float(kl), dmu_q, r_minus_1 * (0.5 / n), -dmu_q, (-r_minus_1 - s) * (0.5 / n)


def log_softmax(logits: Array) -> Array:
    """log softmax along the last axis, shifted by the row maximum so exp never overflows. (N, C)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax_cross_entropy(logits: Array, labels: Array) -> tuple[float, Array]:
    """L = mean_n -log softmax(logits_n)[labels_n], for the evaluation's digit classifier.
    logits: (N, C), labels: (N,) integers in [0, C). Returns (L, dL/dlogits (N, C))."""
    # dL/dlogits = (softmax(logits) - onehot(labels)) / N.
    n = logits.shape[0]
    labels = checks.labels(labels, n, logits.shape[1])
    logp = log_softmax(logits)
    rows = np.arange(n)
    loss = -logp[rows, labels].sum() / n
    dlogits = np.exp(logp)
    dlogits[rows, labels] -= 1
    return float(loss), dlogits * (1 / n)
