"""Dense layers and activations, each with a hand-written forward and backward pass.

Every layer follows one protocol:

    y = layer.forward(x)       # caches what the backward pass needs
    dx = layer.backward(dout)  # fills layer.grads, returns dL/dx

`dout` is dL/dy, the gradient of a scalar loss L with respect to the layer's output.
`params` and `grads` are dicts with the same keys (empty for an activation).

Shapes: N batch size, D_in and D_out the widths on either side of a dense layer.
"""

from __future__ import annotations

import math

import numpy as np

from .checks import as_generator      # a Generator, or one seeded with the int given

Array = np.ndarray


class Layer:
    """Base class: a layer without parameters."""

    def __init__(self) -> None:
        self.params: dict[str, Array] = {}
        self.grads: dict[str, Array] = {}

    def forward(self, x: Array) -> Array:
        raise NotImplementedError

    def backward(self, dout: Array) -> Array:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Dense(Layer):
    """Fully connected layer: y = x @ W + b.

    x: (N, D_in), W: (D_in, D_out), b: (D_out,), y: (N, D_out).

    Initialisation `init`:
    - "pytorch" (default): W, b ~ U(-1/sqrt(D_in), 1/sqrt(D_in)), as PyTorch's nn.Linear, the
      library npvae's results are compared with. It trains the study note's VAE a little better
      here than He's (`python demos/init_comparison.py`).
    - "he": W ~ N(0, 2 / D_in), b = 0, for ReLU layers (He et al., 2015): ReLU zeroes half of its
      input, and the factor 2 keeps the activations' variance from shrinking layer by layer.
    - "glorot": W ~ N(0, 2 / (D_in + D_out)), b = 0, for tanh and sigmoid (Glorot and Bengio, 2010).
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
        self.grads = {"W": np.zeros_like(self.params["W"]), "b": np.zeros_like(self.params["b"])}

    def forward(self, x: Array) -> Array:
        self.x = x
        return x @ self.params["W"] + self.params["b"]

    def backward(self, dout: Array) -> Array:
        # y_nj = sum_i x_ni W_ij + b_j, so
        #   dW_ij = sum_n x_ni dout_nj  ->  dW = x.T @ dout        (D_in, D_out)
        #   db_j  = sum_n dout_nj       ->  db = dout.sum(0)       (D_out,)
        #   dx_ni = sum_j dout_nj W_ij  ->  dx = dout @ W.T        (N, D_in)
        self.grads["W"] = self.x.T @ dout
        self.grads["b"] = dout.sum(axis=0)
        return dout @ self.params["W"].T

    def __repr__(self) -> str:
        d_in, d_out = self.params["W"].shape
        return f"Dense({d_in}, {d_out})"


# Activations act elementwise: y = f(x), so dx = dout * f'(x).


def _real(x: Array) -> Array:
    """x as a floating-point array: integers and booleans become float64."""
    x = np.asarray(x)
    return x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float64)


class ReLU(Layer):
    """y = max(x, 0); f'(x) = 1 where x > 0, else 0 (we take 0 at the kink)."""

    def forward(self, x: Array) -> Array:
        self.x = x
        return np.maximum(x, 0)

    def backward(self, dout: Array) -> Array:
        return dout * (self.x > 0)


class LeakyReLU(Layer):
    """y = x where x > 0, else alpha * x; f'(x) = 1 or alpha."""

    def __init__(self, alpha: float = 0.01) -> None:
        super().__init__()
        self.alpha = alpha

    def forward(self, x: Array) -> Array:
        x = _real(x)
        self.slope = np.where(x > 0, 1, self.alpha).astype(x.dtype)   # f'(x), in x's dtype
        return x * self.slope

    def backward(self, dout: Array) -> Array:
        return dout * self.slope

    def __repr__(self) -> str:
        return f"LeakyReLU(alpha={self.alpha})"


class Tanh(Layer):
    """y = tanh(x); f'(x) = 1 - y^2."""

    def forward(self, x: Array) -> Array:
        self.y = np.tanh(x)
        return self.y

    def backward(self, dout: Array) -> Array:
        return dout * (1 - self.y ** 2)


def sigmoid(x: Array) -> Array:
    """The logistic function 1 / (1 + exp(-x)), in x's dtype (integers become float64). For x below
    about -88 in float32 (-709 in float64) exp(-x) overflows to inf, and 1 / (1 + inf) = 0 is the
    right answer: that overflow is expected and silenced."""
    x = _real(x)
    with np.errstate(over="ignore"):
        return 1 / (1 + np.exp(-x))


class Sigmoid(Layer):
    """y = 1 / (1 + exp(-x)); f'(x) = y (1 - y)."""

    def forward(self, x: Array) -> Array:
        self.y = sigmoid(x)
        return self.y

    def backward(self, dout: Array) -> Array:
        return dout * (self.y * (1 - self.y))


class Softplus(Layer):
    """y = log(1 + exp(x)), computed as max(x, 0) + log(1 + exp(-|x|)); f'(x) = sigmoid(x).
    The second form never exponentiates a positive number, so it never overflows."""

    def forward(self, x: Array) -> Array:
        self.x = x = _real(x)
        return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0)

    def backward(self, dout: Array) -> Array:
        return dout * sigmoid(self.x)


ACTIVATIONS: dict[str, type[Layer]] = {"relu": ReLU, "leaky_relu": LeakyReLU, "tanh": Tanh, "sigmoid": Sigmoid,
                                        "softplus": Softplus}


def activation(name: str) -> Layer:
    """Build an activation layer from its name: one of ACTIVATIONS."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class Sequential(Layer):
    """Layers applied one after the other; backward runs them in reverse."""

    def __init__(self, layers: list[Layer]) -> None:
        super().__init__()
        self.layers = list(layers)

    @property
    def dense_layers(self) -> list[Layer]:
        """The layers that have parameters, in order."""
        return [layer for layer in self.layers if layer.params]

    def forward(self, x: Array) -> Array:
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, dout: Array) -> Array:
        for layer in reversed(self.layers):
            dout = layer.backward(dout)
        return dout

    def __repr__(self) -> str:
        return "Sequential(" + ", ".join(map(repr, self.layers)) + ")"


def mlp(sizes: list[int], activation_name: str = "relu", *, final_activation: str | None = None,
        init: str = "pytorch", rng: np.random.Generator | int | None = None, dtype=np.float32) -> Sequential:
    """A multilayer perceptron: Dense(sizes[0], sizes[1]), act, ..., Dense(sizes[-2], sizes[-1]).
    The hidden layers use `activation_name`; the last is followed by `final_activation` if given."""
    if len(sizes) < 2:
        raise ValueError(f"an MLP needs at least an input and an output size, got {sizes}")
    rng = as_generator(rng)
    layers: list[Layer] = []
    for i, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(Dense(d_in, d_out, init=init, rng=rng, dtype=dtype))
        act = final_activation if i == len(sizes) - 2 else activation_name
        if act is not None:
            layers.append(activation(act))
    return Sequential(layers)
