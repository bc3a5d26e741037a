"""Evaluation of a trained autoencoder or VAE: ELBO, importance-weighted log-likelihood, active
units, and a digit classifier's view of reconstructions and samples.

    npvae evaluate RUN [--k 5000] [--split test] [--draws 10] [--seed 0] [--no-classifier]

prints a table and writes ``eval.json`` into the run folder. Every figure is per image, in nats,
and positive where it is a loss: ``neg_elbo``, ``recon``, ``kl``, ``nll_iwae``.

What is measured
----------------
* The negative ELBO, -E_q[log p(x|z)] + KL(q(z|x) || N(0, I)), with its two parts, averaged over
  ``n_draws`` draws of eps per image (default 10); the KL is the exact Gaussian formula. The KL
  weight is always 1 here, whatever beta the model was trained with: this is the ELBO itself.
  ``recon_at_mu`` is the deterministic reconstruction error when z = mu (no noise).
* The importance-weighted estimate of log p(x) (Burda, Grosse and Salakhutdinov, 2015):

      log p(x)  >=  log (1/K) sum_k p(x, z_k) / q(z_k | x),      z_k ~ q(z | x),

  computed in float64 with a log-sum-exp, from K draws per image decoded in chunks of about
  ``chunk_rows`` rows (so K = 5000 over 10,000 images needs ~20 MB). K = 1 is the one-draw
  ELBO; the bound tightens as K grows. ``nll_iwae`` is minus this estimate.
* Active units (Burda et al.): the latent dimensions u whose variance across the data of
  E[z_u | x] = mu_u exceeds 0.01.
* With a digit classifier (an MLP trained once on MNIST with npvae's own layers, cached on
  disk): its accuracy on reconstructions of the images, and, for decodes of z ~ N(0, I), its
  mean confidence (max softmax probability) and the entropy of the predicted-class histogram
  (log 10 = 2.303 nats when all ten digits are equally frequent).

Which density the NLL refers to
-------------------------------
* Bernoulli likelihood: -log p(x|z) = sum_d BCE(x_d, x_hat_d), the standard MNIST NLL in nats.
  It is a proper log-probability for binary pixels (``--binarize static`` or ``dynamic``);
  for continuous pixels the Bernoulli "density" is not normalised over [0, 1], so the figure
  is only comparable with other continuous-Bernoulli figures.
* L2 likelihood: the training loss sum_d (x_d - x_hat_d)^2 is the negative log of the Gaussian
  density N(x; x_hat, sigma^2 I) with sigma^2 = 1/2 (so 1 / (2 sigma^2) = 1), up to its
  normalising constant:

      -log N(x; x_hat, I/2) = sum_d (x_d - x_hat_d)^2 + (D/2) log(2 pi sigma^2)
                            = L2 + (D/2) log(pi)          (= L2 + 448.734 nats for D = 784).

  ``neg_elbo``, ``recon`` and ``recon_at_mu`` are reported as the training loss writes them
  (without the constant, comparable with history.csv); ``nll_constant`` is (D/2) log(pi),
  ``neg_elbo_density`` = ``neg_elbo`` + ``nll_constant`` is the bound under that density, and
  ``nll_iwae`` is under that density, constant included. It is a density on R^D, so it is not
  comparable with a Bernoulli NLL.
* Gaussian likelihood: the loss is -log N(x; mean, sigma^2 I) with its constant, so every figure
  is already under that density (``nll_constant`` 0). sigma^2 is the model's (learned or fixed);
  for sigma2="optimal" it is the mean squared error per pixel of the reconstructions decode(mu)
  of the evaluated images (one number, so that the ELBO and the IWAE estimate share one density).
  A density of continuous pixels on R^D: not comparable with a Bernoulli NLL of binary ones.
* An autoencoder has no encoder distribution and no prior: ELBO, IWAE and active units do not
  apply (reported as null); only the reconstruction error and the classifier figures are given.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import TextIO

import numpy as np

from . import losses
from .checkpoint import atomic_write_text
from .classifier import Classifier, get_classifier
from .cvae import CVAE
from .data import binarize, in_batches, load_mnist_uint8, to_float
from .folders import load_run, run_folder
from .gaussian import SIGMA2_FLOOR
from .layers import as_generator
from .models import VAE, Autoencoder
from .progress import Ticker, progress_stream
from .settings import DEFAULTS, nonnegative_int, positive_int

Array = np.ndarray
Model = Autoencoder | VAE

ACTIVE_UNIT_THRESHOLD = 0.01
DEFAULT_DRAWS = 10              # draws of eps per image for the ELBO
DEFAULT_K = 5000                # importance samples per image for the IWAE bound
DEFAULT_CHUNK_ROWS = 5000       # decoded rows per chunk in the IWAE pass (5000 x 784 float32 = 16 MB)
DYNAMIC_BINARIZATION_SEED = 0   # the one fixed stochastic binarization of the evaluation images
LOG_2PI = math.log(2 * math.pi)


# --------------------------------------------------------------------------------------------
# Likelihood helpers
# --------------------------------------------------------------------------------------------


def nll_constant(likelihood: str, input_dim: int) -> float:
    """The nats to add to the training reconstruction loss to make it a negative log-density.

    Bernoulli: 0 (the binary cross-entropy is already -log p(x|z)).
    L2: (D/2) log(pi), the normalising constant of N(x; x_hat, I/2), whose negative log is
    sum (x - x_hat)^2 + (D/2) log(2 pi * 1/2). For D = 784 this is 448.734 nats.
    Gaussian: 0 (its loss includes the constant).
    """
    if likelihood in ("bernoulli", "gaussian"):
        return 0.0
    if likelihood == "l2":
        return 0.5 * input_dim * math.log(math.pi)
    raise ValueError(f"unknown likelihood {likelihood!r}")


def evaluation_log_sigma2(model: Model, x: Array) -> Array | None:
    """log sigma^2 (1,) of a Gaussian model's density for evaluating x (N, D); None for the others.
    The model's own (learned or fixed), or for sigma2="optimal" the log of the mean squared error
    per pixel of the reconstructions decode(mu) of x (floored as in training)."""
    if model.likelihood != "gaussian":
        return None
    if model.sigma2 != "optimal":
        return model.log_sigma2().astype(np.float64)
    x = model.check_x(x)
    sse = sum(float(np.sum((reconstructions(model, x[s:s + 1000]).astype(np.float64) - x[s:s + 1000]) ** 2))
              for s in range(0, len(x), 1000))
    return np.log([max(sse / x.size, SIGMA2_FLOOR)])


def _decode_rows(model: Model, z: Array, y: Array | None = None) -> Array:
    """The decoder's output for the codes z (M, Z) (and a CVAE's labels y), in the model's dtype:
    the logits, or for the Gaussian its mean (decode(z))."""
    if model.likelihood == "gaussian":
        return model.decode(z)
    return model.decode_logits(z) if y is None else model.decode_logits(z, y)


def _recon_rows(model: Model, out: Array, x: Array, log_sigma2: Array | None) -> Array:
    """The reconstruction loss of each decoded sample against its image: out (B, K, D) from
    _decode_rows, x (B, D). Returns (B, K) float64 (the Gaussian's with its constant, in float64)."""
    if model.likelihood == "gaussian":
        return losses.gaussian_per_example(out.astype(np.float64), x[:, None, :].astype(np.float64), log_sigma2)
    return losses.RECONSTRUCTION_PER_EXAMPLE[model.likelihood](out, x[:, None, :]).astype(np.float64)


def _encode64(model: VAE | CVAE, x: Array, y: Array | None = None) -> tuple[Array, Array]:
    mu, logvar = model.encode(x) if y is None else model.encode(x, y)
    return mu.astype(np.float64), logvar.astype(np.float64)


def _sample_terms(model: VAE | CVAE, x: Array, mu: Array, logvar: Array, eps: Array,
                  y: Array | None = None, log_sigma2: Array | None = None) -> tuple[Array, Array]:
    """For K draws per image: the reconstruction loss and log p(z) - log q(z|x).

    x: (B, D) model dtype; mu, logvar: (B, Z) float64; eps: (B, K, Z) float64; y: (B,) labels
    for a CVAE (then q is q(z|x,y) and the decoder p(x|z,y)); log_sigma2: the Gaussian's
    (evaluation_log_sigma2), None for the other likelihoods.
    Returns (recon (B, K), log_pz_minus_log_qz (B, K)), float64; recon has no constant.
    """
    b, k, z_dim = eps.shape
    z = mu[:, None, :] + np.exp(0.5 * logvar)[:, None, :] * eps                 # (B, K, Z) float64
    z_rows = z.reshape(b * k, z_dim).astype(model.dtype)                       # decoded in the model's dtype
    out = _decode_rows(model, z_rows, None if y is None else np.repeat(y, k))
    recon = _recon_rows(model, out.reshape(b, k, -1), x, log_sigma2)
    # log N(z; 0, I) - log N(z; mu, sigma^2 I) with z = mu + sigma eps: the 2 pi terms cancel.
    log_ratio = 0.5 * (np.einsum("bkz,bkz->bk", eps, eps) - np.einsum("bkz,bkz->bk", z, z)) \
        + 0.5 * logvar.sum(axis=1)[:, None]
    return recon, log_ratio


def logmeanexp(a: Array, axis: int = -1) -> Array:
    """log(mean(exp(a))) along an axis without overflow or underflow: max + log mean exp(a - max).

    Finite whenever some entry along the axis is finite; -inf if all are -inf.
    """
    a = np.asarray(a, dtype=np.float64)
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):        # log(0) = -inf when every entry is -inf
        out = m + np.log(np.mean(np.exp(a - m), axis=axis, keepdims=True))
    return np.squeeze(out, axis=axis)


def _check_eps(eps: Array | None, n: int, k: int, z: int, name: str) -> Array | None:
    if eps is None:
        return None
    eps = np.asarray(eps, dtype=np.float64)
    if eps.shape != (n, k, z):
        raise ValueError(f"{name} must have shape (N, K, Z) = ({n}, {k}, {z}), got {eps.shape}")
    return eps


def _require_vae(model, what: str, y: Array | None = None) -> Array | None:
    """Check that the model has an encoder distribution and a prior; for a CVAE, check its labels y."""
    if isinstance(model, CVAE):
        if y is None:
            raise ValueError(f"{what} of a CVAE is of log p(x | y): pass the images' labels y=")
        return np.asarray(y)          # checked against the images by the caller (model.check_y)
    if not isinstance(model, VAE):
        raise TypeError(f"{what} needs a VAE (an encoder distribution q(z|x) and a prior); "
                        f"got {type(model).__name__}")
    if y is not None:
        raise ValueError(f"labels y= are for a conditional model (a CVAE), not a {type(model).__name__}")
    return None


# --------------------------------------------------------------------------------------------
# ELBO and its parts
# --------------------------------------------------------------------------------------------


def elbo_per_example(model: VAE, x: Array, n_draws: int = DEFAULT_DRAWS,
                     rng: np.random.Generator | int | None = None, batch_size: int = 500,
                     eps: Array | None = None, kl_estimator: str = "analytic", y: Array | None = None) -> dict[str, Array]:
    """Per-image negative ELBO and its parts, averaged over n_draws draws of eps. x: (N, D).

    y: (N,) labels, for a CVAE (whose ELBO bounds log p(x | y)); None for a VAE.
    eps: (N, n_draws, Z) injects the draws (else they come from `rng`, in batches of images).
    kl_estimator: "analytic" (the exact Gaussian KL, lower variance: the default) or "sampled"
    (log q(z|x) - log p(z) at the drawn z, so that neg_elbo equals -log w of the IWAE
    estimator with K = 1 for the same draws).

    Returns (N,) float64 arrays: neg_elbo = recon + kl, recon, kl (training-loss units, no
    likelihood constant; see nll_constant), and recon_at_mu (the loss at z = mu).
    """
    y = _require_vae(model, "the ELBO", y)
    if kl_estimator not in ("analytic", "sampled"):
        raise ValueError(f"kl_estimator must be 'analytic' or 'sampled', got {kl_estimator!r}")
    if n_draws < 1:
        raise ValueError(f"n_draws must be >= 1, got {n_draws}")
    x = model.check_x(x)
    n, z_dim = x.shape[0], model.latent_dim
    if y is not None:
        y = model.check_y(y, n)
    eps = _check_eps(eps, n, n_draws, z_dim, "eps")
    rng = as_generator(rng) if eps is None else None
    log_sigma2 = evaluation_log_sigma2(model, x)
    out = {k: np.empty(n) for k in ("neg_elbo", "recon", "kl", "recon_at_mu")}
    for start in range(0, n, batch_size):
        sl = slice(start, min(n, start + batch_size))
        xb, yb = x[sl], (None if y is None else y[sl])
        mu, logvar = _encode64(model, xb, yb)
        e = eps[sl] if eps is not None else rng.standard_normal((xb.shape[0], n_draws, z_dim))
        recon, log_ratio = _sample_terms(model, xb, mu, logvar, e, yb, log_sigma2)
        out["recon"][sl] = recon.mean(axis=1)
        if kl_estimator == "analytic":
            out["kl"][sl] = losses.kl_per_example(mu, logvar)
        else:
            out["kl"][sl] = -log_ratio.mean(axis=1)
        at_mu = _decode_rows(model, mu.astype(model.dtype), yb)
        out["recon_at_mu"][sl] = _recon_rows(model, at_mu[:, None, :], xb, log_sigma2)[:, 0]
    out["neg_elbo"] = out["recon"] + out["kl"]
    return out


def elbo(model: VAE, x: Array, n_draws: int = DEFAULT_DRAWS, rng: np.random.Generator | int | None = None,
         batch_size: int = 500, eps: Array | None = None, kl_estimator: str = "analytic",
         y: Array | None = None) -> dict[str, float]:
    """Mean over the images of `elbo_per_example`: {neg_elbo, recon, kl, recon_at_mu,
    neg_elbo_std_error, n_draws}, per image, in training-loss units (see nll_constant)."""
    per = elbo_per_example(model, x, n_draws, rng, batch_size, eps, kl_estimator, y)
    res = {k: float(v.mean()) for k, v in per.items()}
    n = per["neg_elbo"].size
    res["neg_elbo_std_error"] = float(per["neg_elbo"].std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    res["n_draws"] = int(n_draws)
    return res


# --------------------------------------------------------------------------------------------
# Importance-weighted estimate of log p(x)
# --------------------------------------------------------------------------------------------


def log_px_iwae(model: VAE, x: Array, k: int = DEFAULT_K, rng: np.random.Generator | int | None = None,
                batch_size: int = 500, eps: Array | None = None, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                progress: bool | TextIO | None = None, y: Array | None = None) -> Array:
    """The IWAE estimate of log p(x) for each image, in nats (float64, shape (N,)); for a CVAE,
    given the labels y (N,), of log p(x | y) (with q(z|x,y), p(x|z,y) and the prior N(0, I)).

    log p(x) ~= log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x), z_k = mu + sigma * eps_k.

    For the L2 likelihood, p(x|z) is N(x; x_hat, I/2) with its normalising constant (see
    nll_constant). Each image is encoded once; its K draws are decoded in chunks so that a
    chunk holds about `chunk_rows` rows (of up to `batch_size` images), and the log-weights
    (float64) are combined with a log-sum-exp. eps: (N, K, Z) injects the draws, otherwise
    they come from `rng` chunk by chunk (so the draws depend on batch_size and chunk_rows).
    """
    y = _require_vae(model, "the IWAE estimate", y)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    x = model.check_x(x)
    n, z_dim = x.shape[0], model.latent_dim
    if y is not None:
        y = model.check_y(y, n)
    eps = _check_eps(eps, n, k, z_dim, "eps")
    rng = as_generator(rng) if eps is None else None
    images_per_batch = max(1, min(batch_size, chunk_rows // k))
    draws_per_chunk = min(k, max(1, chunk_rows // images_per_batch))
    const = nll_constant(model.likelihood, model.input_dim)
    log_sigma2 = evaluation_log_sigma2(model, x)
    ticker = Ticker(f"IWAE K={k}", n, progress_stream(progress))
    out = np.empty(n)
    log_w = np.empty((images_per_batch, k))
    for start in range(0, n, images_per_batch):
        sl = slice(start, min(n, start + images_per_batch))
        xb, yb = x[sl], (None if y is None else y[sl])
        b = xb.shape[0]
        mu, logvar = _encode64(model, xb, yb)
        for k0 in range(0, k, draws_per_chunk):
            k1 = min(k, k0 + draws_per_chunk)
            e = eps[sl, k0:k1] if eps is not None else rng.standard_normal((b, k1 - k0, z_dim))
            recon, log_ratio = _sample_terms(model, xb, mu, logvar, e, yb, log_sigma2)
            log_w[:b, k0:k1] = log_ratio - recon - const
        out[sl] = logmeanexp(log_w[:b], axis=1)
        ticker.update(sl.stop)
    return out


# --------------------------------------------------------------------------------------------
# Active units
# --------------------------------------------------------------------------------------------


def _with_labels(model: Model, y: Array | None) -> list:
    """The extra argument of a CVAE's codes and decode (its labels), none for the other models."""
    return [y] if isinstance(model, CVAE) else []


def latent_means(model: Model, x: Array, batch_size: int = 1000, y: Array | None = None) -> Array:
    """E[z | x] for each image: mu for a VAE (for a CVAE, of q(z | x, y) with the labels y),
    the code z for an autoencoder. (N, Z) float64."""
    return model.codes(model.check_x(x), *_with_labels(model, y), batch_size=batch_size).astype(np.float64)


def latent_variances(model: Model, x: Array, batch_size: int = 1000, y: Array | None = None) -> Array:
    """The variance across the images of each dimension of E[z | x]. (Z,) float64."""
    return latent_means(model, x, batch_size, y).var(axis=0)


def active_units(model: Model, x: Array, threshold: float = ACTIVE_UNIT_THRESHOLD,
                 batch_size: int = 1000, return_variances: bool = False,
                 y: Array | None = None) -> int | tuple[int, Array]:
    """The number of latent dimensions whose variance across x of E[z|x] exceeds `threshold`
    (Burda et al., 2015: 0.01). With return_variances=True: (count, per-dimension variances)."""
    var = latent_variances(model, x, batch_size, y)
    count = int(np.sum(var > threshold))
    return (count, var) if return_variances else count


def reconstructions(model: Model, x: Array, batch_size: int = 1000, y: Array | None = None) -> Array:
    """decode(mu) for a VAE (a CVAE: decode(mu, y) with the labels y), decode(z) for an autoencoder. (N, D)."""
    x = model.check_x(x)
    if isinstance(model, CVAE):
        y = model.check_y(y, len(x))
        return np.concatenate([model.reconstruct(x[s:s + batch_size], y[s:s + batch_size])
                               for s in range(0, len(x), batch_size)])
    return in_batches(lambda batch: model.decode(model.codes(batch)), x, batch_size)


def reconstruction_accuracy(model: Model, classifier: Classifier, x: Array, y: Array, batch_size: int = 1000) -> float:
    """The classifier's accuracy on the reconstructions of x against the true labels y (which a
    CVAE's reconstruction is also given)."""
    return float(np.mean(classifier.predict_proba(reconstructions(model, x, batch_size, y)).argmax(axis=1)
                         == np.asarray(y)))


def conditional_sample_accuracy(model: CVAE, classifier: Classifier, n_per_class: int = 1000,
                                rng: np.random.Generator | int | None = None, batch_size: int = 2000) -> dict:
    """Decode n_per_class draws z ~ N(0, I) with each label and classify them: the fraction read as
    the digit asked for. Returns {per_class: C fractions, overall, n_per_class}."""
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be >= 1, got {n_per_class}")
    rng = as_generator(rng)
    asked = np.repeat(np.arange(model.num_classes), n_per_class)
    read = np.concatenate([classifier.predict(model.sample(len(asked[s:s + batch_size]), asked[s:s + batch_size], rng=rng))
                           for s in range(0, len(asked), batch_size)])
    hits = (read == asked).reshape(model.num_classes, n_per_class)
    return {"per_class": hits.mean(axis=1).tolist(), "overall": float(hits.mean()), "n_per_class": int(n_per_class)}


def class_entropy(histogram: Array) -> float:
    """Entropy in nats of a histogram of counts (0 for one class, log 10 = 2.303 for ten equal ones)."""
    p = np.asarray(histogram, dtype=np.float64)
    p = p[p > 0] / p.sum()
    return max(0.0, float(-(p * np.log(p)).sum()))     # one class: 0, not -0


def sample_quality(model: Model, classifier: Classifier, n: int = 10000,
                   rng: np.random.Generator | int | None = None, batch_size: int = 2000) -> dict:
    """Decode n draws z ~ N(0, I) and classify them.

    Returns {confidence: mean max softmax probability, class_entropy: entropy (nats) of the
    histogram of predicted classes (log 10 = 2.303 when all ten digits are equally common),
    class_histogram: counts per class, n}. For an autoencoder N(0, I) is not a prior, only a
    probe of its decoder away from its codes.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = as_generator(rng)
    conf_sum, hist = 0.0, None
    for start in range(0, n, batch_size):
        m = min(batch_size, n - start)
        z = rng.standard_normal((m, model.latent_dim)).astype(model.dtype)
        decoded = (model.decode(z, np.arange(start, start + m) % model.num_classes) if isinstance(model, CVAE)
                   else model.decode(z))            # a CVAE: the labels 0, 1, ..., C-1 in turn
        proba = np.asarray(classifier.predict_proba(decoded))
        conf_sum += float(proba.max(axis=1).sum())
        counts = np.bincount(proba.argmax(axis=1), minlength=proba.shape[1])
        hist = counts if hist is None else hist + counts
    return {"confidence": conf_sum / n, "class_entropy": class_entropy(hist),
            "class_histogram": hist.tolist(), "n": int(n)}


# --------------------------------------------------------------------------------------------
# A whole run folder
# --------------------------------------------------------------------------------------------


def _evaluation_images(cfg: dict, split: str) -> tuple[Array, Array, str]:
    """The run's images of a split, as the model saw them, float32 in [0, 1]; labels; a description."""
    images, labels = load_mnist_uint8(split, cfg.get("data_dir"))
    size = cfg.get("test_size") if split == "test" else cfg.get("train_size")
    if size:
        images, labels = images[:size], labels[:size]
    x = to_float(images)
    mode = cfg.get("binarize", "none") or "none"
    if mode == "static":
        x, what = binarize(x, "static"), "static binarization (pixel > 0.5), as in training"
    elif mode == "dynamic":
        x = binarize(x, "dynamic", rng=np.random.default_rng(DYNAMIC_BINARIZATION_SEED))
        what = (f"one fixed stochastic binarization (Bernoulli(pixel), seed {DYNAMIC_BINARIZATION_SEED}) "
                f"of the images; the run trained with dynamic binarization")
    else:
        what = "continuous pixels in [0, 1] (no binarization)"
    return x, labels, what


def evaluate_run(run_dir: str | os.PathLike, k: int = DEFAULT_K, split: str = "test", *,
                 n_draws: int = DEFAULT_DRAWS, seed: int = 0, classifier: bool | Classifier = True,
                 limit: int | None = None, n_samples: int = 10000, progress: bool | TextIO | None = True,
                 write: bool = True, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> dict:
    """Evaluate the model of a run folder on a split and write eval.json there. Returns the dict.

    The images are the run's (its data_dir and subset size; with static binarization
    thresholded; with dynamic binarization one fixed draw, seed DYNAMIC_BINARIZATION_SEED);
    `limit` keeps only the first `limit` of them. `seed` seeds the draws of eps (ELBO, IWAE)
    and of the prior samples. classifier: True (get_classifier()), False, or a Classifier. The
    classifier is an MNIST digit classifier, so it is skipped for runs on another data_dir.
    Raises CheckpointError for a folder without a valid checkpoint.
    """
    if split not in ("test", "train"):
        raise ValueError(f"split must be 'test' or 'train', got {split!r}")
    if k < 1 or n_draws < 1:
        raise ValueError(f"k and n_draws must be >= 1, got k={k}, n_draws={n_draws}")
    out = progress_stream(progress)
    t_start = time.perf_counter()
    model, ckpt = load_run(run_dir)
    run_dir = run_folder(run_dir)                     # given a checkpoint file: its folder
    cfg = {**DEFAULTS, **ckpt.config}
    x, y, data_what = _evaluation_images(cfg, split)
    if limit:
        x, y = x[:limit], y[:limit]
    is_vae = isinstance(model, (VAE, CVAE))
    labels = y if isinstance(model, CVAE) else None     # a CVAE is evaluated on log p(x | y)
    elbo_seed, iwae_seed, sample_seed = np.random.SeedSequence(seed).spawn(3)
    sizes = "-".join(map(str, [model.input_dim, *model.hidden_dims, model.latent_dim]))
    const = nll_constant(model.likelihood, model.input_dim)
    res: dict = {
        "run": str(run_dir), "model": model.kind, "likelihood": model.likelihood, "architecture": sizes,
        "epochs_trained": ckpt.epoch, "split": split, "n_images": int(len(x)), "data": data_what, "seed": seed,
    }
    notes: list[str] = []
    if model.likelihood == "gaussian":
        res.update(sigma2=float(np.exp(evaluation_log_sigma2(model, x)[0])), sigma2_setting=model.sigma2,
                   decoder_output=model.decoder_output)
    if is_vae:
        e = elbo(model, x, n_draws=n_draws, rng=np.random.default_rng(elbo_seed), y=labels)
        res.update(neg_elbo=e["neg_elbo"], recon=e["recon"], kl=e["kl"], recon_at_mu=e["recon_at_mu"],
                   neg_elbo_std_error=e["neg_elbo_std_error"], elbo_draws=n_draws, nll_constant=const,
                   neg_elbo_density=e["neg_elbo"] + const)
        notes.append(f"neg_elbo = recon + kl, mean over {n_draws} draws of eps per image; exact Gaussian KL, "
                     f"weight 1" + (f" (the run trained with beta = {model.beta:g})" if model.beta != 1 else ""))
        if out is not None:
            out.write(f"Estimating log p(x) with K = {k} importance samples for {len(x):,} images...\n")
            out.flush()
        t0 = time.perf_counter()
        log_px = log_px_iwae(model, x, k, rng=np.random.default_rng(iwae_seed), chunk_rows=chunk_rows,
                             progress=progress, y=labels)
        res.update(nll_iwae=float(-log_px.mean()), iwae_k=int(k), iwae_seconds=time.perf_counter() - t0,
                   nll_iwae_std_error=float(log_px.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else None)
        n_active, var = active_units(model, x, return_variances=True, y=labels)
        if labels is not None:
            notes.append("CVAE: neg_elbo, nll_iwae and active units are of log p(x | y), each test image "
                         "encoded and decoded with its own label; the prior of z is N(0, I) for every label")
        res.update(active_units=n_active, latent_dim=model.latent_dim,
                   active_unit_threshold=ACTIVE_UNIT_THRESHOLD, latent_variances=[float(v) for v in var])
        if model.likelihood == "gaussian":
            notes.append(f"Gaussian likelihood: recon is -log N(x; mean, sigma^2 I) with its constant, sigma^2 = "
                         f"{res['sigma2']:.6g}" + (" (sigma2='optimal': the mean squared error per pixel of "
                                                    "decode(mu) on these images)" if model.sigma2 == "optimal" else
                                                    f" ({'learned' if model.sigma2 == 'learned' else 'fixed'})")
                         + f"; neg_elbo and nll_iwae are under that density on R^{model.input_dim}, a density of "
                           "continuous pixels: not comparable with a Bernoulli NLL")
        elif model.likelihood == "l2":
            notes.append(f"L2 likelihood: the loss sum (x - x_hat)^2 is -log N(x; x_hat, sigma^2 I) with "
                         f"sigma^2 = 1/2, minus its constant (D/2) log(pi) = {const:.3f} nats. neg_elbo, recon "
                         f"and recon_at_mu leave the constant out (training-loss units); neg_elbo_density and "
                         f"nll_iwae include it (a density on R^{model.input_dim}: not comparable with a "
                         f"Bernoulli NLL)")
        elif cfg.get("binarize", "none") == "none":
            notes.append("Bernoulli likelihood on continuous pixels: the cross-entropy is not a normalised "
                         "density over [0, 1], so nll_iwae is not a true NLL (binarize the data for that)")
        else:
            notes.append("Bernoulli likelihood on binary pixels: nll_iwae is the standard MNIST NLL in nats")
    else:
        log_sigma2 = evaluation_log_sigma2(model, x)
        recon = float(np.mean(in_batches(
            lambda batch: _recon_rows(model, _decode_rows(model, model.encode(batch))[:, None, :], batch, log_sigma2)[:, 0],
            x)))
        res.update(neg_elbo=None, recon=recon, kl=None, recon_at_mu=None, nll_iwae=None, iwae_k=None,
                   active_units=None, latent_dim=model.latent_dim)
        notes.append("autoencoder: no encoder distribution and no prior, so the ELBO, the IWAE "
                     "log-likelihood and active units do not apply; recon is the reconstruction loss of z = encode(x)")

    use_classifier = classifier is not False and classifier is not None
    if use_classifier and cfg.get("data_dir") is not None:
        notes.append(f"classifier skipped: it is an MNIST digit classifier and the run used data_dir "
                     f"{cfg['data_dir']}")
        use_classifier = False
    if use_classifier:
        clf = classifier if isinstance(classifier, Classifier) else get_classifier(progress=progress)
        res["classifier"] = repr(clf)
        res["classifier_accuracy"] = clf.accuracy(x, y)
        res["recon_accuracy"] = reconstruction_accuracy(model, clf, x, y)
        if labels is not None:
            acc = conditional_sample_accuracy(model, clf, max(1, n_samples // model.num_classes),
                                              rng=np.random.default_rng(sample_seed))
            res.update(sample_label_accuracy=acc["overall"], sample_label_accuracy_per_digit=acc["per_class"],
                       sample_per_digit=acc["n_per_class"])
            notes.append(f"sample_label_accuracy: the fraction of {acc['n_per_class']:,} samples per digit "
                         f"(z ~ N(0, I), decoded with that digit's label) that the classifier reads as that digit")
        q = sample_quality(model, clf, n=n_samples, rng=np.random.default_rng(sample_seed))
        res.update(sample_confidence=q["confidence"], sample_class_entropy=q["class_entropy"],
                   sample_class_histogram=q["class_histogram"], sample_n=q["n"])
        notes.append("classifier_accuracy: on the evaluation images themselves; recon_accuracy: on their "
                     f"reconstructions ({'decode(mu)' if is_vae else 'decode(z)'}); sample_*: on {q['n']:,} decodes "
                     f"of z ~ N(0, I){'' if is_vae else ' (an autoencoder has no prior)'}; "
                     f"class entropy max log 10 = {math.log(10):.3f} nats")
    res["notes"] = notes
    res["seconds"] = time.perf_counter() - t_start
    res = {key: _finite_or_none(v) for key, v in res.items()}
    if write:
        atomic_write_text(run_dir / "eval.json", json.dumps(res, indent=1, allow_nan=False) + "\n")
        res["eval_json"] = str(run_dir / "eval.json")
    return res


def _finite_or_none(value):
    """NaN and inf become None (JSON null): eval.json stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _fmt(value, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def format_table(results: dict) -> str:
    """The results of evaluate_run as a text table (quantity, value, what it means)."""
    r = results
    rows: list[tuple[str, str, str]] = []
    l2, gaussian = r.get("likelihood") == "l2", r.get("likelihood") == "gaussian"
    recon_name = ("L2, sum (x - x_hat)^2" if l2 else
                  f"Gaussian, -log N(x; mean, sigma^2 I), sigma^2 = {_fmt(r.get('sigma2'), '.4g')}" if gaussian
                  else "Bernoulli cross-entropy")
    if r.get("neg_elbo") is not None:
        rows += [
            ("negative ELBO", _fmt(r["neg_elbo"]),
             f"nats/image, mean of {r.get('elbo_draws')} draws of eps; "
             f"+- {_fmt(r.get('neg_elbo_std_error'))} s.e. over images"),
            ("  reconstruction", _fmt(r["recon"]), recon_name),
            ("  KL to N(0, I)", _fmt(r["kl"]), "exact Gaussian KL"),
            ("reconstruction at z = mu", _fmt(r["recon_at_mu"]), "deterministic, no noise"),
        ]
        if l2:
            rows.append(("negative ELBO, density", _fmt(r.get("neg_elbo_density")),
                         f"+ (D/2) log(pi) = {_fmt(r.get('nll_constant'))}: under N(x; x_hat, I/2)"))
        rows.append((f"NLL, IWAE K={r.get('iwae_k')}", _fmt(r.get("nll_iwae")),
                     ("under N(x; x_hat, I/2), constant included" if l2 else
                      "under N(x; mean, sigma^2 I), constant included" if gaussian else "nats/image")
                     + f"; +- {_fmt(r.get('nll_iwae_std_error'))} s.e. over images"))
        rows.append(("active units", f"{r.get('active_units')}/{r.get('latent_dim')}",
                     f"var over x of E[z|x] > {r.get('active_unit_threshold')}"))
    else:
        rows += [("reconstruction", _fmt(r.get("recon")), recon_name + ", z = encode(x)"),
                 ("negative ELBO, NLL", "n/a", "an autoencoder has no q(z|x) or prior")]
    if "recon_accuracy" in r:
        hist = r.get("sample_class_histogram") or []
        rows += [
            ("classifier on the images", _fmt(100 * r["classifier_accuracy"], ".2f") + " %", r.get("classifier", "")),
            ("  on reconstructions", _fmt(100 * r["recon_accuracy"], ".2f") + " %", "vs the true labels"),
            ("samples: confidence", _fmt(r["sample_confidence"]),
             f"mean max softmax, {r.get('sample_n'):,} draws of N(0, I)"),
            ("samples: class entropy", _fmt(r["sample_class_entropy"]), f"nats, max log 10 = {math.log(10):.3f}"),
            ("samples: class histogram", "", "  ".join(f"{d}:{c}" for d, c in enumerate(hist))),
        ]
    if r.get("sample_label_accuracy") is not None:
        per = r.get("sample_label_accuracy_per_digit") or []
        rows += [("samples read as asked", _fmt(100 * r["sample_label_accuracy"], ".2f") + " %",
                  f"{r.get('sample_per_digit'):,} samples per digit, decoded with its label"),
                 ("  per digit", "", "  ".join(f"{d}:{100 * a:.1f}" for d, a in enumerate(per)))]
    head = (f"{r.get('model', '').upper()} {r.get('architecture', '')}{' (conditioned on the label)' if r.get('model') == 'cvae' else ''} ({r.get('likelihood')} likelihood, "
            f"{r.get('epochs_trained')} epochs) on the {r.get('split')} split, {r.get('n_images', 0):,} images; "
            f"{r.get('data')}")
    widths = [max(len(row[i]) for row in rows + [("quantity", "value", "")]) for i in range(2)]
    lines = [head, "", f"{'quantity'.ljust(widths[0])}  {'value'.rjust(widths[1])}  notes",
             f"{'-' * widths[0]}  {'-' * widths[1]}  -----"]
    lines += [f"{a.ljust(widths[0])}  {b.rjust(widths[1])}  {c}" for a, b, c in rows]
    if r.get("notes"):
        lines += ["", "Notes:"] + [f"- {n}" for n in r["notes"]]
    if "seconds" in r:
        lines.append(f"\n{r['seconds']:.1f} s" + (f"; written to {r['eval_json']}" if r.get("eval_json") else ""))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# `npvae evaluate`
# --------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `npvae evaluate RUN`."""
    parser.add_argument("run", metavar="RUN", help="a run folder written by `npvae train` (or its checkpoint file)")
    parser.add_argument("--k", type=positive_int, default=DEFAULT_K,
                        help=f"importance samples per image for the IWAE log-likelihood (default {DEFAULT_K})")
    parser.add_argument("--split", choices=["test", "train"], default="test", help="which images (default test)")
    parser.add_argument("--draws", type=positive_int, default=DEFAULT_DRAWS,
                        help=f"draws of eps per image for the ELBO (default {DEFAULT_DRAWS})")
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the random draws (default 0)")
    parser.add_argument("--limit", type=positive_int, metavar="N", help="evaluate only the first N images")
    parser.add_argument("--no-classifier", action="store_true",
                        help="skip the digit-classifier figures (and training the classifier the first time)")


def run(args: argparse.Namespace) -> int:
    """Run `npvae evaluate` from parsed arguments; print the table; return the exit code."""
    from .checkpoint import CheckpointError
    run_dir = Path(args.run)
    if not run_dir.exists():
        print(f"npvae evaluate: {run_dir} does not exist; give a run folder written by `npvae train`",
              file=sys.stderr)
        return 1
    try:
        res = evaluate_run(run_dir, k=args.k, split=args.split, n_draws=args.draws, seed=args.seed,
                           classifier=not args.no_classifier, limit=getattr(args, "limit", None))
    except KeyboardInterrupt:
        return 130
    except (CheckpointError, ValueError, OSError) as e:
        print(f"npvae evaluate: {e}", file=sys.stderr)
        return 1
    print(format_table(res))
    return 0
