"""Optimizers that update a model's parameters in place: SGD with momentum, and Adam.

Both take the model's `params` dict (name -> array) and, at each step, its `grads` dict with the
same keys. npvae's models keep all parameters in one flat buffer (see `npvae.layers.pack`), so an
optimizer updates every parameter with a few whole-buffer operations: one fused update instead
of one small update per array. The updates write into preallocated buffers (`out=`), so a step
allocates nothing (after the first) and keeps the parameters' dtype.

Each optimizer keeps its own state (`state_dict()` / `load_state_dict()`) so that a checkpoint
can save it and a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import math

import numpy as np

from .layers import flat_buffer

Array = np.ndarray


class Optimizer:
    """Base class: holds the flat parameter buffer and the learning rate."""

    def __init__(self, params: dict[str, Array], lr: float) -> None:
        if not (lr > 0 and math.isfinite(lr)):
            raise ValueError(f"learning rate must be a positive number, got {lr}")
        self.params = params
        self.flat = flat_buffer(params)         # (P,) every parameter, as one array
        self.lr = float(lr)
        self._tmp: Array | None = None          # scratch space for the update, made when first needed
        self._seen: tuple[tuple[Array, ...], Array] | None = None   # the last gradient arrays and their buffer

    def step(self, grads: dict[str, Array], overwrite_grads: bool = False) -> None:
        """Update the parameters in place from gradients with the same keys as `params`.

        overwrite_grads=True lets the update use the gradients' memory as its scratch space: after
        the step, the gradient arrays hold scratch values. The training loop passes True (it reads
        the gradients before the step only): one buffer of the parameters' size less to stream
        through the caches at every step made training 3-4% faster (`fit` on the bench's model,
        steps alternated between the two settings in one process).
        """
        # The update works on flat buffers, so the gradients must be laid out exactly like the
        # parameters: same names, same order, same shapes.
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
        self._update(g, scratch)

    def _flat_grads(self, grads: dict[str, Array]) -> Array:
        """The flat buffer the gradient arrays are views of (see `npvae.layers.flat_buffer`).

        Finding and checking it takes about 20 microseconds, and a training step hands over the
        same arrays every time: when they are the very same objects as last time, the buffer
        found then is returned. (An array's memory never moves, so the same objects mean the same
        buffer.)
        """
        arrays = tuple(grads.values())
        seen = self._seen
        if seen is None or len(seen[0]) != len(arrays) or any(a is not b for a, b in zip(arrays, seen[0])):
            self._seen = seen = (arrays, flat_buffer(grads))
        return seen[1]

    def _update(self, g: Array, scratch: Array) -> None:
        """Update self.flat from the flat gradient g; scratch (g itself, or not) is free to overwrite."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Array]:
        """A copy of the optimizer's state (arrays), for a checkpoint."""
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Array]) -> None:
        """Restore the state saved by `state_dict()`. Every entry is checked (names, shapes, finite
        real numbers) before any is set: a refused state leaves the optimizer as it was."""
        mine = self.state_dict()
        if state.keys() != mine.keys():
            raise ValueError(f"optimizer state has keys {sorted(state)}, expected {sorted(mine)}")
        checked = {}
        for k, v in state.items():
            v = np.asarray(v)
            if v.shape != mine[k].shape:
                raise ValueError(f"optimizer state {k!r} has shape {v.shape}, expected {mine[k].shape}")
            if not (np.issubdtype(v.dtype, np.integer) or np.issubdtype(v.dtype, np.floating)) \
                    or not np.isfinite(v).all():
                raise ValueError(f"optimizer state {k!r} must hold finite real numbers, got dtype {v.dtype}")
            self._check_state(k, v)
            checked[k] = v
        for k, v in checked.items():
            self._set_state(k, v)

    def _check_state(self, key: str, value: Array) -> None:
        """Raise ValueError for a state entry no run could have produced (see Adam)."""

    def _set_state(self, key: str, value: Array) -> None:
        getattr(self, key)[...] = value


class SGD(Optimizer):
    """Stochastic gradient descent with (heavy-ball) momentum, as in PyTorch:

        v <- momentum * v + g
        p <- p - lr * v
    """

    def __init__(self, params: dict[str, Array], lr: float = 0.01, momentum: float = 0.9) -> None:
        super().__init__(params, lr)
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        self.velocity = np.zeros_like(self.flat)

    def _update(self, g: Array, scratch: Array) -> None:
        v = self.velocity
        v *= self.momentum
        v += g
        np.multiply(v, self.lr, out=scratch)
        self.flat -= scratch

    def state_dict(self) -> dict[str, Array]:
        return {"velocity": self.velocity.copy()}


class Adam(Optimizer):
    """Adam (Kingma and Ba, 2015) with bias correction, as in PyTorch:

        m <- b1 m + (1 - b1) g                   running mean of the gradient
        v <- b2 v + (1 - b2) g^2                 running mean of its square
        p <- p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

    The divisions by 1 - b^t undo the bias of m and v toward their zero start.

    Speed: npvae keeps m and v without their factors (1 - b), as decaying sums of the gradients:

        m_sum <- b1 m_sum + g                    m = (1 - b1) m_sum
        v_sum <- b2 v_sum + g^2                  v = (1 - b2) v_sum

    which takes two passes over the buffer instead of three and three instead of four (see
    `_update`). The factors move into two scalars of the update, so the steps are Adam's, up to
    rounding. `moments()` gives m and v as written above.
    """

    def __init__(self, params: dict[str, Array], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        super().__init__(params, lr)
        b1, b2 = betas
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        self.b1, self.b2, self.eps = float(b1), float(b2), float(eps)
        self.t = 0
        self.m_sum = np.zeros_like(self.flat)
        self.v_sum = np.zeros_like(self.flat)

    def _update(self, g: Array, scratch: Array) -> None:
        self.t += 1
        m_sum, v_sum, tmp = self.m_sum, self.v_sum, scratch
        m_sum *= self.b1                         # m_sum <- b1 m_sum + g
        m_sum += g
        np.multiply(g, g, out=tmp)               # v_sum <- b2 v_sum + g^2 (g is not read after this)
        v_sum *= self.b2
        v_sum += tmp
        # With bc1 = 1 - b1^t and bc2 = 1 - b2^t, Adam's step is
        #     lr * (m / bc1) / (sqrt(v / bc2) + eps),  m = (1 - b1) m_sum,  v = (1 - b2) v_sum.
        # Multiplying the top and the bottom by k = sqrt(bc2 / (1 - b2)) leaves sqrt(v_sum) alone
        # at the bottom, and every other factor in two scalars:
        #     step * m_sum / (sqrt(v_sum) + eps * k),  with step = lr * (1 - b1) * k / bc1.
        bc1, bc2 = 1 - self.b1 ** self.t, 1 - self.b2 ** self.t
        k = math.sqrt(bc2 / (1 - self.b2))
        np.sqrt(v_sum, out=tmp)
        tmp += self.eps * k
        np.divide(m_sum, tmp, out=tmp)
        tmp *= self.lr * (1 - self.b1) * k / bc1
        self.flat -= tmp

    def moments(self) -> tuple[Array, Array]:
        """Copies of Adam's m and v, the running means of the gradient and of its square."""
        return (1 - self.b1) * self.m_sum, (1 - self.b2) * self.v_sum

    def state_dict(self) -> dict[str, Array]:
        return {"t": np.array(self.t, dtype=np.int64), "m_sum": self.m_sum.copy(), "v_sum": self.v_sum.copy()}

    def load_state_dict(self, state: dict[str, Array]) -> None:
        # Checkpoints written before npvae kept decaying sums hold Adam's m and v themselves:
        # convert them (exact up to one rounding), so that those runs can still be resumed.
        if set(state) == {"t", "m", "v"}:
            state = {"t": state["t"], "m_sum": np.asarray(state["m"]) / (1 - self.b1),
                     "v_sum": np.asarray(state["v"]) / (1 - self.b2)}
        super().load_state_dict(state)

    def _check_state(self, key: str, value: Array) -> None:
        if key == "t" and not (value == int(value) and value >= 0):
            raise ValueError(f"optimizer state 't' (the step count) must be a whole number >= 0, got {value}")
        if key == "v_sum" and (value < 0).any():
            raise ValueError("optimizer state 'v_sum' (a sum of squares) must be >= 0")

    def _set_state(self, key: str, value: Array) -> None:
        if key == "t":
            self.t = int(value)
        else:
            super()._set_state(key, value)


OPTIMIZERS = {"adam": Adam, "sgd": SGD}


def make_optimizer(name: str, params: dict[str, Array], lr: float) -> Optimizer:
    """Build an optimizer by name ("adam" or "sgd") with its default settings and the given lr."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[name](params, lr=lr)
