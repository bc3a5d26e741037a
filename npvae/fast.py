"""The fast twin of the textbook path: the same training step, written for the machine.

The textbook files (layers, losses, models, optim) are the specification. This module computes
the same step with the same NumPy operations in the same order, so its outputs and gradients
are the textbook's bit for bit (tests/test_fast.py proves it), but:

- every intermediate array is kept and reused from step to step (`out=`): a training step
  allocates almost nothing, so the C library never hands the memory back to the operating
  system only to fault it in again, page by page, at the next step;
- all parameters live in one flat buffer, and so do all gradients, so that the optimizer
  updates every parameter with a few whole-buffer operations (a "fused" update);
- work whose result is thrown away is skipped (the gradient of the input images);
- Adam runs the textbook's operations one whole-buffer pass each (the same bits), flushes values
  that would decay into subnormal numbers (slow on many CPUs) to zero, and splits its update
  over a small pool of threads (`Pool`, $NPVAE_THREADS; the same bits on any number).

A layer, loss or model without a twin here still trains: `twin(model)` returns None for a model
it does not know, and `fit` then runs the textbook path by itself. A new layer type inside a
known model runs its textbook forward and backward (`_Plain`).

Shapes: N batch, D input, H hidden, Z latent, P the number of parameters.
"""

from __future__ import annotations

import math
import os
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import layers, losses, optim
from .models import VAE, Autoencoder

Array = np.ndarray


# --------------------------------------------------------------------------------------------
# Arrays kept from step to step
# --------------------------------------------------------------------------------------------


def reusable(store: dict[str, Array], name: str, shape: tuple[int, ...], dtype) -> Array:
    """store[name] if it has this shape and dtype, else a new (uninitialised) array kept as store[name].

    (The last, smaller batch of an epoch replaces it, and the next epoch's first batch back.)
    """
    a = store.get(name)
    if a is None or a.shape != shape or a.dtype != dtype:
        a = store[name] = np.empty(shape, dtype=dtype)
    return a


def zeros(store: dict[str, Array], name: str, shape: tuple[int, ...], dtype) -> Array:
    """A read-only array of zeros of this shape and dtype, kept as store[name].

    For max(x, 0): NumPy 2.4 compares an array with a scalar 0 on a slow path, 3 to 4 times
    slower than with an array of zeros of x's shape (26 against 8 microseconds for a (128, 400)
    float32 x on the reference machine). The result is the same, bit for bit.
    """
    a = store.get(name)
    if a is None or a.shape != shape or a.dtype != dtype:
        a = store[name] = np.zeros(shape, dtype=dtype)
        a.flags.writeable = False
    return a


# --------------------------------------------------------------------------------------------
# The flat parameter buffer
# --------------------------------------------------------------------------------------------


def pack(arrays: dict[str, Array]) -> tuple[Array, dict[str, Array]]:
    """Copy a dict of arrays into one flat 1-D buffer and return (buffer, views).

    Each view has the shape of its original array and shares memory with the buffer.
    """
    if not arrays:
        raise ValueError("nothing to pack")
    dtypes = {a.dtype for a in arrays.values()}
    if len(dtypes) != 1:
        raise ValueError(f"all arrays must share one dtype to be packed, got {sorted(map(str, dtypes))}")
    flat = np.empty(sum(a.size for a in arrays.values()), dtype=dtypes.pop())
    views, offset = {}, 0
    for name, a in arrays.items():
        views[name] = flat[offset:offset + a.size].reshape(a.shape)
        views[name][...] = a
        offset += a.size
    return flat, views


def flat_buffer(arrays: dict[str, Array]) -> Array:
    """The 1-D buffer that the arrays of a packed dict (see `pack`) are views of, in order.

    Raises ValueError if they are not: the fused optimizers rely on it.
    """
    base = next(iter(arrays.values())).base if arrays else None
    if base is None or base.ndim != 1 or not base.flags.c_contiguous:
        raise ValueError("the arrays are not views of one flat buffer; build them with npvae.fast.pack")
    address = base.__array_interface__["data"][0]
    for a in arrays.values():
        if a.base is not base or a.__array_interface__["data"][0] != address:
            raise ValueError("the arrays are not views of one flat buffer, in order; build them with npvae.fast.pack")
        address += a.nbytes
    if address != base.__array_interface__["data"][0] + base.nbytes:
        raise ValueError("the arrays do not cover their flat buffer; build them with npvae.fast.pack")
    return base


def pack_layers(named: dict[str, layers.Layer], params: dict[str, Array] | None = None) -> Array:
    """Move the parameters of named layers into one flat buffer, in place, and return it.

    Each layer's `params` (and `params`, the model's dict of "<layer name>.<key>" arrays, if
    given) then hold views of the buffer with the same values: the textbook path reads them as
    before. Packing twice returns the buffer of the first time.
    """
    names = {f"{n}.{k}": (layer, k) for n, layer in named.items() for k in layer.params}
    current = {name: layer.params[k] for name, (layer, k) in names.items()}
    try:
        return flat_buffer(current)
    except ValueError:
        pass
    flat, views = pack(current)
    for name, (layer, k) in names.items():
        layer.params[k] = views[name]
        if params is not None:
            params[name] = views[name]
    return flat


# --------------------------------------------------------------------------------------------
# Layer twins: forward(x) and backward(dout, need_dx) into arrays of their own
# --------------------------------------------------------------------------------------------


class _Twin:
    """A layer's twin. Its results live in `self.buffers` and are overwritten by the next call."""

    def __init__(self, layer: layers.Layer) -> None:
        self.layer = layer
        self.buffers: dict[str, Array] = {}
        self.grads: dict[str, Array] = {}      # views of the model twin's flat gradient buffer

    def out(self, name: str, shape: tuple[int, ...], dtype) -> Array:
        return reusable(self.buffers, name, shape, dtype)


class _Dense(_Twin):
    def forward(self, x: Array) -> Array:
        self.x = x
        W = self.layer.params["W"]
        y = np.matmul(x, W, out=self.out("y", (x.shape[0], W.shape[1]), np.result_type(x, W)))
        y += self.layer.params["b"]
        return y

    def backward(self, dout: Array, need_dx: bool = True) -> Array | None:
        np.matmul(self.x.T, dout, out=self.grads["W"])
        np.add.reduce(dout, axis=0, out=self.grads["b"])     # dout.sum(0) (np.sum adds a few microseconds)
        if not need_dx:
            return None
        W = self.layer.params["W"]
        return np.matmul(dout, W.T, out=self.out("dx", (dout.shape[0], W.shape[0]), np.result_type(dout, W)))


class _ReLU(_Twin):
    def forward(self, x: Array) -> Array:
        self.mask = np.greater(x, 0, out=self.out("mask", x.shape, np.bool_))
        return np.maximum(x, zeros(self.buffers, "zeros", x.shape, x.dtype), out=self.out("y", x.shape, x.dtype))

    def backward(self, dout: Array, need_dx: bool = True) -> Array:
        return np.multiply(dout, self.mask, out=self.out("dx", dout.shape, dout.dtype))


class _LeakyReLU(_Twin):
    def forward(self, x: Array) -> Array:
        slope = self.slope = self.out("slope", x.shape, x.dtype)
        np.copyto(slope, x.dtype.type(self.layer.alpha))                 # alpha where x <= 0 ...
        np.copyto(slope, 1, where=np.greater(x, 0, out=self.out("positive", x.shape, np.bool_)))  # ... else 1
        return np.multiply(x, slope, out=self.out("y", x.shape, x.dtype))

    def backward(self, dout: Array, need_dx: bool = True) -> Array:
        return np.multiply(dout, self.slope, out=self.out("dx", dout.shape, np.result_type(dout, self.slope)))


class _Softplus(_Twin):
    def forward(self, x: Array) -> Array:
        self.x = x
        y = np.abs(x, out=self.out("y", x.shape, x.dtype))
        np.negative(y, out=y)
        np.exp(y, out=y)
        np.log1p(y, out=y)                                   # log(1 + exp(-|x|))
        y += np.maximum(x, zeros(self.buffers, "zeros", x.shape, x.dtype), out=self.out("relu", x.shape, x.dtype))
        return y

    def backward(self, dout: Array, need_dx: bool = True) -> Array:
        dx = _sigmoid(self.x, self.out("dx", dout.shape, np.result_type(dout, self.x)))
        dx *= dout
        return dx


class _Tanh(_Twin):
    def forward(self, x: Array) -> Array:
        self.y = np.tanh(x, out=self.out("y", x.shape, x.dtype))
        return self.y

    def backward(self, dout: Array, need_dx: bool = True) -> Array:
        dx = np.multiply(self.y, self.y, out=self.out("dx", dout.shape, np.result_type(dout, self.y)))
        np.subtract(1, dx, out=dx)                           # 1 - y^2
        dx *= dout
        return dx


def _sigmoid(x: Array, out: Array) -> Array:
    """layers.sigmoid(x) written into `out`, one in-place step at a time."""
    with np.errstate(over="ignore"):
        np.negative(x, out=out)
        np.exp(out, out=out)
    out += 1
    return np.divide(1, out, out=out)


class _Sigmoid(_Twin):
    def forward(self, x: Array) -> Array:
        self.y = _sigmoid(x, self.out("y", x.shape, x.dtype))
        return self.y

    def backward(self, dout: Array, need_dx: bool = True) -> Array:
        dx = np.subtract(1, self.y, out=self.out("dx", dout.shape, np.result_type(dout, self.y)))
        dx *= self.y                                         # y (1 - y)
        dx *= dout
        return dx


class _Plain(_Twin):
    """A layer without a twin: its textbook forward and backward, gradients copied into the buffer."""

    def forward(self, x: Array) -> Array:
        return self.layer.forward(x)

    def backward(self, dout: Array, need_dx: bool = True) -> Array:
        dx = self.layer.backward(dout)
        for k, g in self.grads.items():
            g[...] = self.layer.grads[k]
        return dx


TWINS: dict[type, type[_Twin]] = {layers.Dense: _Dense, layers.ReLU: _ReLU, layers.LeakyReLU: _LeakyReLU,
                                  layers.Tanh: _Tanh, layers.Sigmoid: _Sigmoid, layers.Softplus: _Softplus}


def _layer_twin(layer: layers.Layer) -> _Twin:
    return TWINS.get(type(layer), _Plain)(layer)


class _Stack:
    """The twin of a Sequential: its layers' twins in order."""

    def __init__(self, seq: layers.Sequential) -> None:
        self.layers = [_layer_twin(layer) for layer in seq.layers]

    def forward(self, x: Array) -> Array:
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, dout: Array, need_dx: bool = True) -> Array | None:
        for i, layer in enumerate(reversed(self.layers)):
            first = i == len(self.layers) - 1
            dout = layer.backward(dout, need_dx=need_dx or not first)
        return dout


# --------------------------------------------------------------------------------------------
# Loss twins: the reconstruction losses in two arrays kept in `buffers`
# --------------------------------------------------------------------------------------------


def l2_reconstruction(logits: Array, x: Array, buffers: dict[str, Array]) -> tuple[float, Array]:
    """losses.l2_reconstruction; the returned gradient is overwritten by the next call."""
    n, dtype = x.shape[0], np.result_type(logits, x)
    x_hat = _sigmoid(logits, reusable(buffers, "x_hat", logits.shape, dtype))
    diff = np.subtract(x_hat, x, out=reusable(buffers, "dlogits", logits.shape, dtype))
    loss = np.multiply(diff, diff, out=reusable(buffers, "squares", logits.shape, dtype)).sum() / n
    dlogits = diff                                           # built in place from here on
    dlogits *= x_hat
    dlogits *= np.subtract(1, x_hat, out=x_hat)              # x_hat (1 - x_hat)
    dlogits *= 2 / n
    return float(loss), dlogits


def bernoulli_reconstruction(logits: Array, x: Array, buffers: dict[str, Array]) -> tuple[float, Array]:
    """losses.bernoulli_reconstruction; the returned gradient is overwritten by the next call."""
    n, dtype = x.shape[0], np.result_type(logits, x)
    bce = np.abs(logits, out=reusable(buffers, "bce", logits.shape, dtype))
    work = reusable(buffers, "dlogits", logits.shape, dtype)     # scratch until the gradient goes in
    np.negative(bce, out=bce)
    np.exp(bce, out=bce)
    np.log1p(bce, out=bce)                                   # log(1 + exp(-|l|))
    bce += np.maximum(logits, zeros(buffers, "zeros", logits.shape, logits.dtype), out=work)
    bce -= np.multiply(x, logits, out=work)
    loss = bce.sum() / n
    dlogits = _sigmoid(logits, work)
    dlogits -= x
    dlogits *= 1 / n
    return float(loss), dlogits


RECONSTRUCTION = {"l2": l2_reconstruction, "bernoulli": bernoulli_reconstruction}


# --------------------------------------------------------------------------------------------
# Model twins
# --------------------------------------------------------------------------------------------


def _flat_grads(named: dict[str, layers.Layer], params: dict[str, Array],
                twins: list[_Twin]) -> tuple[Array, dict[str, Array]]:
    """One flat gradient buffer laid out like `params`; each layer twin writes into its part."""
    flat_grads, grads = pack({k: np.zeros_like(p) for k, p in params.items()})
    by_layer = {id(t.layer): t for t in twins}
    for name, layer in named.items():
        by_layer[id(layer)].grads = {k: grads[f"{name}.{k}"] for k in layer.params}
    return flat_grads, grads


class SequentialTwin(_Stack):
    """The twin of a whole Sequential network, with its own flat parameter and gradient buffers.

    params and grads are named "<index of the Dense layer>.<W or b>" ("0.W", "0.b", "1.W", ...).
    """

    def __init__(self, seq: layers.Sequential) -> None:
        super().__init__(seq)
        named = {str(i): layer for i, layer in enumerate(seq.dense_layers)}
        self.params = {f"{n}.{k}": p for n, layer in named.items() for k, p in layer.params.items()}
        self.flat_params = pack_layers(named, self.params)
        self.flat_grads, self.grads = _flat_grads(named, self.params, self.layers)


class _ModelTwin:
    """What both model twins share: the packed parameters and the flat gradient buffer."""

    def __init__(self, model, parts: dict[str, layers.Layer]) -> None:
        # A weak reference: `twin` remembers each model's twin in a WeakKeyDictionary, whose
        # entries would never go (nor their buffers) if the twin held on to its model.
        self._model = weakref.ref(model)
        self.flat_params = pack_layers(model.layers, model.params)
        self.params = model.params
        self.stacks = {name: _Stack(part) if isinstance(part, layers.Sequential) else _layer_twin(part)
                       for name, part in parts.items()}
        twins = [t for stack in self.stacks.values() for t in (stack.layers if isinstance(stack, _Stack) else [stack])]
        self.flat_grads, self.grads = _flat_grads(model.layers, model.params, twins)
        self.buffers: dict[str, Array] = {}

    @property
    def model(self):
        return self._model()

    def _recon(self, logits: Array, x: Array) -> tuple[float, Array]:
        return RECONSTRUCTION[self.model.likelihood](logits, x, self.buffers)


class FastAutoencoder(_ModelTwin):
    """Autoencoder.loss_and_grads on the twin."""

    def __init__(self, model: Autoencoder) -> None:
        super().__init__(model, {"enc": model.encoder, "dec": model.decoder})

    def loss_and_grads(self, x: Array) -> tuple[dict[str, float], dict[str, Array]]:
        """x: (N, D) of the model's dtype, already checked (fit checks the whole data set once).
        Returns (report, grads); grads are views of `flat_grads`, overwritten by the next call."""
        enc, dec = self.stacks["enc"], self.stacks["dec"]
        z = enc.forward(x)                                   # (N, Z)
        recon, dlogits = self._recon(dec.forward(z), x)      # (N, D)
        enc.backward(dec.backward(dlogits), need_dx=False)
        return {"loss": recon, "recon": recon}, self.grads


class FastVAE(_ModelTwin):
    """VAE.loss_and_grads on the twin."""

    def __init__(self, model: VAE) -> None:
        super().__init__(model, {"enc": model.encoder, "head": model.head, "dec": model.decoder})

    def loss_and_grads(self, x: Array, eps: Array | None = None) -> tuple[dict[str, float], dict[str, Array]]:
        """x: (N, D) of the model's dtype, already checked (fit checks the whole data set once).
        Returns (report, grads); grads are views of `flat_grads`, overwritten by the next call."""
        model, Z = self.model, self.model.latent_dim
        enc, head, dec = self.stacks["enc"], self.stacks["head"], self.stacks["dec"]
        n = x.shape[0]
        out = head.forward(enc.forward(x))                   # (N, 2Z) = [mu | logvar]
        mu, logvar = out[:, :Z], out[:, Z:]
        z = model.reparam.forward(mu, logvar, model.draw_eps(n, eps))
        recon, dlogits = self._recon(dec.forward(z), x)
        kl, dkl_dmu, dkl_dlogvar = losses.kl_standard_normal(mu, logvar)

        dmu, dlogvar = model.reparam.backward(dec.backward(dlogits))
        # dmu + beta * dKL/dmu and dlogvar + beta * dKL/dlogvar, written into the halves of one array
        beta = model.dtype.type(model.beta)
        dhead = reusable(self.buffers, "dhead", (n, 2 * Z), model.dtype)
        np.multiply(dkl_dmu, beta, out=dhead[:, :Z])
        dhead[:, :Z] += dmu
        np.multiply(dkl_dlogvar, beta, out=dhead[:, Z:])
        dhead[:, Z:] += dlogvar
        # With no hidden layers the head's input is x itself, whose gradient nobody needs.
        dh = head.backward(dhead, need_dx=bool(enc.layers))
        if dh is not None:
            enc.backward(dh, need_dx=False)
        return {"loss": recon + model.beta * kl, "recon": recon, "kl": kl}, self.grads


MODEL_TWINS: dict[type, type[_ModelTwin]] = {VAE: FastVAE, Autoencoder: FastAutoencoder}
_model_twins: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def twin(model) -> _ModelTwin | None:
    """The fast twin of a model (made once, then remembered), or None for a model without one.

    Making it packs the model's parameters into one flat buffer, in place (see `pack_layers`):
    hold on to `model.params`, not to its arrays from before.
    """
    cls = MODEL_TWINS.get(type(model))
    if cls is None or model.likelihood not in RECONSTRUCTION or getattr(model, "decoder_output", "sigmoid") != "sigmoid":
        return None             # a model, likelihood or decoder output the twin does not know
    if model not in _model_twins:
        _model_twins[model] = cls(model)
    return _model_twins[model]


# --------------------------------------------------------------------------------------------
# Threads for elementwise work
# --------------------------------------------------------------------------------------------


def default_threads() -> int:
    """The number of threads for elementwise work: $NPVAE_THREADS (the command line sets it, see
    npvae.threads), else 1."""
    try:
        return max(1, int(os.environ.get("NPVAE_THREADS", "1")))
    except ValueError:
        return 1


class Pool:
    """Runs fn(lo, hi) over the parts of range(size), one part per thread, the calling thread
    taking the first. NumPy releases the GIL inside its loops, so the parts run at once. Each
    element is computed by the same operations whatever the split: the result is the same, bit
    for bit, for every number of threads."""

    def __init__(self, threads: int) -> None:
        self.threads = max(1, int(threads))
        self._executor = ThreadPoolExecutor(self.threads - 1) if self.threads > 1 else None

    def run(self, fn, size: int) -> None:
        if self._executor is None:
            fn(0, size)
            return
        bounds = [size * i // self.threads for i in range(self.threads + 1)]
        futures = [self._executor.submit(fn, lo, hi) for lo, hi in zip(bounds[1:-1], bounds[2:])]
        fn(bounds[0], bounds[1])
        for f in futures:
            f.result()


# --------------------------------------------------------------------------------------------
# Fused optimizers: whole-buffer updates of the flat parameter buffer
# --------------------------------------------------------------------------------------------


class FusedOptimizer:
    """Base class: the flat parameter buffer, the learning rate, and the state checks."""

    def __init__(self, params: dict[str, Array], lr: float, threads: int | None = None) -> None:
        self.params = params
        self.flat = flat_buffer(params)         # (P,) every parameter, as one array
        self.pool = Pool(default_threads() if threads is None else threads)
        self.lr = optim._positive("learning rate", lr)
        self._slices, start = {}, 0            # where each parameter lies in the buffer
        for k, p in params.items():
            self._slices[k], start = (slice(start, start + p.size), p.shape), start + p.size
        self._tmp: Array | None = None
        self._seen: tuple[tuple[Array, ...], Array] | None = None

    def step(self, grads: dict[str, Array], overwrite_grads: bool = False) -> None:
        """Update the parameters from gradients laid out like them (views of one flat buffer).

        overwrite_grads=True lets the update use the gradients' memory as its scratch space (the
        gradients then hold scratch values): one buffer of P values less streams through the
        caches at every step, which made training 3-4% faster.
        """
        if list(grads) != list(self.params):
            raise ValueError(f"gradient names {list(grads)} differ from parameter names {list(self.params)} "
                             f"(or their order)")
        for k, p in self.params.items():
            if grads[k].shape != p.shape:
                raise ValueError(f"gradient {k!r} has shape {grads[k].shape}, parameter has {p.shape}")
        g = self._flat_grads(grads)
        if overwrite_grads:
            scratch = g
        else:
            if self._tmp is None:
                self._tmp = np.empty_like(self.flat)
            scratch = self._tmp
        self._begin_step()
        self.pool.run(lambda lo, hi: self._update(self.flat[lo:hi], g[lo:hi], scratch[lo:hi], lo, hi), g.size)

    def _begin_step(self) -> None:
        """What a step does once, before its elementwise update (Adam counts the steps)."""

    def _flat_grads(self, grads: dict[str, Array]) -> Array:
        """The flat buffer of the gradient arrays, remembered while they are the same objects
        (finding and checking it takes about 20 microseconds; an array's memory never moves)."""
        arrays = tuple(grads.values())
        seen = self._seen
        if seen is None or len(seen[0]) != len(arrays) or any(a is not b for a, b in zip(arrays, seen[0])):
            self._seen = seen = (arrays, flat_buffer(grads))
        return seen[1]

    def _update(self, p: Array, g: Array, scratch: Array, lo: int, hi: int) -> None:
        """Update the part p = flat[lo:hi] from its gradient g; scratch (g itself, or not) is
        free to overwrite."""
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Array]) -> None:
        """Restore a state from `state_dict()`, or from the textbook optimizer's (converted)."""
        optim.load_checked_state(self, self._from_textbook(state) if set(state) != set(self.state_dict()) else state)

    def _flatten(self, state: dict[str, Array], prefix: str) -> Array | None:
        """The entries "<prefix>.<param name>" of a textbook state as one flat array (None if absent)."""
        keys = [f"{prefix}.{k}" for k in self.params]
        if not all(k in state for k in keys):
            return None
        return np.concatenate([np.asarray(state[k], dtype=self.flat.dtype).ravel() for k in keys])

    def _from_textbook(self, state: dict[str, Array]) -> dict[str, Array]:
        return state

    def _unflatten(self, flat: Array) -> dict[str, Array]:
        """A flat array laid out like the parameters, as a dict of copies shaped like them."""
        return {k: flat[where].reshape(shape).copy() for k, (where, shape) in self._slices.items()}

    def _set_state(self, key: str, value: Array) -> None:
        getattr(self, key)[...] = value


class FusedSGD(FusedOptimizer):
    """optim.SGD over the flat buffer: v <- momentum v + g; p <- p - lr v. Bit for bit the textbook's."""

    def __init__(self, params: dict[str, Array], lr: float = 0.01, momentum: float = 0.9,
                 threads: int | None = None) -> None:
        super().__init__(params, lr, threads)
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        self.velocity = np.zeros_like(self.flat)

    def _update(self, p: Array, g: Array, scratch: Array, lo: int, hi: int) -> None:
        v = self.velocity[lo:hi]
        v *= self.momentum
        v += g
        np.multiply(v, self.lr, out=scratch)
        p -= scratch

    def state_dict(self) -> dict[str, Array]:
        return {"velocity": self.velocity.copy()}

    def _from_textbook(self, state: dict[str, Array]) -> dict[str, Array]:
        velocity = self._flatten(state, "velocity")
        return state if velocity is None else {"velocity": velocity}

    def to_textbook(self, opt: optim.SGD) -> None:
        """Write this state into the textbook optimizer `opt` (exactly: the same numbers)."""
        opt.lr, opt.velocity = self.lr, self._unflatten(self.velocity)


FLUSH_EVERY, FLUSH_BELOW = 100, 1e-30


class FusedAdam(FusedOptimizer):
    """optim.Adam over the flat buffer: the textbook's float32 operations in the textbook's
    order, each written into the state or a scratch array, so the same bits (tests/test_fast.py):

        m <- b1 m + (1 - b1) g                  v <- b2 v + (1 - b2) g^2
        p <- p - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

    Fourteen passes over the buffer, one per operation. (Keeping decaying sums m / (1 - b1) and
    v / (1 - b2) and folding the constants into two scalars takes ten, but rounds otherwise, and
    two runs that round otherwise part once a ReLU switches on one of them only.)

    Subnormal numbers, the one departure from the textbook: a parameter whose gradient becomes
    exactly 0 (a dead unit) has its m multiplied by b1 at every step. Near the smallest float32
    that product rounds back to itself, so it never reaches 0, and arithmetic on such subnormal
    values is many times slower on many CPUs (Adam's step went from 1.8 to 6.5 ms on an Intel
    Xeon). Every FLUSH_EVERY steps the entries of m and v below FLUSH_BELOW in size are set to 0:
    b1^100 = 2.7e-5, so an entry never decays from FLUSH_BELOW into the subnormal range (below
    1.2e-38) between two flushes. Their effect on a parameter (at most lr * 1e-30 / eps) is far
    below its rounding; the state then differs from the textbook's in those entries only.
    """

    def __init__(self, params: dict[str, Array], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, threads: int | None = None) -> None:
        super().__init__(params, lr, threads)
        b1, b2 = betas
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        self.b1, self.b2, self.eps = float(b1), float(b2), optim._positive("eps", eps)
        self.t = 0
        self.m = np.zeros_like(self.flat)
        self.v = np.zeros_like(self.flat)
        self._work = np.empty_like(self.flat)          # a second scratch array, beside `scratch`

    def _begin_step(self) -> None:
        self.t += 1

    def _update(self, p: Array, g: Array, scratch: Array, lo: int, hi: int) -> None:
        # Two scratch arrays: tmp, and out (which may be g itself: g is not read after g ** 2).
        m, v, b1, b2 = self.m[lo:hi], self.v[lo:hi], self.b1, self.b2
        tmp, out = self._work[lo:hi], scratch
        m *= b1                                         # m = b1 * m + (1 - b1) * g
        np.multiply(g, 1 - b1, out=tmp)
        m += tmp
        np.square(g, out=tmp)                           # v = b2 * v + (1 - b2) * g ** 2
        tmp *= 1 - b2
        v *= b2
        v += tmp
        np.divide(v, 1 - b2 ** self.t, out=tmp)         # v_hat = v / (1 - b2 ** t)
        np.sqrt(tmp, out=tmp)                           # sqrt(v_hat) + eps
        tmp += self.eps
        np.divide(m, 1 - b1 ** self.t, out=out)         # m_hat = m / (1 - b1 ** t)
        out *= self.lr                                  # p -= lr * m_hat / (sqrt(v_hat) + eps)
        out /= tmp
        p -= out
        if self.t % FLUSH_EVERY == 0:
            flush_subnormals(m, tmp)
            flush_subnormals(v, tmp)

    def moments(self) -> tuple[Array, Array]:
        """Copies of Adam's m and v, the running means of the gradient and of its square."""
        return self.m.copy(), self.v.copy()

    def state_dict(self) -> dict[str, Array]:
        return {"t": np.array(self.t, dtype=np.int64), "m": self.m.copy(), "v": self.v.copy()}

    def _from_textbook(self, state: dict[str, Array]) -> dict[str, Array]:
        # The textbook Adam's m and v per parameter (exact), or, from checkpoints written while
        # npvae's fused Adam kept decaying sums, m = (1 - b1) m_sum and v = (1 - b2) v_sum (one rounding).
        m, v = self._flatten(state, "m"), self._flatten(state, "v")
        if m is None and {"m_sum", "v_sum"} <= set(state):
            m, v = (1 - self.b1) * np.asarray(state["m_sum"]), (1 - self.b2) * np.asarray(state["v_sum"])
        if m is None or "t" not in state:
            return state
        return {"t": state["t"], "m": m, "v": v}

    def _set_state(self, key: str, value: Array) -> None:
        if key == "t":
            self.t = int(value)
        else:
            super()._set_state(key, value)

    def to_textbook(self, opt: optim.Adam) -> None:
        """Write this state into the textbook Adam `opt` (exactly: the same numbers)."""
        opt.lr, opt.t, opt.m, opt.v = self.lr, self.t, self._unflatten(self.m), self._unflatten(self.v)


def flush_subnormals(a: Array, scratch: Array) -> None:
    """Set the entries of `a` below FLUSH_BELOW in size to 0 (scratch: an array of a's shape)."""
    np.abs(a, out=scratch)
    a[scratch < FLUSH_BELOW] = 0


FUSED = {optim.Adam: FusedAdam, optim.SGD: FusedSGD}


def make_optimizer(name: str, model, lr: float, **settings):
    """A fused optimizer for the model's twin (its parameters packed), or, for a model without a
    twin, the textbook one: what `npvae train` uses, so that its checkpoints hold the fused state."""
    t = twin(model)
    if t is None:
        return optim.make_optimizer(name, model.params, lr, **settings)
    if name not in optim.OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {sorted(optim.OPTIMIZERS)}")
    return FUSED[optim.OPTIMIZERS[name]](t.params, lr=lr, **settings)


def count_subnormals(state: dict[str, Array]) -> int:
    """The number of subnormal values (0 < |x| < the dtype's smallest normal) in a state's float arrays."""
    total = 0
    for a in state.values():
        a = np.asarray(a)
        if np.issubdtype(a.dtype, np.floating):
            total += int(np.count_nonzero((a != 0) & (np.abs(a) < np.finfo(a.dtype).tiny)))
    return total


# --------------------------------------------------------------------------------------------
# The training step that fit runs
# --------------------------------------------------------------------------------------------


def clip_grad_norm(flat_grads: Array, max_norm: float) -> float:
    """train.clip_grad_norm on the flat gradient buffer. Returns the norm before clipping."""
    with np.errstate(over="ignore"):             # an overflow is handled below
        norm = math.sqrt(float(np.dot(flat_grads, flat_grads)))
    if math.isinf(norm):
        # The sum of squares overflowed (float32 tops out at 3.4e38): divide by the largest
        # entry first, so that a huge gradient is scaled down, not zeroed.
        largest = float(np.max(np.abs(flat_grads)))
        if math.isfinite(largest):
            scaled = flat_grads / flat_grads.dtype.type(largest)
            norm = largest * math.sqrt(float(np.dot(scaled, scaled)))
    if norm > max_norm:
        flat_grads *= max_norm / norm
    return norm


# The fused twin made for a textbook optimizer, and the state it last wrote back into it: if
# the textbook state is still that one when fit is called again, the twin carries on exactly.
_optimizer_twins: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class TrainingStep:
    """One step of `fit` on the fast twin: loss and gradients, clipping, the fused update.

    optimizer: a fused optimizer over the twin's parameters, or a textbook one, for which a
    fused twin is made (its state converted) and whose state `finish()` writes back.
    """

    def __init__(self, model_twin: _ModelTwin, optimizer, clip: float | None) -> None:
        self.twin, self.clip, self.textbook = model_twin, clip, None
        if isinstance(optimizer, FusedOptimizer):
            if optimizer.flat is not model_twin.flat_params:
                raise ValueError("the optimizer updates other parameters than the model's")
            self.optimizer = optimizer
            return
        if optimizer.params is not model_twin.model.params:
            raise ValueError("the optimizer must be built on the model's own params dict (model.params)")
        self.textbook = optimizer
        cached = _optimizer_twins.get(optimizer)
        if cached is not None and _same_state(cached[1], optimizer.state_dict()):
            self.optimizer = cached[0]
            return
        settings = ({"betas": (optimizer.b1, optimizer.b2), "eps": optimizer.eps} if isinstance(optimizer, optim.Adam)
                    else {"momentum": optimizer.momentum})
        self.optimizer = FUSED[type(optimizer)](model_twin.params, lr=optimizer.lr, **settings)
        self.optimizer.load_state_dict(optimizer.state_dict())

    def loss_and_grads(self, x: Array) -> dict[str, float]:
        self.report, self.grads = self.twin.loss_and_grads(x)
        return self.report

    def update(self) -> None:
        if self.clip is not None:
            clip_grad_norm(self.twin.flat_grads, self.clip)
        self.optimizer.step(self.grads, overwrite_grads=True)    # nothing reads the gradients after it

    @property
    def lr(self) -> float:
        return self.optimizer.lr

    @lr.setter
    def lr(self, value: float) -> None:
        self.optimizer.lr = value
        if self.textbook is not None:
            self.textbook.lr = value

    def finish(self) -> None:
        """Write the fused state back into the textbook optimizer (if there is one)."""
        if self.textbook is not None:
            self.optimizer.to_textbook(self.textbook)
            _optimizer_twins[self.textbook] = (self.optimizer, self.textbook.state_dict())


def _same_state(a: dict[str, Array], b: dict[str, Array]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def training_step(model, optimizer, clip: float | None) -> TrainingStep | None:
    """The fast training step for this model and optimizer, or None where the twin has none."""
    t = twin(model)
    if t is None or not (isinstance(optimizer, FusedOptimizer) or type(optimizer) in FUSED):
        return None
    return TrainingStep(t, optimizer, clip)
