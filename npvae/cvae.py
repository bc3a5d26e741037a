"""Conditional VAEs: a VAE told which digit to draw, and one that completes the hidden part of a digit.

CVAE, conditioned on a label y (Kingma et al. 2014; Sohn, Lee and Yan 2015):

    q(z | x, y):  [x | onehot(y)] -> encoder -> head -> [mu | logvar]
    p(x | z, y):  [z | onehot(y)] -> decoder -> logits, x_hat = sigmoid(logits)
    loss = reconstruction + beta * KL(N(mu, exp(logvar)) || N(0, I)), per image

The prior of z is N(0, I) for every label, so the label says which digit and z how it is
written: decoding one z with each of the ten labels writes ten digits in one hand.

StructuredCVAE, for the quadrant task of Sohn, Lee and Yan (2015): given the visible part of a
digit (x), draw the hidden part (y) from p(y | x) = integral p(y | z) p(z | x) dz, with a prior
network p(z | x), a recognition network q(z | x, y) and a generation network p(y | z);
Baseline is the deterministic network it is compared with (and whose guess the prior network sees).

Shapes: N batch, D pixels, C classes, H hidden, Z latent.
"""

from __future__ import annotations

import numpy as np

from . import checks, losses
from .base import Parameters
from .layers import Dense, Sequential, as_generator, mlp, sigmoid
from .checks import size as _size, sizes as _sizes
from .models import VAE, Reparameterize, _Model

Array = np.ndarray


def one_hot(y: Array, num_classes: int, dtype=np.float32) -> Array:
    """Rows of the identity: onehot[n, c] = 1 if y[n] == c else 0. y: (N,) ints -> (N, C)."""
    return np.eye(num_classes, dtype=dtype)[y]


class LabelJoin:
    """Join one-hot labels to a batch: out = [x | onehot(y)]. x: (N, D), y: (N,) ints in [0, C) -> (N, D + C).

    The label is data, not something to learn: its part of the gradient is discarded.
    """

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes

    def forward(self, x: Array, y: Array) -> Array:
        self.d = x.shape[1]
        return np.concatenate([x, one_hot(y, self.num_classes, x.dtype)], axis=1)

    def backward(self, dout: Array) -> Array:
        # out[:, :D] = x and out[:, D:] = onehot(y), so dL/dx = dout[:, :D]     (N, D);
        # dout[:, D:] is dL/donehot(y), the gradient of a fixed input: dropped.
        return dout[:, :self.d]

    def __repr__(self) -> str:
        return f"LabelJoin({self.num_classes})"


class CVAE(_Model):
    """A VAE conditioned on a class label y: q(z | x, y) and p(x | z, y), each seeing onehot(y).

    x -> [x | onehot(y)] -> encoder -> h -> head -> [mu | logvar] -> z = mu + exp(0.5 * logvar) * eps
      -> [z | onehot(y)] -> decoder -> logits
    loss = reconstruction + beta * KL(N(mu, exp(logvar)) || N(0, I)), per image (an ELBO of log p(x | y)).

    Labels y: (N,) integers in [0, num_classes). hidden_dims: one int or a list (the encoder's
    hidden sizes; the decoder mirrors them). Parameters are named as the VAE's ("enc0.W",
    "head.W", "dec0.W", ...); the first encoder and decoder layers are C rows wider.
    """

    kind = "cvae"
    beta = VAE.beta             # the same checked KL weight as the VAE's
    draw_eps = VAE.draw_eps     # and the same draw of eps: (n, Z) from the model's generator, or given

    def __init__(self, input_dim: int, hidden_dims: int | list[int], latent_dim: int, num_classes: int = 10,
                 likelihood: str = "l2", beta: float = 1.0, activation: str = "relu", dtype=np.float32,
                 rng: np.random.Generator | int | None = None, *,
                 decoder_hidden_dims: list[int] | None = None) -> None:
        if likelihood not in losses.RECONSTRUCTION:
            raise ValueError(f"a CVAE's likelihood is one of {sorted(losses.RECONSTRUCTION)}, got {likelihood!r} "
                             f"(the Gaussian likelihood is the VAE's: npvae.models.VAE)")
        super().__init__(input_dim, hidden_dims, latent_dim, likelihood, activation, dtype, rng, decoder_hidden_dims)
        self.num_classes = _size(num_classes, "num_classes")
        self.beta = beta
        d_in, c = self.input_dim, self.num_classes
        self.enc_join, self.dec_join = LabelJoin(c), LabelJoin(c)
        self.encoder = (mlp([d_in + c, *self.hidden_dims], activation, final_activation=activation,
                            rng=self.rng, dtype=self.dtype) if self.hidden_dims else Sequential([]))
        last_hidden = self.hidden_dims[-1] if self.hidden_dims else d_in + c
        self.head = Dense(last_hidden, 2 * self.latent_dim, rng=self.rng, dtype=self.dtype)
        self.reparam = Reparameterize()
        self.decoder = mlp([self.latent_dim + c, *self.decoder_hidden_dims, d_in], activation,
                           rng=self.rng, dtype=self.dtype)
        self._name_layers({"enc": self.encoder, "head": self.head, "dec": self.decoder})

    # -- checks -------------------------------------------------------------------------------

    def check_y(self, y, n: int, name: str = "y") -> Array:
        """Check the labels of a batch of n rows and return them as int64. y: (n,) ints in [0, C)."""
        y = np.asarray(y)
        if y.dtype == bool or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{name} must be integer class labels in [0, {self.num_classes}), got dtype {y.dtype}")
        if y.shape != (n,):
            raise ValueError(f"{name} must have shape ({n},), one label per row, got shape {y.shape}")
        if n and (y.min() < 0 or y.max() >= self.num_classes):
            raise ValueError(f"{name} must lie in [0, {self.num_classes}) (num_classes={self.num_classes}), "
                             f"got values in [{y.min()}, {y.max()}]")
        return y.astype(np.int64, copy=False)

    # -- the two conditionals -----------------------------------------------------------------

    def encode(self, x: Array, y: Array) -> tuple[Array, Array]:
        """The Gaussian q(z | x, y) of each image. x: (N, D), y: (N,) -> (mu, logvar), each (N, Z)."""
        x = self.check_x(x)
        return self._encode(x, self.check_y(y, len(x)))

    def _encode(self, x: Array, y: Array) -> tuple[Array, Array]:
        out = self.head.forward(self.encoder.forward(self.enc_join.forward(x, y)))   # (N, 2Z) = [mu | logvar]
        return out[:, :self.latent_dim], out[:, self.latent_dim:]

    def decode_logits(self, z: Array, y: Array) -> Array:
        """Decoder output before the sigmoid. z: (N, Z), y: (N,) -> (N, D)."""
        z = self._check_z(z)
        return self.decoder.forward(self.dec_join.forward(z, self.check_y(y, len(z))))

    def decode(self, z: Array, y: Array) -> Array:
        """Images x_hat = sigmoid(decoder([z | onehot(y)])), values in [0, 1]. z: (N, Z), y: (N,) -> (N, D)."""
        return sigmoid(self.decode_logits(z, y))

    def codes(self, x: Array, y: Array, batch_size: int = 1000) -> Array:
        """The centre mu of q(z | x, y) of each image, `batch_size` at a time. x: (N, D), y: (N,) -> (N, Z)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        x = self.check_x(x)
        y = self.check_y(y, len(x))
        return np.concatenate([self._encode(x[s:s + batch_size], y[s:s + batch_size])[0]
                               for s in range(0, len(x), batch_size)])

    def reconstruct(self, x: Array, y: Array) -> Array:
        """Decode the centre mu of each image's cloud with its own label. (N, D)."""
        return self.decode(self.codes(x, y), y)

    def sample(self, n: int, y, rng: np.random.Generator | int | None = None, temperature: float = 1.0) -> Array:
        """Decode n draws z ~ N(0, temperature^2 I) with the labels y. Returns (n, D) images in [0, 1].

        y: one label for all n images (an int) or (n,) labels. rng: the generator of the draws;
        by default the model's own (the one training draws eps from).
        """
        checks.temperature(temperature)
        y = np.asarray(y)
        y = self.check_y(np.full(n, y) if y.ndim == 0 and np.issubdtype(y.dtype, np.integer) else y, n)
        rng = self.rng if rng is None else as_generator(rng)
        z = rng.standard_normal((n, self.latent_dim), dtype=self.dtype) * self.dtype.type(temperature)
        return self.decode(z, y)

    # -- the loss -----------------------------------------------------------------------------

    def loss(self, x: Array, y: Array, eps: Array | None = None) -> dict[str, float]:
        """Forward pass only: {"loss", "recon", "kl"}, per-image batch means, for one draw of eps."""
        x = self.check_x(x)
        y = self.check_y(y, len(x))
        mu, logvar = self._encode(x, y)
        z = self.reparam.forward(mu, logvar, self.draw_eps(len(x), eps))
        logits = self.decoder.forward(self.dec_join.forward(z, y))
        recon = float(losses.RECONSTRUCTION_PER_EXAMPLE[self.likelihood](logits, x).mean())
        kl = float(losses.kl_per_example(mu, logvar).mean())
        return {"loss": recon + self.beta * kl, "recon": recon, "kl": kl}

    def loss_and_grads(self, x: Array, y: Array, eps: Array | None = None) -> tuple[dict[str, float], dict[str, Array]]:
        """Loss and gradients for one batch.

        x: (N, D) in [0, 1]; y: (N,) labels; eps: (N, Z) fixes the draw, else the model's
        generator draws it. Returns (report, grads) as VAE.loss_and_grads does.
        """
        x = self.check_x(x)
        y = self.check_y(y, len(x))
        mu, logvar = self._encode(x, y)                                  # (N, Z) each
        z = self.reparam.forward(mu, logvar, self.draw_eps(len(x), eps))
        logits = self.decoder.forward(self.dec_join.forward(z, y))       # (N, Z + C) -> (N, D)
        recon, dlogits = losses.RECONSTRUCTION[self.likelihood](logits, x)
        kl, dkl_dmu, dkl_dlogvar = losses.kl_standard_normal(mu, logvar)

        # As the VAE's, with a join on each side: the decoder's input gradient (N, Z + C) loses
        # its label columns on the way back to z, and the encoder's (N, D + C) is dropped.
        dz = self.dec_join.backward(self.decoder.backward(dlogits))      # (N, Z)
        dmu, dlogvar = self.reparam.backward(dz)
        dhead = np.concatenate([dmu + self.beta * dkl_dmu, dlogvar + self.beta * dkl_dlogvar], axis=1)
        self.enc_join.backward(self.encoder.backward(self.head.backward(dhead)))
        return {"loss": recon + self.beta * kl, "recon": recon, "kl": kl}, self.grads

    def config(self) -> dict:
        return {**super().config(), "beta": self.beta, "num_classes": self.num_classes}

    @classmethod
    def from_config(cls, config: dict, rng: np.random.Generator | int | None = None) -> "CVAE":
        """Rebuild a CVAE from `model.config()` (e.g. one read from a checkpoint)."""
        return cls(config["input_dim"], config["hidden_dims"], config["latent_dim"],
                   num_classes=config.get("num_classes", 10), likelihood=config.get("likelihood", "l2"),
                   beta=config.get("beta", 1.0), activation=config.get("activation", "relu"),
                   dtype=config.get("dtype", "float32"), rng=rng,
                   decoder_hidden_dims=config.get("decoder_hidden_dims"))


# --------------------------------------------------------------------------------------------
# The quadrant task of Sohn, Lee and Yan (2015): predict the hidden quadrants of a digit
# --------------------------------------------------------------------------------------------

# The visible quadrants for 1, 2 and 3 visible (rows top/bottom, columns left/right of a 28 x 28 image).
VISIBLE_QUADRANTS = {1: ["bottom-left"], 2: ["top-left", "bottom-left"], 3: ["top-left", "top-right", "bottom-left"]}


def quadrant_mask(n_visible: int, side: int = 28) -> Array:
    """The visible pixels for 1 (the bottom-left quadrant), 2 (the left half) or 3 (all but the
    bottom-right quadrant) visible quadrants: a boolean (side * side,) mask, True where visible."""
    if n_visible not in VISIBLE_QUADRANTS:
        raise ValueError(f"n_visible must be 1, 2 or 3, got {n_visible!r}")
    half = side // 2
    mask = np.zeros((side, side), dtype=bool)
    for quadrant in VISIBLE_QUADRANTS[n_visible]:
        rows = slice(0, half) if quadrant.startswith("top") else slice(half, side)
        cols = slice(0, half) if quadrant.endswith("left") else slice(half, side)
        mask[rows, cols] = True
    return mask.reshape(-1)


def masked_input(x: Array, visible: Array) -> Array:
    """The network's input: the visible pixels, the hidden ones set to -1. x: (N, D) -> (N, D)."""
    return np.where(visible, x, x.dtype.type(-1))


def hidden_bernoulli(logits: Array, x: Array, visible: Array) -> tuple[float, Array]:
    """Bernoulli cross-entropy over the hidden pixels only, mean over the batch of its sum.

    logits, x: (N, D), visible: (D,) bool. Returns (L, dL/dlogits (N, D), zero on visible pixels).
    """
    # L depends on the hidden columns only: their gradient is bernoulli_reconstruction's, the rest 0.
    hidden = ~visible
    loss, dhidden = losses.bernoulli_reconstruction(logits[:, hidden], x[:, hidden])
    dlogits = np.zeros_like(logits)
    dlogits[:, hidden] = dhidden
    return loss, dlogits


def hidden_bernoulli_per_example(logits: Array, x: Array, visible: Array) -> Array:
    """The cross-entropy of the hidden pixels of each image. logits: (..., D), x: (..., D) -> (...)."""
    return losses.bernoulli_per_example(logits[..., ~visible], x[..., ~visible])


class _Networks(Parameters):
    """Several layer stacks with named parameters ("rec0.W", "prior_head.b", ...) and gradients
    (npvae.base.Parameters, as the models name theirs)."""

    def _setup(self, visible: Array, input_dim: int, dtype, rng) -> None:
        self.input_dim = _size(input_dim, "input_dim")
        self.visible = np.asarray(visible, dtype=bool)
        if self.visible.shape != (self.input_dim,):
            raise ValueError(f"visible must be a boolean mask of shape ({self.input_dim},), got {self.visible.shape}")
        self.dtype = np.dtype(dtype)
        self.rng = as_generator(rng)

    def check_x(self, x: Array, name: str = "x") -> Array:
        """Whole images (N, D) in [0, 1], as the model's dtype: the visible part and the truth."""
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.input_dim or not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"{name} must be floats of shape (N, {self.input_dim}), got {x.dtype} {x.shape}")
        return x.astype(self.dtype, copy=False)


class Baseline(_Networks):
    """A deterministic network that predicts the hidden pixels from the visible ones.

    input: the image with its hidden pixels set to -1 -> mlp D-H...-D (ReLU) -> logits; the
    prediction is sigmoid(logits), the loss the cross-entropy of the hidden pixels (hidden_bernoulli).
    """

    def __init__(self, visible: Array, input_dim: int = 784, hidden_dims: list[int] = (500, 500),
                 dtype=np.float32, rng: np.random.Generator | int | None = None) -> None:
        self._setup(visible, input_dim, dtype, rng)
        self.hidden_dims = _sizes(list(hidden_dims), "hidden_dims")
        self.net = mlp([self.input_dim, *self.hidden_dims, self.input_dim], "relu", rng=self.rng, dtype=self.dtype)
        self._name_layers({"net": self.net})

    def predict(self, x: Array) -> Array:
        """The predicted image sigmoid(net(masked_input(x))): only its hidden pixels are a guess. (N, D)."""
        x = self.check_x(x)
        return sigmoid(self.net.forward(masked_input(x, self.visible)))

    def loss_per_example(self, x: Array) -> Array:
        """The cross-entropy of the hidden pixels of each image. x: (N, D) -> (N,)."""
        x = self.check_x(x)
        return hidden_bernoulli_per_example(self.net.forward(masked_input(x, self.visible)), x, self.visible)

    def loss(self, x: Array) -> dict[str, float]:
        """Forward pass only: {"loss"}, the per-image batch mean of loss_per_example."""
        return {"loss": float(self.loss_per_example(x).mean())}

    def loss_and_grads(self, x: Array) -> tuple[dict[str, float], dict[str, Array]]:
        """Loss ({"loss"}: per-image batch mean) and gradients for whole images x: (N, D)."""
        x = self.check_x(x)
        loss, dlogits = hidden_bernoulli(self.net.forward(masked_input(x, self.visible)), x, self.visible)
        self.net.backward(dlogits)
        return {"loss": loss}, self.grads


class GaussianNetwork:
    """An MLP with two heads: x -> mlp D-H... (ReLU after every layer) -> head -> [mu | logvar]. x: (N, D) -> 2 x (N, Z)."""

    def __init__(self, sizes: list[int], latent_dim: int, rng: np.random.Generator, dtype) -> None:
        self.body = mlp(sizes, "relu", final_activation="relu", rng=rng, dtype=dtype)
        self.head = Dense(sizes[-1], 2 * latent_dim, rng=rng, dtype=dtype)
        self.latent_dim = latent_dim

    def forward(self, x: Array) -> tuple[Array, Array]:
        out = self.head.forward(self.body.forward(x))
        return out[:, :self.latent_dim], out[:, self.latent_dim:]

    def backward(self, dmu: Array, dlogvar: Array) -> Array:
        # out = [mu | logvar], so dL/dout = [dmu | dlogvar], then back through the head and the body.
        return self.body.backward(self.head.backward(np.concatenate([dmu, dlogvar], axis=1)))


class StructuredCVAE(_Networks):
    """The CVAE of the quadrant task: x = the visible part of a digit, y = its hidden part.

    recognition q(z | x, y): the whole image (visible pixels, the true hidden ones filled in) -> [mu_q | logvar_q]
    prior       p(z | x):    the visible pixels, the baseline's guess filled in -> [mu_p | logvar_p]
    generation  p(y | z):    z -> mlp Z-H...-D -> logits; only the hidden pixels count
    loss = E_q[cross-entropy of the hidden pixels] + KL(q(z | x, y) || p(z | x)), per image (-ELBO of log p(y | x)).

    `baseline` (a trained Baseline for the same mask) is fixed: its parameters are not this model's.
    """

    def __init__(self, baseline: Baseline, hidden_dims: list[int] = (500, 500), latent_dim: int = 200,
                 rng: np.random.Generator | int | None = None) -> None:
        self._setup(baseline.visible, baseline.input_dim, baseline.dtype, rng)
        self.baseline = baseline
        self.hidden_dims = _sizes(list(hidden_dims), "hidden_dims")
        self.latent_dim = _size(latent_dim, "latent_dim")
        d, h, z = self.input_dim, self.hidden_dims, self.latent_dim
        self.recognition = GaussianNetwork([d, *h], z, self.rng, self.dtype)
        self.prior = GaussianNetwork([d, *h], z, self.rng, self.dtype)
        self.generation = mlp([z, *h[::-1], d], "relu", rng=self.rng, dtype=self.dtype)
        self.reparam = Reparameterize()
        self._name_layers({"rec": self.recognition.body, "rec_head": self.recognition.head,
                           "prior": self.prior.body, "prior_head": self.prior.head, "gen": self.generation})

    def prior_input(self, x: Array) -> Array:
        """The visible pixels of x with the baseline's guess in the hidden ones. (N, D)."""
        return np.where(self.visible, x, self.baseline.predict(x))

    def prior_gaussian(self, x: Array) -> tuple[Array, Array]:
        """p(z | x) of each image: (mu_p, logvar_p), each (N, Z)."""
        return self.prior.forward(self.prior_input(self.check_x(x)))

    def sample_prior(self, x: Array, eps: Array | None = None, rng: np.random.Generator | int | None = None) -> Array:
        """z ~ p(z | x): z = mu_p + exp(0.5 * logvar_p) * eps, eps (N, Z) given or drawn from rng. (N, Z)."""
        mu, logvar = self.prior_gaussian(x)
        if eps is None:
            eps = as_generator(rng if rng is not None else self.rng).standard_normal(mu.shape, dtype=self.dtype)
        return mu + np.exp(0.5 * logvar) * eps

    def complete(self, x: Array, rng: np.random.Generator | int | None = None) -> Array:
        """One draw of y ~ p(y | x) per image, shown as its mean: the visible pixels of x, the hidden
        ones sigmoid(generation(z)) with z ~ p(z | x). (N, D)."""
        x = self.check_x(x)
        return np.where(self.visible, x, sigmoid(self.generation.forward(self.sample_prior(x, rng=rng))))

    def _draw_eps(self, n: int, eps: Array | None) -> Array:
        if eps is None:
            return self.rng.standard_normal((n, self.latent_dim), dtype=self.dtype)
        if np.shape(eps) != (n, self.latent_dim):
            raise ValueError(f"eps must have shape ({n}, {self.latent_dim}), got shape {np.shape(eps)}")
        return np.asarray(eps, dtype=self.dtype)

    def loss(self, x: Array, eps: Array | None = None) -> dict[str, float]:
        """Forward pass only: {"loss", "recon", "kl"}, per-image batch means, for one draw of eps."""
        x = self.check_x(x)
        mu_q, logvar_q = self.recognition.forward(x)
        mu_p, logvar_p = self.prior.forward(self.prior_input(x))
        z = self.reparam.forward(mu_q, logvar_q, self._draw_eps(len(x), eps))
        recon, _ = hidden_bernoulli(self.generation.forward(z), x, self.visible)
        kl = losses.kl_gaussians(mu_q, logvar_q, mu_p, logvar_p)[0]
        return {"loss": recon + kl, "recon": recon, "kl": kl}

    def loss_and_grads(self, x: Array, eps: Array | None = None) -> tuple[dict[str, float], dict[str, Array]]:
        """Loss and gradients for whole images x: (N, D) (the truth of the hidden pixels included)."""
        x = self.check_x(x)
        mu_q, logvar_q = self.recognition.forward(x)                    # q(z | x, y)
        mu_p, logvar_p = self.prior.forward(self.prior_input(x))        # p(z | x)
        z = self.reparam.forward(mu_q, logvar_q, self._draw_eps(len(x), eps))
        recon, dlogits = hidden_bernoulli(self.generation.forward(z), x, self.visible)
        kl, dmu_q, dlogvar_q, dmu_p, dlogvar_p = losses.kl_gaussians(mu_q, logvar_q, mu_p, logvar_p)

        # The recognition network gets a gradient through z and one from the KL term; the prior
        # network only from the KL term (it pulls p(z | x) towards q(z | x, y)).
        dmu, dlogvar = self.reparam.backward(self.generation.backward(dlogits))
        self.recognition.backward(dmu + dmu_q, dlogvar + dlogvar_q)
        self.prior.backward(dmu_p, dlogvar_p)
        return {"loss": recon + kl, "recon": recon, "kl": kl}, self.grads

    # -- evaluation ---------------------------------------------------------------------------

    def neg_elbo(self, x: Array, n_draws: int = 10, rng: np.random.Generator | int | None = None,
                 batch_size: int = 500) -> float:
        """Mean over the images of -ELBO of log p(y | x): the hidden pixels' cross-entropy averaged over
        n_draws draws z ~ q(z | x, y), plus the exact KL(q || p). x: (N, D) -> a float, nats per image."""
        x = self.check_x(x)
        rng = as_generator(rng)
        total = 0.0
        for s in range(0, len(x), batch_size):
            xb = x[s:s + batch_size]
            mu_q, logvar_q = self.recognition.forward(xb)
            mu_p, logvar_p = self.prior.forward(self.prior_input(xb))
            recon = 0.0
            for _ in range(n_draws):
                z = mu_q + np.exp(0.5 * logvar_q) * rng.standard_normal(mu_q.shape, dtype=self.dtype)
                recon += hidden_bernoulli_per_example(self.generation.forward(z), xb, self.visible).astype(np.float64).sum()
            kl = losses.kl_gaussians(mu_q.astype(np.float64), logvar_q.astype(np.float64),
                                     mu_p.astype(np.float64), logvar_p.astype(np.float64))[0]
            total += recon / n_draws + kl * len(xb)
        return total / len(x)

    def log_likelihood_iw(self, x: Array, k: int = 100, rng: np.random.Generator | int | None = None,
                          batch_size: int = 50) -> Array:
        """The importance-sampled estimate of log p(y | x) for each image (float64, (N,)):

            log p(y | x) ~= log (1/K) sum_k p(y | z_k) p(z_k | x) / q(z_k | x, y),   z_k ~ q(z | x, y).
        """
        from .evaluate import logmeanexp
        x = self.check_x(x)
        rng = as_generator(rng)
        out = np.empty(len(x))
        for s in range(0, len(x), batch_size):
            xb = x[s:s + batch_size]
            b = len(xb)
            mu_q, logvar_q = (a.astype(np.float64) for a in self.recognition.forward(xb))
            mu_p, logvar_p = (a.astype(np.float64) for a in self.prior.forward(self.prior_input(xb)))
            eps = rng.standard_normal((b, k, self.latent_dim))
            z = mu_q[:, None] + np.exp(0.5 * logvar_q)[:, None] * eps                      # (B, K, Z)
            logits = self.generation.forward(z.reshape(b * k, -1).astype(self.dtype)).reshape(b, k, -1)
            log_p_y = -hidden_bernoulli_per_example(logits, xb[:, None, :], self.visible).astype(np.float64)
            # log N(z; mu_p, var_p) - log N(z; mu_q, var_q); the 2 pi terms cancel and (z - mu_q)^2 / var_q = eps^2.
            log_ratio = 0.5 * (np.sum(eps ** 2 + logvar_q[:, None], axis=2)
                               - np.sum((z - mu_p[:, None]) ** 2 * np.exp(-logvar_p)[:, None] + logvar_p[:, None], axis=2))
            out[s:s + b] = logmeanexp(log_p_y + log_ratio, axis=1)
        return out
