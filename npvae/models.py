"""The autoencoder and the variational autoencoder, built from npvae's layers and losses.

Autoencoder:  x -> encoder -> z -> decoder -> logits, x_hat = sigmoid(logits)
VAE:          x -> encoder -> (mu, logvar) -> z = mu + exp(0.5 * logvar) * eps -> decoder -> logits

The reconstruction term is the study note's L2 loss (likelihood="l2"), the Bernoulli cross-entropy
("bernoulli") or -log N(x; mean, sigma^2 I) ("gaussian", with sigma2 and decoder_output: see
npvae.gaussian). npvae.base holds what both models share that is not maths: the checked settings,
`params` and `grads`, input checks, repr, config. Shapes: N batch, D input, H hidden, Z latent.
"""

from __future__ import annotations

import numpy as np

from . import checks, losses
from .base import ModelBase
from .layers import Dense, Sequential, as_generator, mlp, sigmoid

Array = np.ndarray


class Reparameterize:
    """The reparameterization trick: z = mu + sigma * eps with sigma = exp(0.5 * logvar).

    mu, logvar, eps: (N, Z). Drawing eps ~ N(0, I) outside makes z a deterministic,
    differentiable function of mu and logvar, so gradients flow through the sampling step.
    Note sigma = exp(0.5 * logvar), not exp(logvar): logvar is log sigma^2, as in the KL term.
    """

    def forward(self, mu: Array, logvar: Array, eps: Array) -> Array:
        self.eps, self.sigma = eps, np.exp(0.5 * logvar)
        return mu + self.sigma * eps

    def backward(self, dz: Array) -> tuple[Array, Array]:
        # dz/dmu = 1 and dz/dlogvar = 0.5 * sigma * eps, with the eps of the forward pass.
        return dz, dz * (0.5 * self.sigma * self.eps)


class _Model(ModelBase):
    """What both models share: decoding, and the reconstruction term of the decoder's output."""

    decoder: Sequential

    def decode_logits(self, z: Array) -> Array:
        """Decoder output before the sigmoid (with decoder_output="linear": the mean). z: (N, Z) -> (N, D)."""
        return self.decoder.forward(self._check_z(z))

    def decode(self, z: Array) -> Array:
        """Decoded images x_hat = sigmoid(decoder(z)), values in [0, 1] (float32 gives exactly 1 for
        logits above about 17); with decoder_output="linear" the raw output, the Gaussian's mean."""
        out = self.decode_logits(z)
        return sigmoid(out) if self.gaussian is None else self.gaussian.mean(out)

    def _reconstruction_per_example(self, out: Array, x: Array) -> Array:
        """The reconstruction loss of each example from the decoder's output. out, x: (N, D) -> (N,)."""
        if self.gaussian is not None:
            return self.gaussian.per_example(out, x)
        return losses.RECONSTRUCTION_PER_EXAMPLE[self.likelihood](out, x)

    def _reconstruction(self, out: Array, x: Array) -> tuple[float, Array]:
        """The batch's reconstruction loss and its gradient dL/dout (N, D)."""
        if self.gaussian is not None:          # (which also fills the gradient of a learned log sigma^2)
            return self.gaussian.reconstruction(out, x)
        return losses.RECONSTRUCTION[self.likelihood](out, x)


class Autoencoder(_Model):
    """A plain autoencoder: x -> encoder -> z (the embedding) -> decoder -> x_hat, L2 loss by default.

    hidden_dims: one int or a list (the encoder's hidden sizes; the decoder mirrors them).
    """

    kind = "ae"

    def __init__(self, input_dim: int, hidden_dims: int | list[int], latent_dim: int, activation: str = "relu",
                 dtype=np.float32, rng: np.random.Generator | int | None = None, *,
                 likelihood: str = "l2", decoder_hidden_dims: list[int] | None = None, sigma2="learned",
                 decoder_output: str = "sigmoid") -> None:
        super().__init__(input_dim, hidden_dims, latent_dim, likelihood, activation, dtype, rng, decoder_hidden_dims,
                         sigma2, decoder_output)
        # encoder: D -> H... -> Z, linear at the end; decoder: Z -> H... -> D logits.
        self.encoder = mlp([self.input_dim, *self.hidden_dims, self.latent_dim], activation,
                           rng=self.rng, dtype=self.dtype)
        self.decoder = mlp([self.latent_dim, *self.decoder_hidden_dims, self.input_dim], activation,
                           rng=self.rng, dtype=self.dtype)
        self._name_layers({"enc": self.encoder, "dec": self.decoder})

    def encode(self, x: Array) -> Array:
        """The embedding z of each image. x: (N, D) -> z: (N, Z)."""
        return self.encoder.forward(self.check_x(x))

    _code = encode

    def loss(self, x: Array) -> dict[str, float]:
        """Forward pass only: {"loss", "recon"}, per-image batch means."""
        x = self.check_x(x)
        recon = float(self._reconstruction_per_example(self.decoder.forward(self.encoder.forward(x)), x).mean())
        return {"loss": recon, "recon": recon}

    def loss_and_grads(self, x: Array) -> tuple[dict[str, float], dict[str, Array]]:
        """Loss and gradients for one batch x: (N, D). Returns (report, grads): report has
        "loss" and "recon" (per-image batch means), grads the gradients of "loss"."""
        x = self.check_x(x)
        z = self.encoder.forward(x)                          # (N, Z)
        logits = self.decoder.forward(z)                     # (N, D)
        recon, dlogits = self._reconstruction(logits, x)
        self.encoder.backward(self.decoder.backward(dlogits))
        return {"loss": recon, "recon": recon}, self.grads


class VAE(_Model):
    """A variational autoencoder: the encoder outputs a Gaussian cloud N(mu, exp(logvar)) per image.

    x -> encoder -> h -> head -> [mu | logvar] -> z = mu + exp(0.5 * logvar) * eps -> decoder -> logits
    loss = reconstruction + beta * KL(N(mu, exp(logvar)) || N(0, I)), per image.

    The head is one Dense layer of width 2Z whose output is split into mu and logvar.
    hidden_dims: one int or a list (the encoder's hidden sizes; the decoder mirrors them).
    """

    kind = "vae"

    def __init__(self, input_dim: int, hidden_dims: int | list[int], latent_dim: int, likelihood: str = "l2",
                 beta: float = 1.0, activation: str = "relu", dtype=np.float32,
                 rng: np.random.Generator | int | None = None, *,
                 decoder_hidden_dims: list[int] | None = None, sigma2="learned",
                 decoder_output: str = "sigmoid") -> None:
        super().__init__(input_dim, hidden_dims, latent_dim, likelihood, activation, dtype, rng, decoder_hidden_dims,
                         sigma2, decoder_output)
        self.beta = beta
        # encoder: D -> H... with the activation after every layer (no hidden layers: the identity).
        self.encoder = (mlp([self.input_dim, *self.hidden_dims], activation, final_activation=activation,
                            rng=self.rng, dtype=self.dtype) if self.hidden_dims else Sequential([]))
        last_hidden = self.hidden_dims[-1] if self.hidden_dims else self.input_dim
        self.head = Dense(last_hidden, 2 * self.latent_dim, rng=self.rng, dtype=self.dtype)
        self.reparam = Reparameterize()
        self.decoder = mlp([self.latent_dim, *self.decoder_hidden_dims, self.input_dim], activation,
                           rng=self.rng, dtype=self.dtype)
        self._name_layers({"enc": self.encoder, "head": self.head, "dec": self.decoder})

    @property
    def beta(self) -> float:
        """The weight of the KL term: a finite number >= 0."""
        return self._beta

    @beta.setter
    def beta(self, value: float) -> None:
        self._beta = checks.beta(value)

    def encode(self, x: Array) -> tuple[Array, Array]:
        """The Gaussian of each image. x: (N, D) -> (mu, logvar), each (N, Z)."""
        return self._encode(self.check_x(x))

    def _code(self, x: Array) -> Array:
        return self._encode(x)[0]

    def _encode(self, x: Array) -> tuple[Array, Array]:
        out = self.head.forward(self.encoder.forward(x))       # (N, 2Z) = [mu | logvar]
        return out[:, :self.latent_dim], out[:, self.latent_dim:]

    def draw_eps(self, n: int, eps: Array | None = None) -> Array:
        """eps ~ N(0, I) of shape (n, Z) from the model's generator, or the given eps, checked."""
        if eps is None:
            return self.rng.standard_normal((n, self.latent_dim), dtype=self.dtype)
        return checks.eps(eps, n, self.latent_dim, self.dtype)

    def sample(self, n: int, rng: np.random.Generator | int | None = None, temperature: float = 1.0) -> Array:
        """Decode n draws z ~ N(0, temperature^2 I) from the prior. Returns (n, D) images in [0, 1].

        rng: the draws' generator; by default the model's own, which training draws eps from, so
        that sampling in the middle of training changes the rest of the run (pass rng to keep them apart).
        """
        checks.temperature(temperature)
        rng = self.rng if rng is None else as_generator(rng)
        z = rng.standard_normal((n, self.latent_dim), dtype=self.dtype) * self.dtype.type(temperature)
        return self.decode(z)

    def reconstruct(self, x: Array) -> Array:
        """Decode the centre mu of each image's cloud: the deterministic reconstruction. (N, D)."""
        return self.decode(self.codes(x))

    def loss(self, x: Array, eps: Array | None = None) -> dict[str, float]:
        """Forward pass only: {"loss", "recon", "kl"}, per-image batch means, for one draw of eps."""
        x = self.check_x(x)
        mu, logvar = self._encode(x)
        logits = self.decoder.forward(self.reparam.forward(mu, logvar, self.draw_eps(len(x), eps)))
        recon = float(self._reconstruction_per_example(logits, x).mean())
        kl = float(losses.kl_per_example(mu, logvar).mean())
        return {"loss": recon + self.beta * kl, "recon": recon, "kl": kl}

    def loss_and_grads(self, x: Array, eps: Array | None = None) -> tuple[dict[str, float], dict[str, Array]]:
        """Loss and gradients for one batch x: (N, D); eps: (N, Z) fixes the draw, else the model's
        generator draws it. Returns (report, grads): report has "loss", "recon", "kl" (per-image
        batch means), grads the gradients of "loss", with the keys of `params`."""
        x = self.check_x(x)
        mu, logvar = self._encode(x)                                  # (N, Z) each
        z = self.reparam.forward(mu, logvar, self.draw_eps(len(x), eps))
        logits = self.decoder.forward(z)                              # (N, D)
        recon, dlogits = self._reconstruction(logits, x)
        kl, dkl_dmu, dkl_dlogvar = losses.kl_standard_normal(mu, logvar)

        # loss = recon(decoder(z)) + beta * KL(mu, logvar) with z = mu + sigma * eps: mu and logvar
        # get a gradient through z and one from the KL term.
        dmu, dlogvar = self.reparam.backward(self.decoder.backward(dlogits))
        dhead = np.concatenate([dmu + self.beta * dkl_dmu, dlogvar + self.beta * dkl_dlogvar], axis=1)
        self.encoder.backward(self.head.backward(dhead))              # (N, 2Z) -> (N, H) -> (N, D)
        return {"loss": recon + self.beta * kl, "recon": recon, "kl": kl}, self.grads

    def config(self) -> dict:
        return {**super().config(), "beta": self.beta}


def build_model(config: dict, rng: np.random.Generator | int | None = None) -> Autoencoder | VAE:
    """Rebuild a model from `model.config()` (e.g. one read from a checkpoint)."""
    common = dict(input_dim=config["input_dim"], hidden_dims=config["hidden_dims"],
                  latent_dim=config["latent_dim"], activation=config.get("activation", "relu"),
                  dtype=config.get("dtype", "float32"), rng=rng,
                  decoder_hidden_dims=config.get("decoder_hidden_dims"),
                  # absent from configs written before the Gaussian likelihood: today's defaults
                  sigma2=config.get("sigma2") or "learned", decoder_output=config.get("decoder_output", "sigmoid"))
    kind = config.get("model", "vae")
    if kind == "vae":
        return VAE(likelihood=config.get("likelihood", "l2"), beta=config.get("beta", 1.0), **common)
    if kind == "ae":
        return Autoencoder(likelihood=config.get("likelihood", "l2"), **common)
    raise ValueError(f"unknown model kind {kind!r}; expected 'vae' or 'ae'")
