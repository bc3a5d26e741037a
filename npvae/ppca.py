"""Probabilistic PCA in closed form, and the exact log-likelihood and ELBO of a linear Gaussian VAE.

A linear VAE with a Gaussian decoder is the one VAE whose best possible ELBO is known exactly: it
equals the maximum log-likelihood of probabilistic PCA (Tipping and Bishop 1999; Lucas, Tucker,
Grosse and Norouzi 2019, "Don't Blame the ELBO!"). This module computes both sides with NumPy's
linear algebra, so that a trained linear VAE can be measured against the answer, no sampling.

Shapes: N examples, D data dimensions, Z latent dimensions. Rows are examples, and the arrays
are laid out as npvae's Dense layers hold them (y = x @ W + b):
    decoder  p(x | z) = N(x; z @ W + b, sigma2 I)           W (Z, D), b (D,), sigma2 > 0
    prior    p(z)     = N(0, I)
    encoder  q(z | x) = N(mu, diag(exp(logvar)))             mu (N, Z), logvar (N, Z) or (Z,)
    linear encoder    [mu | logvar] = x @ A + a             A (D, 2Z), a (2Z,): the VAE's head
Integrating z out of the decoder gives the marginal
    p(x) = N(x; b, C),   C = W.T @ W + sigma2 I   (D, D)
(Tipping and Bishop write x = W z + mu with W of shape (D, Z), so their W W^T is our W.T @ W.)

Every log-density is in nats, per example. The ELBO and log-likelihood of npvae's Gaussian loss
(0.5 * sum_d [(x_d - mean_d)^2 / sigma2 + log sigma2 + log 2 pi], plus the KL) are the negatives
of the per-example values here, with the same constant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Array = np.ndarray

LOG_2PI = math.log(2 * math.pi)


# --------------------------------------------------------------------------------------------
# The closed-form fit
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PPCA:
    """A fitted probabilistic PCA model, in the decoder's layout.

    W: (Z, D), row j = sqrt(l_j - sigma2) u_j for an active direction, zero for a collapsed one.
    b: (D,), the data mean. sigma2: the noise variance. eigenvalues: (D,), those of the sample
    covariance, largest first (l_1 >= ... >= l_D). active: how many rows of W are not zero, the
    latent dimensions the model uses (Z when sigma2 is learned, unless eigenvalues tie).
    learned: whether sigma2 was fitted (True) or given (False).
    """

    W: Array
    b: Array
    sigma2: float
    eigenvalues: Array
    active: int
    learned: bool

    @property
    def latent_dim(self) -> int:
        return self.W.shape[0]

    @property
    def log_likelihood(self) -> float:
        """The mean log-likelihood per example of the data it was fitted to (see ppca_log_likelihood)."""
        return ppca_log_likelihood(self.eigenvalues, self.latent_dim,
                                   "learned" if self.learned else self.sigma2)


def moments(x: Array, chunk: int = 10000) -> tuple[Array, Array]:
    """The mean (D,) and the maximum-likelihood covariance (D, D) of the rows of x (N, D).

    S = (1/N) sum_n (x_n - xbar)^T (x_n - xbar): divided by N, not N - 1, because pPCA's
    maximum-likelihood solution is written in terms of this S. Accumulated in float64, `chunk`
    rows at a time, so a float32 data set is never copied whole.
    """
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"x must have shape (N, D) with N >= 1, got shape {x.shape}")
    n, d = x.shape
    mean = np.zeros(d)
    for s in range(0, n, chunk):
        mean += x[s:s + chunk].sum(0, dtype=np.float64)
    mean /= n
    S = np.zeros((d, d))
    for s in range(0, n, chunk):
        xc = x[s:s + chunk].astype(np.float64) - mean
        S += xc.T @ xc
    if not np.all(np.isfinite(S)):
        raise ValueError("x contains NaN or inf")
    return mean, S / n


def learned_sigma2(eigenvalues: Array, latent_dim: int) -> float:
    """The maximum-likelihood noise variance: the mean of the D - Z smallest eigenvalues.

    sigma2 = (1 / (D - Z)) sum_{j > Z} l_j: the variance per dimension that the Z principal
    directions leave unexplained.
    """
    l = _eigenvalues(eigenvalues)
    d, z = len(l), _latent(latent_dim)
    if z >= d:
        raise ValueError(f"a learned sigma2 needs latent_dim < D; got latent_dim {z} for D = {d}")
    return float(l[z:].mean())


@dataclass(frozen=True)
class Spectrum:
    """The data mean b (D,) and the eigen-decomposition of the sample covariance S = U diag(l) U^T,
    largest eigenvalue first: eigenvalues (D,), eigenvectors (D, D) with column j that of l_j.
    Everything a pPCA fit needs, for any Z and sigma2 (compute it once, fit many times)."""

    mean: Array
    eigenvalues: Array
    eigenvectors: Array


def spectrum(x: Array) -> Spectrum:
    """The mean and the eigen-decomposition of the sample covariance of the rows of x (N, D)."""
    mean, S = moments(x)
    l, U = np.linalg.eigh(S)                         # ascending, U[:, j] the eigenvector of l[j]
    # largest first; rounding can leave eigenvalues of -1e-17 where the true ones are 0
    return Spectrum(mean=mean, eigenvalues=np.maximum(l[::-1], 0.0), eigenvectors=U[:, ::-1])


def fit_ppca(x: Array | Spectrum, latent_dim: int, sigma2: str | float = "learned") -> PPCA:
    """The maximum-likelihood probabilistic PCA of the rows of x (N, D), with Z = latent_dim.

    With U, l the eigenvectors and eigenvalues of the sample covariance S (largest first),
    Tipping and Bishop's solution is, in the decoder's layout (row j of W is latent dimension j):
        b = the data mean
        sigma2 = "learned": the mean of the D - Z smallest eigenvalues, and then
                 W = (L_Z - sigma2 I)^(1/2) U_Z^T                      (Z, D)
        sigma2 = a number: fixed, and then only the directions with l_j > sigma2 are kept:
                 row j of W = sqrt(l_j - sigma2) u_j^T if l_j > sigma2, else 0 (j <= Z)
    (W is unique up to a rotation R W with R orthogonal (Z, Z); this is the one with orthogonal
    rows.) A zero row is a collapsed latent dimension: the decoder ignores it, and the best
    encoder sets q(z_j | x) to the prior N(0, 1). So with a fixed sigma2 the fit predicts exactly
    how many latent dimensions a linear VAE keeps: active = #{j <= Z : l_j > sigma2}.

    x: the data (N, D), or its Spectrum (to fit several Z or sigma2 from one eigen-decomposition).
    Returns a PPCA (W, b, sigma2, eigenvalues, active, learned).
    """
    z = _latent(latent_dim)
    spec = x if isinstance(x, Spectrum) else spectrum(x)
    l, U = spec.eigenvalues, spec.eigenvectors
    d = len(l)
    if z > d:
        raise ValueError(f"latent_dim must be <= D = {d}, got {z}")
    learned = isinstance(sigma2, str)
    if learned:
        if sigma2 != "learned":
            raise ValueError(f"sigma2 must be 'learned' or a positive number, got {sigma2!r}")
        s2 = learned_sigma2(l, z)
        if s2 <= 1e-12 * l[0]:                       # zero but for rounding: rank(S) <= Z
            raise ValueError(f"the data span at most {z} dimensions: the learned sigma2 would be 0 "
                             "(use fewer latent dimensions, more examples, or a fixed sigma2)")
    else:
        s2 = _positive(sigma2)
    scale = np.sqrt(np.maximum(l[:z] - s2, 0.0))                 # (Z,): 0 for a collapsed direction
    W = scale[:, None] * U[:, :z].T                              # (Z, D)
    W[scale == 0] = 0.0
    return PPCA(W=W, b=spec.mean.copy(), sigma2=float(s2), eigenvalues=l.copy(), active=int(np.sum(scale > 0)),
                learned=learned)


def ppca_log_likelihood(eigenvalues: Array, latent_dim: int, sigma2: str | float = "learned") -> float:
    """The maximum mean log-likelihood per example of pPCA with Z latent dimensions, from the
    eigenvalues (D,) of the sample covariance alone.

    At the fit, C = W.T W + sigma2 I has eigenvalue l_j along each of the k active directions
    (those j <= Z with l_j > sigma2) and sigma2 along the others, so with S's eigenvalues
        log det C      = sum_{j<=k} log l_j + (D - k) log sigma2
        tr(C^-1 S)     = k + sum_{j>k} l_j / sigma2
        mean log p(x)  = -0.5 * [D log 2 pi + log det C + tr(C^-1 S)]
    (the mean over the data of (x - b)^T C^-1 (x - b) is tr(C^-1 S) when b is the data mean).
    For a learned sigma2, k = Z and sum_{j>Z} l_j = (D - Z) sigma2, which gives Tipping and
    Bishop's closed form
        -0.5 * [D log 2 pi + sum_{j<=Z} log l_j + (D - Z) log sigma2 + D].
    """
    l = _eigenvalues(eigenvalues)
    d, z = len(l), _latent(latent_dim)
    s2 = learned_sigma2(l, z) if isinstance(sigma2, str) and sigma2 == "learned" else _positive(sigma2)
    if s2 <= 0:
        raise ValueError("the learned sigma2 is 0: the log-likelihood is +infinity")
    kept = l[:z][l[:z] > s2]
    k = len(kept)
    log_det = np.sum(np.log(kept)) + (d - k) * math.log(s2)
    trace = k + np.sum(l[k:]) / s2
    return float(-0.5 * (d * LOG_2PI + log_det + trace))


# --------------------------------------------------------------------------------------------
# The marginal log-likelihood of a linear Gaussian decoder
# --------------------------------------------------------------------------------------------

def marginal_log_likelihood(x: Array, W: Array, b: Array, sigma2: float) -> Array:
    """log p(x) = log N(x; b, W.T W + sigma2 I) for each row of x. x: (N, D) -> (N,).

    The exact marginal likelihood of the decoder N(x; z W + b, sigma2 I) under the prior
    z ~ N(0, I): x = z W + b + noise is Gaussian with mean b and covariance C = W.T W + sigma2 I.
    Computed from the thin SVD W = P diag(s) V^T (V^T (k, D), k = min(Z, D), orthonormal rows)
    without forming the (D, D) matrix C: C has eigenvalue s_i^2 + sigma2 along row i of V^T and
    sigma2 on the rest of the space, so with r = x - b,
        r C^-1 r^T = sum_i (r . v_i)^2 / (s_i^2 + sigma2) + |r - (r V) V^T|^2 / sigma2
        log det C  = sum_i log(s_i^2 + sigma2) + (D - k) log sigma2
        log p(x)   = -0.5 * [D log 2 pi + log det C + r C^-1 r^T].
    The part of r outside the span of W is formed explicitly and then squared, rather than as
    |r|^2 - |r V|^2, which cancels when sigma2 is small: stable for D = 784. Cost O(N D Z).
    """
    x, W, b, s2 = _decoder(x, W, b, sigma2)
    d = x.shape[1]
    _, s, Vt = np.linalg.svd(W, full_matrices=False)            # s (k,), Vt (k, D)
    r = x - b                                                    # (N, D)
    proj = r @ Vt.T                                              # (N, k): coordinates along V
    outside = r - proj @ Vt                                      # (N, D): the rest of r
    quad = (proj ** 2) @ (1 / (s ** 2 + s2)) + np.einsum("nd,nd->n", outside, outside) / s2
    log_det = np.sum(np.log(s ** 2 + s2)) + (d - len(s)) * math.log(s2)
    return -0.5 * (d * LOG_2PI + log_det + quad)


# --------------------------------------------------------------------------------------------
# The exact ELBO of a Gaussian encoder with a linear Gaussian decoder
# --------------------------------------------------------------------------------------------

def linear_encoder(x: Array, A: Array, a: Array) -> tuple[Array, Array]:
    """The linear VAE's encoder: [mu | logvar] = x @ A + a. x (N, D), A (D, 2Z), a (2Z,) ->
    (mu (N, Z), logvar (N, Z)): the first Z columns are the means, the last Z the log-variances."""
    x, A, a = _f64(x), _f64(A), _f64(a)
    if A.ndim != 2 or A.shape[1] % 2 or A.shape[0] != x.shape[1] or a.shape != (A.shape[1],):
        raise ValueError(f"A must be (D, 2Z) and a (2Z,) for x of shape {x.shape}; "
                         f"got A {A.shape}, a {a.shape}")
    out = x @ A + a
    z = A.shape[1] // 2
    return out[:, :z], out[:, z:]


def expected_log_likelihood(x: Array, W: Array, b: Array, sigma2: float, mu: Array,
                            logvar: Array) -> Array:
    """E_q[log p(x | z)] in closed form, for q(z | x) = N(mu, diag(v)), v = exp(logvar). (N,).

    With z = mu + e, e ~ N(0, diag(v)), the residual is x - z W - b = r - e W, r = x - mu W - b:
        E |r - e W|^2 = |r|^2 - 2 r E[e W]^T + E |e W|^2 = |r|^2 + sum_j v_j |W_j|^2
    (E[e] = 0, E[e_i e_j] = v_j [i = j]; W_j is row j of W), so
        E_q[log p(x | z)] = log N(x; mu W + b, sigma2 I) - 0.5 * sum_j v_j |W_j|^2 / sigma2
                          = -0.5 * [D log 2 pi sigma2 + (|r|^2 + sum_j v_j |W_j|^2) / sigma2].
    (Tipping and Bishop's layout writes the last term tr(W^T W diag(v)) / sigma2.)
    mu: (N, Z); logvar: (N, Z), or (Z,) for a variance that does not depend on x.
    """
    x, W, b, s2 = _decoder(x, W, b, sigma2)
    mu, v = _encoder_output(x, W, mu, logvar)
    r = x - mu @ W - b                                           # (N, D)
    spread = v @ np.einsum("zd,zd->z", W, W)                     # (N,) or (): sum_j v_j |W_j|^2
    return -0.5 * (x.shape[1] * (LOG_2PI + math.log(s2)) + (np.einsum("nd,nd->n", r, r) + spread) / s2)


def kl_to_prior(mu: Array, logvar: Array) -> Array:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) = 0.5 * sum_j (mu_j^2 + exp(logvar_j) - 1 - logvar_j).

    mu: (N, Z), logvar: (N, Z) or (Z,) -> (N,). Written with expm1 (exp(t) - 1), exact near t = 0.
    """
    mu, logvar = _f64(mu), _f64(logvar)
    return 0.5 * (np.sum(mu * mu, axis=1) + np.sum(np.expm1(logvar) - logvar, axis=-1))


def elbo(x: Array, W: Array, b: Array, sigma2: float, mu: Array, logvar: Array) -> Array:
    """The exact ELBO of each example, no sampling: E_q[log p(x | z)] - KL(q || N(0, I)). (N,).

    q(z | x) = N(mu, diag(exp(logvar))) (any encoder's output: mu (N, Z), logvar (N, Z) or (Z,)),
    p(x | z) = N(x; z W + b, sigma2 I). Since log p(x) - ELBO = KL(q(z | x) || p(z | x)) >= 0,
    elbo(...) <= marginal_log_likelihood(x, W, b, sigma2) for every encoder, with equality
    exactly when q is the true posterior (see posterior and optimal_encoder).
    """
    return expected_log_likelihood(x, W, b, sigma2, mu, logvar) - kl_to_prior(mu, logvar)


# --------------------------------------------------------------------------------------------
# The best encoder for a given decoder
# --------------------------------------------------------------------------------------------

def posterior(x: Array, W: Array, b: Array, sigma2: float) -> tuple[Array, Array]:
    """The exact posterior p(z | x) = N(mean, cov) of the linear Gaussian decoder.

    With M = W W.T + sigma2 I (Z, Z) (Tipping and Bishop's W^T W + sigma2 I):
        mean = (x - b) @ W.T @ M^-1     (N, Z)
        cov  = sigma2 M^-1              (Z, Z), the same for every x
    (complete the square in log p(x | z) + log p(z) = -0.5 [|x - b - z W|^2 / sigma2 + |z|^2]:
    the precision is (W W.T + sigma2 I) / sigma2 = M / sigma2, the linear term (x - b) W.T / sigma2).
    """
    x, W, b, s2 = _decoder(x, W, b, sigma2)
    M = W @ W.T + s2 * np.eye(W.shape[0])
    mean = np.linalg.solve(M, W @ (x - b).T).T                   # (N, Z) = (x - b) W.T M^-1
    cov = s2 * np.linalg.inv(M)
    return mean, 0.5 * (cov + cov.T)


def optimal_encoder(W: Array, b: Array, sigma2: float) -> tuple[Array, Array]:
    """The linear encoder (A (D, 2Z), a (2Z,), the head's layout) that maximises the ELBO of every
    x among diagonal Gaussians q(z | x) = N(mu, diag(v)), for the decoder (W, b, sigma2).

    mu: the ELBO is -0.5 [|x - b - mu W|^2 / sigma2 + |mu|^2] plus terms free of mu, a quadratic
        maximised at the posterior mean mu = (x - b) W.T M^-1, M = W W.T + sigma2 I: so
        A[:, :Z] = W.T M^-1 and a[:Z] = -b W.T M^-1.
    v:  the terms in v_j are -0.5 [v_j |W_j|^2 / sigma2 + v_j - log v_j], maximised where
        |W_j|^2 / sigma2 + 1 = 1 / v_j, i.e. v_j = sigma2 / (|W_j|^2 + sigma2) = sigma2 / M_jj,
        the same for every x: A[:, Z:] = 0 and a[Z:] = log(sigma2 / diag(M)).
    This q is the true posterior, and ELBO = log p(x), when M is diagonal (W's rows orthogonal,
    as in fit_ppca's W); otherwise the gap is KL(q || p(z | x)) > 0. A collapsed dimension
    (W_j = 0) gets mu_j = 0 and v_j = 1: the prior.
    """
    W, b = _f64(W), _f64(b)
    s2 = _positive(sigma2)
    z, d = W.shape
    M = W @ W.T + s2 * np.eye(z)
    A_mu = np.linalg.solve(M, W).T                               # (D, Z) = W.T M^-1 (M symmetric)
    A = np.concatenate([A_mu, np.zeros((d, z))], axis=1)
    a = np.concatenate([-b @ A_mu, np.log(s2 / np.diag(M))])
    return A, a


# --------------------------------------------------------------------------------------------
# Reading the arrays of an npvae model
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LinearVAE:
    """The arrays of a linear Gaussian VAE, float64: encoder [mu | logvar] = x @ A + a
    (A (D, 2Z), a (2Z,)) and decoder N(z @ W + b, sigma2 I) (W (Z, D), b (D,))."""

    A: Array
    a: Array
    W: Array
    b: Array
    sigma2: float

    def encode(self, x: Array) -> tuple[Array, Array]:
        """(mu (N, Z), logvar (N, Z)) of each row of x (N, D)."""
        return linear_encoder(x, self.A, self.a)

    def elbo(self, x: Array) -> Array:
        """The exact ELBO of each row of x: (N,)."""
        return elbo(x, self.W, self.b, self.sigma2, *self.encode(x))

    def log_likelihood(self, x: Array) -> Array:
        """The exact log p(x) of each row of x: (N,)."""
        return marginal_log_likelihood(x, self.W, self.b, self.sigma2)


def linear_vae_arrays(model, log_sigma2=None) -> LinearVAE:
    """The arrays of an npvae VAE built with hidden_dims=[] (and no decoder hidden layers):
    the head's "head.W", "head.b" are A, a and the decoder's "dec0.W", "dec0.b" are W, b.

    log_sigma2: log of the decoder's variance, a number or an array of shape (1,); by default
    model.params["log_sigma2"] (the learned parameter of likelihood="gaussian"). The arrays
    describe the model only when its decoder's output is the Gaussian's mean itself
    (decoder_output="linear"), not a sigmoid of it; a model that says otherwise is refused.
    """
    if getattr(model, "hidden_dims", None) != [] or getattr(model, "decoder_hidden_dims", []) != []:
        raise ValueError("linear_vae_arrays needs a linear VAE: hidden_dims=[] and no decoder hidden layers")
    output = getattr(model, "decoder_output", None)
    if output not in (None, "linear"):
        raise ValueError(f"the model's decoder output is {output!r}: its mean is not z @ W + b "
                         "(build it with decoder_output='linear')")
    p = model.params
    if log_sigma2 is None:
        if "log_sigma2" not in p:
            raise ValueError("the model has no parameter 'log_sigma2': pass log_sigma2= (log of the decoder's variance)")
        log_sigma2 = p["log_sigma2"]
    log_sigma2 = np.asarray(log_sigma2, dtype=np.float64)
    if log_sigma2.size != 1 or not np.isfinite(log_sigma2).all():
        raise ValueError(f"log_sigma2 must be one finite number, got {log_sigma2!r}")
    return LinearVAE(A=_f64(p["head.W"]).copy(), a=_f64(p["head.b"]).copy(), W=_f64(p["dec0.W"]).copy(),
                     b=_f64(p["dec0.b"]).copy(), sigma2=float(np.exp(log_sigma2.reshape(()))))


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------

def _f64(a) -> Array:
    return np.asarray(a, dtype=np.float64)


def _positive(value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"sigma2 must be 'learned' or a positive number, got {value!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"sigma2 must be a finite number > 0, got {value!r}")
    return v


def _latent(latent_dim) -> int:
    if isinstance(latent_dim, bool) or int(latent_dim) != latent_dim or latent_dim < 1:
        raise ValueError(f"latent_dim must be an integer >= 1, got {latent_dim!r}")
    return int(latent_dim)


def _eigenvalues(eigenvalues) -> Array:
    l = _f64(eigenvalues)
    if l.ndim != 1 or len(l) < 1 or not np.all(np.isfinite(l)):
        raise ValueError("eigenvalues must be a non-empty 1-D array of finite numbers")
    if np.any(np.diff(l) > 1e-12 * max(1.0, float(np.abs(l).max()))):
        raise ValueError("eigenvalues must be sorted largest first")
    return np.maximum(l, 0.0)


def _decoder(x, W, b, sigma2) -> tuple[Array, Array, Array, float]:
    x, W, b = _f64(x), _f64(W), _f64(b)
    if x.ndim != 2 or W.ndim != 2 or W.shape[1] != x.shape[1] or b.shape != (x.shape[1],):
        raise ValueError(f"need x (N, D), W (Z, D), b (D,); got x {x.shape}, W {W.shape}, b {b.shape}")
    return x, W, b, _positive(sigma2)


def _encoder_output(x: Array, W: Array, mu, logvar) -> tuple[Array, Array]:
    mu, logvar = _f64(mu), _f64(logvar)
    n, z = x.shape[0], W.shape[0]
    if mu.shape != (n, z) or logvar.shape not in ((n, z), (z,)):
        raise ValueError(f"need mu ({n}, {z}) and logvar ({n}, {z}) or ({z},); "
                         f"got mu {mu.shape}, logvar {logvar.shape}")
    return mu, np.exp(logvar)
