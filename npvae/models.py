"""The autoencoder and the variational autoencoder, built from npvae's layers and losses.

Autoencoder:  x -> encoder -> z -> decoder -> logits, x_hat = sigmoid(logits)
VAE:          x -> encoder -> (mu, logvar) -> z = mu + exp(0.5 * logvar) * eps -> decoder -> logits

Shapes: N batch, D input (784 for MNIST), H hidden, Z latent.

Speed: `loss_and_grads`, the training step, runs every layer with reuse=True (see npvae.layers),
so the step's intermediate arrays are the same ones from step to step. All it hands back are
floats and `self.grads`. The other public methods (encode, decode, sample, reconstruct, loss)
return new arrays, which stay valid whatever is called next.
"""

from __future__ import annotations

import numpy as np

from . import losses
from .layers import Dense, Layer, Sequential, as_generator, mlp, pack_layers, reusable, sigmoid

Array = np.ndarray

LIKELIHOODS = ("l2", "bernoulli")


class Reparameterize(Layer):
    """The reparameterization trick: z = mu + sigma * eps with sigma = exp(0.5 * logvar).

    mu, logvar, eps: (N, Z). Drawing eps ~ N(0, I) outside the function makes z a
    deterministic, differentiable function of mu and logvar, so gradients flow through the
    sampling step. Note sigma = exp(0.5 * logvar), not exp(logvar): logvar is log sigma^2, the
    same quantity the KL term uses.
    """

    def forward(self, mu: Array, logvar: Array, eps: Array) -> Array:  # type: ignore[override]
        self.eps = eps
        self.sigma = np.exp(0.5 * logvar)
        return mu + self.sigma * eps

    def backward(self, dz: Array) -> tuple[Array, Array]:  # type: ignore[override]
        # dz/dmu = 1 and dz/dlogvar = 0.5 * sigma * eps, with the eps of the forward pass.
        return dz, dz * (0.5 * self.sigma * self.eps)


class _Model:
    """What the autoencoder and the VAE share: validation, the decoder, and the parameter buffers."""

    kind: str
    input_dim: int
    latent_dim: int
    dtype: np.dtype
    likelihood: str
    decoder: Sequential

    def _setup(self, input_dim: int, hidden_dims, latent_dim: int, likelihood: str, activation: str,
               dtype, rng, decoder_hidden_dims) -> np.random.Generator:
        hidden_dims = [int(h) for h in hidden_dims]
        if input_dim < 1 or latent_dim < 1 or any(h < 1 for h in hidden_dims):
            raise ValueError(f"sizes must be positive: input_dim={input_dim}, hidden_dims={hidden_dims}, "
                             f"latent_dim={latent_dim}")
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype}")
        self.input_dim, self.latent_dim = int(input_dim), int(latent_dim)
        self.hidden_dims = hidden_dims
        # The decoder mirrors the encoder unless told otherwise: 784-400-20 decodes 20-400-784.
        if decoder_hidden_dims is None:
            decoder_hidden_dims = hidden_dims[::-1]
        self.decoder_hidden_dims = [int(h) for h in decoder_hidden_dims]
        self.likelihood, self.activation = likelihood, activation
        self.rng = as_generator(rng)
        self.buffers: dict[str, Array] = {}    # arrays the training step reuses (npvae.layers.reusable)
        return self.rng

    def _build(self, named: dict[str, Layer]) -> None:
        # All parameters live in one flat buffer (and all gradients in another); `params` and
        # `grads` hold named views into them. The optimizers update the whole buffer at once.
        self.flat_params, self.params, self.flat_grads, self.grads = pack_layers(named)

    def _named_layers(self, parts: dict[str, Layer]) -> dict[str, Layer]:
        named: dict[str, Layer] = {}
        for prefix, part in parts.items():
            if isinstance(part, Sequential):
                named.update({f"{prefix}{i}": layer for i, layer in enumerate(part.dense_layers)})
            else:
                named[prefix] = part
        return named

    # -- input checks -------------------------------------------------------------------------

    def _check_x(self, x: Array) -> Array:
        """Check a batch of images and return it in the model's dtype. x: (N, D), values in [0, 1]."""
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ValueError(f"x must have shape (N, {self.input_dim}), got shape {x.shape}")
        if not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"x must be a floating-point array (pixels scaled to [0, 1]), got dtype {x.dtype}")
        if x.shape[0] == 0:
            raise ValueError("x is an empty batch (shape (0, D))")
        self._check_values(x, "x")
        return x.astype(self.dtype, copy=False)

    def _check_values(self, x: Array, name: str) -> None:
        """Raise ValueError unless every value of x is finite and in [0, 1]."""
        # min and max propagate NaN, so two passes over x also find any NaN or inf.
        lo, hi = x.min(), x.max()
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise ValueError(f"{name} contains NaN or inf")
        # The decoder's outputs lie in (0, 1), so targets outside [0, 1] are a mistake (most
        # often pixels not divided by 255), for either likelihood.
        if lo < 0 or hi > 1:
            raise ValueError(f"{name} must have values in [0, 1] (the {self.likelihood} likelihood's targets), "
                             f"got values in [{lo:g}, {hi:g}]")

    def check_data(self, images: Array, name: str = "images") -> None:
        """Check a whole data set once, before training on it: (N, D) with N >= 1, and either
        uint8 pixels (0..255, divided by 255 batch by batch) or values in [0, 1].

        `fit` calls it, and then skips the per-batch checks of `loss_and_grads` (check=False):
        two passes over the data set once instead of two passes over every batch.
        """
        if images.ndim != 2 or images.shape[1] != self.input_dim or images.shape[0] == 0:
            raise ValueError(f"{name} must have shape (N, {self.input_dim}) with N >= 1, got shape {images.shape}")
        if images.dtype != np.uint8:
            self._check_values(images, name)

    def _check_z(self, z: Array) -> Array:
        z = np.asarray(z)
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must have shape (N, {self.latent_dim}), got shape {z.shape}")
        if z.size and not np.isfinite(z).all():
            raise ValueError("z contains NaN or inf")
        return z.astype(self.dtype, copy=False)

    # -- decoding -----------------------------------------------------------------------------

    def decode_logits(self, z: Array) -> Array:
        """Decoder output before the sigmoid. z: (N, Z) -> (N, D)."""
        return self.decoder.forward(self._check_z(z))

    def decode(self, z: Array) -> Array:
        """Decoded images x_hat = sigmoid(decoder(z)), values in [0, 1] (in (0, 1) but for float
        rounding: float32 gives exactly 1 for logits above about 17). z: (N, Z) -> (N, D)."""
        return sigmoid(self.decode_logits(z))

    def codes(self, x: Array, batch_size: int = 1000) -> Array:
        """The point in latent space of each image, encoded `batch_size` at a time: the centre mu
        of its cloud for a VAE, its embedding z for an autoencoder. x: (N, D) -> (N, Z)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        x = self._check_x(x)
        return np.concatenate([self._code(x[s:s + batch_size]) for s in range(0, len(x), batch_size)])

    def _code(self, x: Array) -> Array:
        raise NotImplementedError

    def _recon(self, logits: Array, x: Array) -> tuple[float, Array]:
        """The reconstruction loss and its gradient, in arrays kept for the next training step."""
        return losses.RECONSTRUCTION[self.likelihood](logits, x, buffers=self.buffers)

    @property
    def num_params(self) -> int:
        return int(self.flat_params.size)

    def config(self) -> dict:
        """The constructor arguments, JSON-serialisable: enough to rebuild the architecture."""
        return {"model": self.kind, "input_dim": self.input_dim,
                "hidden_dims": list(self.hidden_dims), "latent_dim": self.latent_dim,
                "decoder_hidden_dims": list(self.decoder_hidden_dims), "likelihood": self.likelihood,
                "activation": self.activation, "dtype": str(self.dtype)}


class Autoencoder(_Model):
    """A plain autoencoder: x -> encoder -> z (the embedding) -> decoder -> x_hat.

    Trained with the seed's L2 loss (sum over pixels of (x - x_hat)^2, mean over the batch) by
    default; likelihood="bernoulli" uses the binary cross-entropy instead.
    """

    kind = "ae"

    def __init__(self, input_dim: int, hidden_dims: list[int], latent_dim: int, activation: str = "relu",
                 dtype=np.float32, rng: np.random.Generator | int | None = None, *,
                 likelihood: str = "l2", decoder_hidden_dims: list[int] | None = None) -> None:
        rng = self._setup(input_dim, hidden_dims, latent_dim, likelihood, activation, dtype, rng,
                          decoder_hidden_dims)
        # encoder: D -> H... -> Z, linear at the end; decoder: Z -> H... -> D logits.
        self.encoder = mlp([self.input_dim, *self.hidden_dims, self.latent_dim], activation, rng=rng, dtype=self.dtype)
        self.decoder = mlp([self.latent_dim, *self.decoder_hidden_dims, self.input_dim], activation,
                           rng=rng, dtype=self.dtype)
        self._build(self._named_layers({"enc": self.encoder, "dec": self.decoder}))

    def encode(self, x: Array) -> Array:
        """The embedding z of each image. x: (N, D) -> z: (N, Z)."""
        return self.encoder.forward(self._check_x(x))

    _code = encode

    def loss(self, x: Array) -> dict[str, float]:
        """Forward pass only: {"loss", "recon"}, per-image batch means."""
        x = self._check_x(x)
        recon, _ = self._recon(self.decoder.forward(self.encoder.forward(x)), x)
        return {"loss": recon, "recon": recon}

    def loss_and_grads(self, x: Array, eps: Array | None = None, *,
                       check: bool = True) -> tuple[dict[str, float], dict[str, Array]]:
        """Loss and gradients for one batch. x: (N, D). `eps` is accepted for a uniform interface
        with the VAE and ignored (an autoencoder draws nothing). check=False: see VAE.loss_and_grads.
        Returns (report, self.grads)."""
        if check:
            x = self._check_x(x)
        z = self.encoder.forward(x, reuse=True)          # (N, Z)
        logits = self.decoder.forward(z, reuse=True)     # (N, D)
        recon, dlogits = self._recon(logits, x)
        dz = self.decoder.backward(dlogits, reuse=True)  # (N, Z)
        self.encoder.backward(dz, need_dx=False, reuse=True)
        return {"loss": recon, "recon": recon}, self.grads


class VAE(_Model):
    """A variational autoencoder: the encoder outputs a Gaussian cloud N(mu, exp(logvar)) per image.

    x -> encoder -> h -> head -> [mu | logvar] -> z = mu + exp(0.5 * logvar) * eps -> decoder -> logits
    loss = reconstruction + beta * KL(N(mu, exp(logvar)) || N(0, I)), per image.

    The head is one Dense layer of width 2 * Z whose output is split into mu and logvar: a single
    matrix product instead of two.
    """

    kind = "vae"

    def __init__(self, input_dim: int, hidden_dims: list[int], latent_dim: int, likelihood: str = "l2",
                 beta: float = 1.0, activation: str = "relu", dtype=np.float32,
                 rng: np.random.Generator | int | None = None, *,
                 decoder_hidden_dims: list[int] | None = None) -> None:
        rng = self._setup(input_dim, hidden_dims, latent_dim, likelihood, activation, dtype, rng,
                          decoder_hidden_dims)
        if not (beta >= 0 and np.isfinite(beta)):
            raise ValueError(f"beta must be a finite number >= 0, got {beta}")
        self.beta = float(beta)
        # encoder: D -> H... with the activation after every layer (no hidden layers: the identity).
        self.encoder = (mlp([self.input_dim, *self.hidden_dims], activation, final_activation=activation,
                            rng=rng, dtype=self.dtype) if self.hidden_dims else Sequential([]))
        last_hidden = self.hidden_dims[-1] if self.hidden_dims else self.input_dim
        self.head = Dense(last_hidden, 2 * self.latent_dim, rng=rng, dtype=self.dtype)
        self.reparam = Reparameterize()
        self.decoder = mlp([self.latent_dim, *self.decoder_hidden_dims, self.input_dim], activation,
                           rng=rng, dtype=self.dtype)
        self._build(self._named_layers({"enc": self.encoder, "head": self.head, "dec": self.decoder}))

    def encode(self, x: Array) -> tuple[Array, Array]:
        """The Gaussian of each image. x: (N, D) -> (mu, logvar), each (N, Z)."""
        return self._encode(self._check_x(x))

    def _code(self, x: Array) -> Array:
        return self.encode(x)[0]

    def _encode(self, x: Array, reuse: bool = False) -> tuple[Array, Array]:
        out = self.head.forward(self.encoder.forward(x, reuse=reuse), reuse=reuse)   # (N, 2Z) = [mu | logvar]
        return out[:, :self.latent_dim], out[:, self.latent_dim:]

    def _eps(self, eps: Array | None, n: int) -> Array:
        if eps is None:
            return self.rng.standard_normal((n, self.latent_dim), dtype=self.dtype)
        eps = np.asarray(eps)
        if eps.shape != (n, self.latent_dim):
            raise ValueError(f"eps must have shape ({n}, {self.latent_dim}) (batch, latent), got shape {eps.shape}")
        if eps.size and not np.isfinite(eps).all():
            raise ValueError("eps contains NaN or inf")
        return eps.astype(self.dtype, copy=False)

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

    def _forward(self, x: Array, eps: Array, reuse: bool = False) -> tuple[Array, Array, Array]:
        mu, logvar = self._encode(x, reuse)
        z = self.reparam.forward(mu, logvar, eps)                 # (N, Z)
        logits = self.decoder.forward(z, reuse=reuse)             # (N, D)
        return mu, logvar, logits

    def loss(self, x: Array, eps: Array | None = None) -> dict[str, float]:
        """Forward pass only: {"loss", "recon", "kl"}, per-image batch means, for one draw of eps."""
        x = self._check_x(x)
        mu, logvar, logits = self._forward(x, self._eps(eps, x.shape[0]))
        recon = float(losses.RECONSTRUCTION_PER_EXAMPLE[self.likelihood](logits, x).mean())
        kl = float(losses.kl_per_example(mu, logvar).mean())
        return {"loss": recon + self.beta * kl, "recon": recon, "kl": kl}

    def loss_and_grads(self, x: Array, eps: Array | None = None, *,
                       check: bool = True) -> tuple[dict[str, float], dict[str, Array]]:
        """Loss and gradients for one batch.

        x: (N, D) in [0, 1]; eps: (N, Z) fixes the draw, else the model's generator draws it.
        check=False skips the checks of x (its shape, and values finite and in [0, 1]) for a
        caller that has checked its data already (`fit` does, once, with `check_data`); x must
        then be an (N, D) array of the model's dtype.
        Returns (report, grads): report has "loss", "recon", "kl" (per-image batch means);
        grads is self.grads, filled with the gradients of "loss".
        """
        if check:
            x = self._check_x(x)
        n, Z = x.shape[0], self.latent_dim
        mu, logvar, logits = self._forward(x, self._eps(eps, n), reuse=True)
        recon, dlogits = self._recon(logits, x)
        kl, dmu_kl, dlogvar_kl = losses.kl_standard_normal(mu, logvar)

        # Backward: loss = recon(decoder(z)) + beta * KL(mu, logvar), z = mu + sigma * eps.
        dz = self.decoder.backward(dlogits, reuse=True)           # (N, Z)
        dmu, dlogvar = self.reparam.backward(dz)                  # through the sampling step
        # dL/d[mu | logvar], written straight into the two halves of one (N, 2Z) array:
        # dmu + beta * dKL/dmu on the left, dlogvar + beta * dKL/dlogvar on the right.
        beta = self.dtype.type(self.beta)
        dhead = reusable(self.buffers, "dhead", (n, 2 * Z), self.dtype)       # (N, 2Z)
        dhead_mu, dhead_logvar = dhead[:, :Z], dhead[:, Z:]                  # views into dhead
        np.multiply(dmu_kl, beta, out=dhead_mu)
        dhead_mu += dmu
        np.multiply(dlogvar_kl, beta, out=dhead_logvar)
        dhead_logvar += dlogvar
        # With no hidden layers the head's input is x itself, whose gradient nobody needs.
        dh = self.head.backward(dhead, need_dx=bool(self.encoder.layers), reuse=True)
        if dh is not None:
            self.encoder.backward(dh, need_dx=False, reuse=True)
        return {"loss": recon + self.beta * kl, "recon": recon, "kl": kl}, self.grads

    def config(self) -> dict:
        return {**super().config(), "beta": self.beta}


def build_model(config: dict, rng: np.random.Generator | int | None = None) -> Autoencoder | VAE:
    """Rebuild a model from `model.config()` (e.g. one read from a checkpoint)."""
    common = dict(input_dim=config["input_dim"], hidden_dims=config["hidden_dims"],
                  latent_dim=config["latent_dim"], activation=config.get("activation", "relu"),
                  dtype=config.get("dtype", "float32"), rng=rng,
                  decoder_hidden_dims=config.get("decoder_hidden_dims"))
    kind = config.get("model", "vae")
    if kind == "vae":
        return VAE(likelihood=config.get("likelihood", "l2"), beta=config.get("beta", 1.0), **common)
    if kind == "ae":
        return Autoencoder(likelihood=config.get("likelihood", "l2"), **common)
    raise ValueError(f"unknown model kind {kind!r}; expected 'vae' or 'ae'")
