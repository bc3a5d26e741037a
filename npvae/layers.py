"""Dense layers and activations, each with a hand-written forward and backward pass.

Every layer follows one small protocol:

    y = layer.forward(x)       # caches what the backward pass needs
    dx = layer.backward(dout)  # fills layer.grads, returns dL/dx

`dout` is dL/dy, the gradient of a scalar loss L with respect to the layer's output. No layer
ever writes into `dout`: it belongs to the caller.

Speed: both methods take `reuse=False`. By default every call returns new arrays, as a caller
expects. The models' training step passes reuse=True: the layer then writes its result into an
array of its own that it keeps from one call to the next (see `reusable`), so that a training
step allocates almost nothing. That matters more than it sounds: a (128, 784) float32 array is
400 KB, big enough for the C library to give its memory back to the operating system when it is
freed, and to fault it in again, page by page, on the next step. The price of reuse=True: the
next call with reuse=True overwrites the result, so the caller must be done with it by then.

Shapes: N batch size, D_in / D_out the widths on either side of a dense layer.
"""

from __future__ import annotations

import math

import numpy as np

Array = np.ndarray


def reusable(store: dict[str, Array], name: str, shape: tuple[int, ...], dtype) -> Array:
    """store[name] if it has this shape and dtype, else a new (uninitialised) array kept as store[name].

    These are the arrays a training step writes its results into: the same ones, step after step.
    (The last, smaller batch of an epoch replaces them, and the next epoch's first batch back.)
    """
    a = store.get(name)
    if a is None or a.shape != shape or a.dtype != dtype:
        a = store[name] = np.empty(shape, dtype=dtype)
    return a


def zeros(store: dict[str, Array], name: str, shape: tuple[int, ...], dtype) -> Array:
    """A read-only array of zeros of this shape and dtype, kept as store[name] and reused.

    For np.maximum(x, 0): NumPy 2.4 compares an array with a scalar 0 on a slow path, 3 to 4
    times slower than with an array of zeros of x's shape (26 against 8 microseconds for a
    (128, 400) float32 x on the reference machine). The result is the same.
    """
    a = store.get(name)
    if a is None or a.shape != shape or a.dtype != dtype:
        a = store[name] = np.zeros(shape, dtype=dtype)
        a.flags.writeable = False            # shared from call to call: nobody may write into it
    return a


def _real(x: Array) -> Array:
    """x itself if it is floating point; integers and booleans as float64 (an activation's
    output and slope are real numbers: LeakyReLU's alpha would otherwise round to 0)."""
    x = np.asarray(x)
    return x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float64)


def as_generator(rng: np.random.Generator | int | None) -> np.random.Generator:
    """Return `rng` itself if it is a Generator, else a new Generator seeded with it."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be a numpy.random.Generator, an int seed or None, got {type(rng).__name__}")


class Layer:
    """Base class: a layer without parameters. Subclasses set `params` and `grads` when they have any."""

    def __init__(self) -> None:
        self.params: dict[str, Array] = {}
        self.grads: dict[str, Array] = {}
        self.buffers: dict[str, Array] = {}     # results kept for reuse=True (see the module docstring)

    def forward(self, x: Array, reuse: bool = False) -> Array:
        raise NotImplementedError

    def backward(self, dout: Array, reuse: bool = False) -> Array:
        raise NotImplementedError

    def _out(self, name: str, shape: tuple[int, ...], dtype, reuse: bool) -> Array | None:
        """The `out=` of a result: None (NumPy makes a new array), or with reuse this layer's own array."""
        return reusable(self.buffers, name, shape, dtype) if reuse else None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


# --------------------------------------------------------------------------------------------
# Dense layer
# --------------------------------------------------------------------------------------------


class Dense(Layer):
    """Fully connected layer: y = x @ W + b.

    x: (N, D_in), W: (D_in, D_out), b: (D_out,), y: (N, D_out).

    Initialisation:
    - "pytorch" (default): W and b ~ U(-1/sqrt(D_in), 1/sqrt(D_in)), the default of PyTorch's
      nn.Linear. We use it because npvae's results are compared with PyTorch's (the VAE example),
      and because it trains the seed's VAE better here than He: 10 epochs of `npvae train` reach a
      test loss of 30.32-30.37 with it against 30.73-30.86 with He before the ReLUs and Glorot
      elsewhere (two seeds; `python demos/init_comparison.py`).
    - "he": W ~ N(0, 2 / D_in), b = 0. For ReLU-family layers this keeps the variance of the
      activations roughly constant from layer to layer (He et al., 2015), because ReLU zeroes
      half of its input.
    - "glorot": W ~ N(0, 2 / (D_in + D_out)), b = 0. For tanh and sigmoid layers (Glorot and
      Bengio, 2010), which keep both halves of their input.
    """

    def __init__(self, d_in: int, d_out: int, *, init: str = "pytorch",
                 rng: np.random.Generator | int | None = None, dtype=np.float32) -> None:
        super().__init__()
        if d_in < 1 or d_out < 1:
            raise ValueError(f"Dense layer sizes must be positive, got ({d_in}, {d_out})")
        rng = as_generator(rng)
        if init == "pytorch":
            bound = 1 / math.sqrt(d_in)
            W, b = rng.uniform(-bound, bound, (d_in, d_out)), rng.uniform(-bound, bound, d_out)
        elif init in ("he", "glorot"):
            variance = 2.0 / d_in if init == "he" else 2.0 / (d_in + d_out)
            W, b = rng.standard_normal((d_in, d_out)) * math.sqrt(variance), np.zeros(d_out)
        else:
            raise ValueError(f"init must be 'pytorch', 'he' or 'glorot', got {init!r}")
        self.params = {"W": W.astype(dtype), "b": b.astype(dtype)}
        self.grads = {"W": np.zeros((d_in, d_out), dtype=dtype), "b": np.zeros(d_out, dtype=dtype)}
        self.x: Array | None = None

    def forward(self, x: Array, reuse: bool = False) -> Array:
        self.x = x                                       # (N, D_in), kept for dW
        W = self.params["W"]
        y = np.matmul(x, W, out=self._out("y", (x.shape[0], W.shape[1]), np.result_type(x, W), reuse))
        y += self.params["b"]                            # (N, D_out), in place: no second array
        return y

    def backward(self, dout: Array, need_dx: bool = True, reuse: bool = False) -> Array | None:
        # y_nj = sum_i x_ni W_ij + b_j, so
        #   dW_ij = sum_n x_ni dout_nj  ->  dW = x.T @ dout        (D_in, D_out)
        #   db_j  = sum_n dout_nj       ->  db = dout.sum(0)       (D_out,)
        #   dx_ni = sum_j dout_nj W_ij  ->  dx = dout @ W.T        (N, D_in)
        # Gradients are written into the existing arrays: they may be views of a flat buffer.
        np.matmul(self.x.T, dout, out=self.grads["W"])
        np.add.reduce(dout, axis=0, out=self.grads["b"])   # dout.sum(0) (np.sum adds a few microseconds)
        if not need_dx:    # the first layer's input is data: its gradient would be thrown away
            return None
        W = self.params["W"]
        dx = self._out("dx", (dout.shape[0], W.shape[0]), np.result_type(dout, W), reuse)
        return np.matmul(dout, W.T, out=dx)

    def __repr__(self) -> str:
        d_in, d_out = self.params["W"].shape
        return f"Dense({d_in}, {d_out})"


# --------------------------------------------------------------------------------------------
# Activations (elementwise): y = f(x), dx = dout * f'(x)
# --------------------------------------------------------------------------------------------


class ReLU(Layer):
    """y = max(x, 0); f'(x) = 1 where x > 0, else 0 (we take 0 at the kink)."""

    def forward(self, x: Array, reuse: bool = False) -> Array:
        self.mask = np.greater(x, 0, out=self._out("mask", x.shape, np.bool_, reuse))
        return np.maximum(x, zeros(self.buffers, "zeros", x.shape, x.dtype),   # max(x, 0), fast (see `zeros`)
                          out=self._out("y", x.shape, x.dtype, reuse))

    def backward(self, dout: Array, reuse: bool = False) -> Array:
        return np.multiply(dout, self.mask, out=self._out("dx", dout.shape, dout.dtype, reuse))


class LeakyReLU(Layer):
    """y = x where x > 0, else alpha * x; f'(x) = 1 or alpha."""

    def __init__(self, alpha: float = 0.01) -> None:
        super().__init__()
        self.alpha = alpha

    def forward(self, x: Array, reuse: bool = False) -> Array:
        x = _real(x)
        one, alpha = x.dtype.type(1), x.dtype.type(self.alpha)   # keep x's dtype: no float64 upcast
        # slope = 1 where x > 0, else alpha, built in place as (x > 0) * (1 - alpha) + alpha; the
        # sum (1 - alpha) + alpha rounds to exactly 1 for any alpha in [0, 1].
        positive = np.greater(x, 0, out=self._out("positive", x.shape, np.bool_, reuse))
        self.slope = np.multiply(positive, one - alpha, out=self._out("slope", x.shape, x.dtype, reuse))
        self.slope += alpha
        return np.multiply(x, self.slope, out=self._out("y", x.shape, x.dtype, reuse))

    def backward(self, dout: Array, reuse: bool = False) -> Array:
        return np.multiply(dout, self.slope, out=self._out("dx", dout.shape, np.result_type(dout, self.slope), reuse))

    def __repr__(self) -> str:
        return f"LeakyReLU(alpha={self.alpha})"


class Tanh(Layer):
    """y = tanh(x); f'(x) = 1 - y^2."""

    def forward(self, x: Array, reuse: bool = False) -> Array:
        self.y = np.tanh(x, out=self._out("y", x.shape, x.dtype, reuse))
        return self.y

    def backward(self, dout: Array, reuse: bool = False) -> Array:
        dx = np.multiply(self.y, self.y, out=self._out("dx", dout.shape, np.result_type(dout, self.y), reuse))
        np.subtract(1, dx, out=dx)                       # 1 - y^2
        dx *= dout
        return dx


def sigmoid(x: Array, out: Array | None = None) -> Array:
    """Logistic function 1 / (1 + exp(-x)), in x's dtype; written into `out` if given (x's shape).

    Computed as written, one in-place step at a time (no temporary arrays). It keeps its relative
    precision for very negative x (sigmoid(-40) = 4.2e-18, not 0). For x below about -88 in
    float32 (-709 in float64), exp(-x) overflows to inf and 1 / (1 + inf) = 0 is the right
    answer, so that overflow is expected and silenced. (np.exp(-np.logaddexp(0, -x)) gives the
    same values, but NumPy's logaddexp is about 20 times slower.)
    """
    x = np.asarray(x)
    if out is None:
        out = np.empty(x.shape, dtype=np.result_type(x, 1.0))   # floats keep their dtype, integers become float64
    with np.errstate(over="ignore"):
        np.negative(x, out=out)
        np.exp(out, out=out)                             # exp(-x), inf allowed
    out += 1
    return np.divide(1, out, out=out)


class Sigmoid(Layer):
    """y = 1 / (1 + exp(-x)); f'(x) = y * (1 - y)."""

    def forward(self, x: Array, reuse: bool = False) -> Array:
        self.y = sigmoid(x, out=self._out("y", x.shape, x.dtype, reuse))
        return self.y

    def backward(self, dout: Array, reuse: bool = False) -> Array:
        dx = np.subtract(1, self.y, out=self._out("dx", dout.shape, np.result_type(dout, self.y), reuse))
        dx *= self.y                                     # y (1 - y)
        dx *= dout
        return dx


class Softplus(Layer):
    """y = log(1 + exp(x)) = max(x, 0) + log(1 + exp(-|x|)); f'(x) = sigmoid(x).

    The second form never exponentiates a positive number, so it never overflows. (It is what
    np.logaddexp(0, x) computes too, but about 20 times faster.)
    """

    def forward(self, x: Array, reuse: bool = False) -> Array:
        self.x = x = _real(x)
        y = np.abs(x, out=self._out("y", x.shape, x.dtype, reuse))
        np.negative(y, out=y)
        np.exp(y, out=y)
        np.log1p(y, out=y)                               # log(1 + exp(-|x|))
        y += np.maximum(x, 0, out=self._out("relu", x.shape, x.dtype, reuse))
        return y

    def backward(self, dout: Array, reuse: bool = False) -> Array:
        dx = sigmoid(self.x, out=self._out("dx", dout.shape, np.result_type(dout, self.x), reuse))
        dx *= dout
        return dx


ACTIVATIONS: dict[str, type[Layer]] = {
    "relu": ReLU,
    "leaky_relu": LeakyReLU,
    "tanh": Tanh,
    "sigmoid": Sigmoid,
    "softplus": Softplus,
}


def activation(name: str) -> Layer:
    """Build an activation layer from its name: one of ACTIVATIONS."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


# --------------------------------------------------------------------------------------------
# Sequential container and the flat parameter buffer
# --------------------------------------------------------------------------------------------


class Sequential(Layer):
    """Layers applied one after the other; backward runs them in reverse."""

    def __init__(self, layers: list[Layer]) -> None:
        super().__init__()
        self.layers = list(layers)

    @property
    def dense_layers(self) -> list[Dense]:
        """The layers that have parameters, in order."""
        return [layer for layer in self.layers if layer.params]

    def forward(self, x: Array, reuse: bool = False) -> Array:
        for layer in self.layers:
            x = layer.forward(x, reuse=reuse)
        return x

    def backward(self, dout: Array, need_dx: bool = True, reuse: bool = False) -> Array | None:
        for i, layer in enumerate(reversed(self.layers)):
            is_first = i == len(self.layers) - 1
            if is_first and not need_dx and isinstance(layer, Dense):
                return layer.backward(dout, need_dx=False)
            dout = layer.backward(dout, reuse=reuse)
        return dout

    def __repr__(self) -> str:
        return "Sequential(" + ", ".join(map(repr, self.layers)) + ")"


def mlp(sizes: list[int], activation_name: str = "relu", *, final_activation: str | None = None,
        init: str = "pytorch", rng: np.random.Generator | int | None = None, dtype=np.float32) -> Sequential:
    """A multilayer perceptron: Dense(sizes[0], sizes[1]), act, ..., Dense(sizes[-2], sizes[-1]).

    The hidden layers use `activation_name`; the last Dense layer is followed by
    `final_activation` if given, else left linear. `init` is the Dense layers' initialisation.
    """
    if len(sizes) < 2:
        raise ValueError(f"an MLP needs at least an input and an output size, got {sizes}")
    rng = as_generator(rng)
    layers: list[Layer] = []
    for i, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        last = i == len(sizes) - 2
        act = final_activation if last else activation_name
        layers.append(Dense(d_in, d_out, init=init, rng=rng, dtype=dtype))
        if act is not None:
            layers.append(activation(act))
    return Sequential(layers)


def pack(arrays: dict[str, Array]) -> tuple[Array, dict[str, Array]]:
    """Copy a dict of arrays into one flat 1-D buffer and return (buffer, views).

    Each view has the shape of the original array and shares memory with the buffer, so an
    optimizer can update every parameter with a handful of whole-buffer operations (a "fused"
    update) while layers keep using their own named arrays.
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


def pack_layers(named: dict[str, Layer]) -> tuple[Array, dict[str, Array], Array, dict[str, Array]]:
    """Move the parameters and gradients of named layers into two flat buffers.

    Returns (flat_params, params, flat_grads, grads). `params` maps "<layer name>.<W or b>" to a
    view of `flat_params`; each layer's own `params` and `grads` now hold those same views.
    """
    flat_params, params = pack({f"{n}.{k}": v for n, layer in named.items() for k, v in layer.params.items()})
    flat_grads, grads = pack({f"{n}.{k}": v for n, layer in named.items() for k, v in layer.grads.items()})
    for n, layer in named.items():
        for k in layer.params:
            layer.params[k], layer.grads[k] = params[f"{n}.{k}"], grads[f"{n}.{k}"]
    return flat_params, params, flat_grads, grads


def flat_buffer(arrays: dict[str, Array]) -> Array:
    """Return the 1-D buffer that the arrays of a packed dict (see `pack`) are views of, in order.

    Raises ValueError if they are not: the fused optimizers rely on it.
    """
    base = next(iter(arrays.values())).base if arrays else None
    if base is None or base.ndim != 1 or not base.flags.c_contiguous:
        raise ValueError("the arrays are not views of one flat buffer; build them with npvae.layers.pack")
    address = base.__array_interface__["data"][0]
    for a in arrays.values():
        if a.base is not base or a.__array_interface__["data"][0] != address:
            raise ValueError("the arrays are not views of one flat buffer, in order; build them with npvae.layers.pack")
        address += a.nbytes
    if address != base.__array_interface__["data"][0] + base.nbytes:
        raise ValueError("the arrays do not cover their flat buffer; build them with npvae.layers.pack")
    return base
