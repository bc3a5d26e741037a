"""The Gaussian likelihood of a model (likelihood="gaussian"): p(x | z) = N(x; mean, sigma^2 I).

The models of npvae.models hold one of these when built with likelihood="gaussian" and call it
for the reconstruction term; the loss itself, with its derivation, is losses.gaussian_reconstruction.

- The mean is the decoder's output through a sigmoid (decoder_output="sigmoid", for pixels in
  [0, 1]) or the raw output itself ("linear": data may be any real numbers). With
  hidden_dims=[] and a linear output the VAE is linear, probabilistic PCA's model (npvae.ppca).
- One variance sigma^2 serves every pixel, so none can collapse to 0 on pixels that never vary:
  sigma2="learned" (the default) learns t = log sigma^2 as the parameter "log_sigma2", shape
  (1,), starting at 0 (sigma^2 = 1); "optimal" sets sigma^2 to each batch's mean squared error
  (the "optimal sigma" of Rybkin, Daniilidis and Levine 2021), floored at SIGMA2_FLOOR; a
  positive number fixes it.

Shapes: N batch, D pixels.
"""

from __future__ import annotations

import numpy as np

from . import losses
from .layers import Layer, sigmoid

Array = np.ndarray

SIGMA2_FLOOR = 1e-6       # the "optimal" sigma^2 never goes below this (a batch reconstructed exactly)


class GaussianLikelihood(Layer):
    """-log N(x; mean, sigma^2 I) of the decoder's output: the model's reconstruction term.

    sigma2: "learned", "optimal" or a float; decoder_output: "sigmoid" or "linear". params and
    grads hold "log_sigma2" (1,) for a learned sigma^2, and nothing otherwise.
    """

    def __init__(self, sigma2: str | float, decoder_output: str, dtype) -> None:
        super().__init__()
        self.sigma2, self.decoder_output, self.dtype = sigma2, decoder_output, np.dtype(dtype)
        if sigma2 == "learned":
            self.params = {"log_sigma2": np.zeros(1, dtype=dtype)}
            self.grads = {"log_sigma2": np.zeros(1, dtype=dtype)}

    def mean(self, out: Array) -> Array:
        """The Gaussian's mean from the decoder's output out (N, D): sigmoid(out), or out itself."""
        return sigmoid(out) if self.decoder_output == "sigmoid" else out

    def log_sigma2(self, mean: Array | None = None, x: Array | None = None) -> Array:
        """t = log sigma^2, shape (1,): the learned parameter, the log of the fixed value, or for
        sigma2="optimal" log SSE / (N D), the batch's mean squared error (mean, x: (N, D)),
        floored at sigma^2 = SIGMA2_FLOOR (1e-6)."""
        if self.sigma2 == "learned":
            return self.params["log_sigma2"]
        if self.sigma2 == "optimal":
            return np.log(np.maximum([np.mean((x - mean) ** 2)], SIGMA2_FLOOR)).astype(self.dtype)
        return np.log(np.array([self.sigma2], dtype=self.dtype))

    def per_example(self, out: Array, x: Array) -> Array:
        """The loss of each example, constant included. out, x: (N, D) -> (N,)."""
        mean = self.mean(out)
        return losses.gaussian_per_example(mean, x, self.log_sigma2(mean, x))

    def reconstruction(self, out: Array, x: Array) -> tuple[float, Array]:
        """The batch mean of the loss and its gradient dL/dout (N, D); for a learned sigma^2 it
        also fills grads["log_sigma2"]."""
        mean = self.mean(out)
        # "optimal": sigma^2 minimises the loss, so dL/dsigma^2 = 0 there and its dependence on the
        # mean adds nothing to dL/dmean (the envelope theorem): the fixed-sigma^2 gradient is exact.
        recon, dmean, dlog_sigma2 = losses.gaussian_reconstruction(mean, x, self.log_sigma2(mean, x))
        if self.params:
            self.grads["log_sigma2"] = dlog_sigma2
        if self.decoder_output == "linear":
            return recon, dmean
        return recon, dmean * mean * (1 - mean)          # mean = sigmoid(out): dmean/dout = mean (1 - mean)
