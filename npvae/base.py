"""The bookkeeping every model shares, none of it maths: settings, named parameters, input checks, repr, config.

npvae.models (Autoencoder, VAE) and npvae.cvae build on these classes, so that their own lines
are the layers, the losses and the backward pass. Shapes: N batch, D input, Z latent.
"""

from __future__ import annotations

import numpy as np

from . import checks
from .gaussian import GaussianLikelihood
from .layers import Layer, Sequential, as_generator

Array = np.ndarray


def _key(layer: str, param: str) -> str:
    """A parameter's name in model.params: "enc0.W"; "log_sigma2" is its layer's one parameter."""
    return param if layer == param else f"{layer}.{param}"


class Parameters:
    """The named parameters and gradients of a model's layers: `params` and `grads`, dicts with the
    same keys ("enc0.W", "head.b", "dec1.W", ...), and `num_params`."""

    gaussian: GaussianLikelihood | None = None       # (a model's, with likelihood="gaussian")

    def _name_layers(self, parts: dict[str, Layer]) -> None:
        """Name the Dense layers of each part ("enc0", "head", "dec1", ...) and collect their
        parameters ("enc0.W", ...; a learned sigma^2 is "log_sigma2" itself)."""
        self.layers: dict[str, Layer] = {}
        for prefix, part in parts.items():
            if isinstance(part, Sequential):
                self.layers.update({f"{prefix}{i}": layer for i, layer in enumerate(part.dense_layers)})
            else:
                self.layers[prefix] = part
        if self.gaussian is not None and self.gaussian.params:
            self.layers["log_sigma2"] = self.gaussian
        self.params = {_key(n, k): p for n, layer in self.layers.items() for k, p in layer.params.items()}

    @property
    def grads(self) -> dict[str, Array]:
        """The gradients of the last `loss_and_grads`, with the keys of `params`."""
        return {_key(n, k): g for n, layer in self.layers.items() for k, g in layer.grads.items()}

    @property
    def num_params(self) -> int:
        return sum(p.size for p in self.params.values())


class ModelBase(Parameters):
    """A model's settings, checked; its input checks, repr, config and codes."""

    kind: str

    def __init__(self, input_dim, hidden_dims, latent_dim, likelihood: str, activation: str, dtype, rng,
                 decoder_hidden_dims, sigma2="learned", decoder_output: str = "sigmoid") -> None:
        self.input_dim, self.latent_dim = checks.size(input_dim, "input_dim"), checks.size(latent_dim, "latent_dim")
        self.hidden_dims = checks.sizes(hidden_dims, "hidden_dims")
        # The decoder mirrors the encoder unless told otherwise: 784-400-20 decodes 20-400-784.
        self.decoder_hidden_dims = (self.hidden_dims[::-1] if decoder_hidden_dims is None
                                    else checks.sizes(decoder_hidden_dims, "decoder_hidden_dims"))
        self.likelihood, self.activation, self.decoder_output = likelihood, activation, decoder_output
        self.dtype, self.sigma2 = checks.likelihood_settings(likelihood, dtype, decoder_output, sigma2)
        self.rng = as_generator(rng)
        # likelihood="gaussian": N(x; mean, sigma^2 I), and a learned sigma^2's parameter
        self.gaussian = None if self.sigma2 is None else GaussianLikelihood(self.sigma2, decoder_output, self.dtype)

    def __repr__(self) -> str:
        sizes = "-".join(map(str, [self.input_dim, *self.hidden_dims, self.latent_dim]))
        noise = "" if self.sigma2 is None else f" sigma2={self.sigma2}, {self.decoder_output} output,"
        return f"{type(self).__name__}({sizes}, {self.likelihood},{noise} {self.num_params:,} parameters)"

    def check_x(self, x: Array, name: str = "x") -> Array:
        """Check a batch of images (N, D) and return it in the model's dtype: finite, and in [0, 1]
        for the L2 and Bernoulli likelihoods (a Gaussian's data may be any real numbers)."""
        return checks.batch(x, self.input_dim, self.likelihood, self.dtype, name)

    def check_data(self, images: Array, name: str = "images") -> None:
        """Check a whole data set once, before training on it: (N, D) with N >= 1, and either
        uint8 pixels (0..255, divided by 255 batch by batch) or floats (in [0, 1] but for a Gaussian)."""
        checks.data_set(images, self.input_dim, self.likelihood, name)

    def _check_z(self, z: Array, name: str = "z") -> Array:
        return checks.codes(z, self.latent_dim, self.dtype, name)

    def log_sigma2(self, mean: Array | None = None, x: Array | None = None) -> Array:
        """The Gaussian's t = log sigma^2, shape (1,): see npvae.gaussian.GaussianLikelihood.log_sigma2."""
        return self.gaussian.log_sigma2(mean, x)

    def codes(self, x: Array, batch_size: int = 1000) -> Array:
        """The point in latent space of each image, `batch_size` images at a time: the centre mu
        of its cloud for a VAE, its embedding z for an autoencoder. x: (N, D) -> (N, Z)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        x = self.check_x(x)
        return np.concatenate([self._code(x[s:s + batch_size]) for s in range(0, len(x), batch_size)])

    def _code(self, x: Array) -> Array:
        raise NotImplementedError

    def config(self) -> dict:
        """The constructor arguments, JSON-serialisable: enough to rebuild the architecture."""
        return {"model": self.kind, "input_dim": self.input_dim,
                "hidden_dims": list(self.hidden_dims), "latent_dim": self.latent_dim,
                "decoder_hidden_dims": list(self.decoder_hidden_dims), "likelihood": self.likelihood,
                "activation": self.activation, "dtype": str(self.dtype),
                "sigma2": self.sigma2, "decoder_output": self.decoder_output}
