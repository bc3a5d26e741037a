"""The autoencoder and the variational autoencoder, built from npvae's layers and losses.

Autoencoder:  x -> encoder -> z -> decoder -> logits, x_hat = sigmoid(logits)
VAE:          x -> encoder -> (mu, logvar) -> z = mu + exp(0.5 * logvar) * eps -> decoder -> logits

likelihood="gaussian" reads the decoder's output as the mean of N(x; mean, sigma^2 I), with
mean = sigmoid(logits) (decoder_output="sigmoid") or the raw output itself ("linear"), and one
variance sigma^2 for every pixel: learned, "optimal" (each batch's mean squared error) or fixed.

Shapes: N batch, D input (784 for MNIST), H hidden, Z latent.
"""

from __future__ import annotations

import numpy as np

from . import checks, losses
from .layers import Dense, Layer, Sequential, as_generator, mlp, sigmoid

Array = np.ndarray

LIKELIHOODS, DECODER_OUTPUTS = checks.LIKELIHOODS, checks.DECODER_OUTPUTS
SIGMA2_FLOOR = 1e-6       # the "optimal" sigma^2 never goes below this (a batch reconstructed exactly)


class NoiseVariance(Layer):
    """The Gaussian decoder's learned log-variance t = log sigma^2, one number for every pixel.

    A parameter without a forward pass: params["log_sigma2"] and grads["log_sigma2"], shape (1,),
    starting at 0 (sigma^2 = 1). The model's loss fills the gradient.
    """

    def __init__(self, dtype) -> None:
        super().__init__()
        self.params = {"log_sigma2": np.zeros(1, dtype=dtype)}
        self.grads = {"log_sigma2": np.zeros(1, dtype=dtype)}


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


def _key(layer: str, param: str) -> str:
    """A parameter's name in model.params: "enc0.W"; a layer named after its one parameter gives it
    that name alone ("log_sigma2")."""
    return param if layer == param else f"{layer}.{param}"


class _Model:
    """What both models share: argument checks, the decoder, and the named parameters."""

    kind: str
    decoder: Sequential

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
        # a learned sigma^2 is a parameter of its own, "log_sigma2", beside the layers' ones
        self.noise = NoiseVariance(self.dtype) if self.sigma2 == "learned" else None

    def _name_layers(self, parts: dict[str, Layer]) -> None:
        """Name the Dense layers ("enc0", "head", "dec1", ...) and collect their parameters
        ("enc0.W", ...; a learned sigma^2 is "log_sigma2" itself)."""
        self.layers: dict[str, Layer] = {}
        for prefix, part in parts.items():
            if isinstance(part, Sequential):
                self.layers.update({f"{prefix}{i}": layer for i, layer in enumerate(part.dense_layers)})
            else:
                self.layers[prefix] = part
        if getattr(self, "noise", None) is not None:      # (a CVAE part builds no noise)
            self.layers["log_sigma2"] = self.noise
        self.params = {_key(n, k): p for n, layer in self.layers.items() for k, p in layer.params.items()}

    @property
    def grads(self) -> dict[str, Array]:
        """The gradients of the last `loss_and_grads`, with the keys of `params`."""
        return {_key(n, k): g for n, layer in self.layers.items() for k, g in layer.grads.items()}

    @property
    def num_params(self) -> int:
        return sum(p.size for p in self.params.values())

    def __repr__(self) -> str:
        sizes = "-".join(map(str, [self.input_dim, *self.hidden_dims, self.latent_dim]))
        noise = "" if self.sigma2 is None else f" sigma2={self.sigma2}, {self.decoder_output} output,"
        return f"{type(self).__name__}({sizes}, {self.likelihood},{noise} {self.num_params:,} parameters)"

    # -- input checks (npvae.checks): clear errors for bad input -----------------------------

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

    # -- decoding -----------------------------------------------------------------------------

    def decode_logits(self, z: Array) -> Array:
        """Decoder output before the sigmoid (with decoder_output="linear": the mean). z: (N, Z) -> (N, D)."""
        return self.decoder.forward(self._check_z(z))

    def decode(self, z: Array) -> Array:
        """Decoded images x_hat = sigmoid(decoder(z)), values in [0, 1]. z: (N, Z) -> (N, D).

        (In (0, 1) but for rounding: float32 gives exactly 1 for logits above about 17.)
        With decoder_output="linear", the decoder's raw output, the Gaussian's mean: any reals."""
        return self._mean(self.decode_logits(z))

    def _mean(self, out: Array) -> Array:
        return sigmoid(out) if self.decoder_output == "sigmoid" else out

    # -- the reconstruction loss ------------------------------------------------------------

    def log_sigma2(self, mean: Array | None = None, x: Array | None = None) -> Array:
        """t = log sigma^2 of the Gaussian decoder, shape (1,): the learned parameter, log of the
        fixed value, or for sigma2="optimal" log SSE / (N D), the batch's mean squared error
        (mean, x: (N, D)) floored at sigma^2 = SIGMA2_FLOOR (1e-6)."""
        if self.sigma2 == "learned":
            return self.noise.params["log_sigma2"]
        if self.sigma2 == "optimal":
            return np.log(np.maximum([np.mean((x - mean) ** 2)], SIGMA2_FLOOR)).astype(self.dtype)
        return np.log(np.array([self.sigma2], dtype=self.dtype))

    def _reconstruction_per_example(self, out: Array, x: Array) -> Array:
        """The reconstruction loss of each example from the decoder's output out. out, x: (N, D) -> (N,)."""
        if self.likelihood != "gaussian":
            return losses.RECONSTRUCTION_PER_EXAMPLE[self.likelihood](out, x)
        mean = self._mean(out)
        return losses.gaussian_per_example(mean, x, self.log_sigma2(mean, x))

    def _reconstruction(self, out: Array, x: Array) -> tuple[float, Array]:
        """The batch's reconstruction loss and its gradient dL/dout (N, D); for a learned sigma^2
        it also fills grads["log_sigma2"]."""
        if self.likelihood != "gaussian":
            return losses.RECONSTRUCTION[self.likelihood](out, x)
        mean = self._mean(out)
        # "optimal": sigma^2 minimises the loss, so dL/dsigma^2 = 0 there and its dependence on the
        # mean adds nothing to dL/dmean (the envelope theorem): the fixed-sigma^2 gradient is exact.
        recon, dmean, dlog_sigma2 = losses.gaussian_reconstruction(mean, x, self.log_sigma2(mean, x))
        if self.noise is not None:
            self.noise.grads["log_sigma2"] = dlog_sigma2
        if self.decoder_output == "linear":
            return recon, dmean
        return recon, dmean * mean * (1 - mean)          # mean = sigmoid(out): dmean/dout = mean (1 - mean)

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


class Autoencoder(_Model):
    """A plain autoencoder: x -> encoder -> z (the embedding) -> decoder -> x_hat.

    Trained with the study note's L2 loss (sum over pixels of (x - x_hat)^2, mean over the
    batch) by default; likelihood="bernoulli" uses the binary cross-entropy instead, and
    "gaussian" the Gaussian's negative log-density (sigma2, decoder_output: see the module).
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
    hidden_dims: one int or a list (the encoder's hidden sizes; the decoder mirrors them). With
    hidden_dims=[], likelihood="gaussian" and decoder_output="linear" the VAE is linear,
    q(z|x) = N(A x + a, diag(exp(logvar))), p(x|z) = N(W z + b, sigma^2 I): probabilistic PCA's
    model (npvae.ppca has its exact answer).
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
        if np.shape(eps) != (n, self.latent_dim):
            raise ValueError(f"eps must have shape ({n}, {self.latent_dim}) (batch, latent), got shape {np.shape(eps)}")
        return self._check_z(eps, "eps")

    def sample(self, n: int, rng: np.random.Generator | int | None = None, temperature: float = 1.0) -> Array:
        """Decode n draws z ~ N(0, temperature^2 I) from the prior. Returns (n, D) images in [0, 1].

        rng: the generator of the draws; by default the model's own, the one training draws eps
        from, so sampling in the middle of training changes the rest of the run: pass rng to
        keep them apart.
        """
        if not (temperature >= 0 and np.isfinite(temperature)):
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
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
        """Loss and gradients for one batch.

        x: (N, D) in [0, 1]; eps: (N, Z) fixes the draw, else the model's generator draws it.
        Returns (report, grads): report has "loss", "recon", "kl" (per-image batch means);
        grads the gradients of "loss", with the keys of `params`.
        """
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
