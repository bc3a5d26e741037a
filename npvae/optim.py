"""Optimizers that update a model's parameters in place: SGD with momentum, and Adam.

Both take the model's `params` dict (name -> array) and, at each step, a `grads` dict with the
same keys. Each keeps its state (`state_dict()` / `load_state_dict()`) so that a checkpoint can
save it and a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import numpy as np

from . import checks
from .checks import load_checked_state, positive as _positive      # (npvae.fast's optimizers use them too)

Array = np.ndarray


class Optimizer:
    """Base class: the parameters and the learning rate. Each optimizer adds `step(grads)` (update
    every parameter in place from the gradient with the same name), `state_dict()` and `_set_state`."""

    def __init__(self, params: dict[str, Array], lr: float) -> None:
        self.params = params
        self.lr = _positive("learning rate", lr)

    def load_state_dict(self, state: dict[str, Array]) -> None:
        """Restore a state saved by `state_dict()`. Every entry is checked (names, shapes, finite
        real numbers) before any is set: a refused state leaves the optimizer as it was."""
        load_checked_state(self, state)


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
        self.velocity = {k: np.zeros_like(p) for k, p in params.items()}

    def step(self, grads: dict[str, Array]) -> None:
        checks.grads(grads, self.params)
        for k, p in self.params.items():
            self.velocity[k] = self.momentum * self.velocity[k] + grads[k]
            p -= self.lr * self.velocity[k]

    def state_dict(self) -> dict[str, Array]:
        return {f"velocity.{k}": v.copy() for k, v in self.velocity.items()}

    def _set_state(self, key: str, value: Array) -> None:
        name = key.removeprefix("velocity.")
        self.velocity[name] = value.astype(self.params[name].dtype)


class Adam(Optimizer):
    """Adam (Kingma and Ba, 2015), as in PyTorch. At step t, for each parameter p and its gradient g:

        m <- b1 m + (1 - b1) g                  running mean of the gradient
        v <- b2 v + (1 - b2) g^2                running mean of its square
        m_hat = m / (1 - b1^t)                  bias corrections: m and v start at 0
        v_hat = v / (1 - b2^t)
        p <- p - lr * m_hat / (sqrt(v_hat) + eps)

    Each parameter moves by about lr per step, in the direction of the gradient's sign, less
    where the gradient's sign keeps changing (m small against sqrt(v)).
    """

    def __init__(self, params: dict[str, Array], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        super().__init__(params, lr)
        b1, b2 = betas
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        self.b1, self.b2, self.eps = float(b1), float(b2), _positive("eps", eps)
        self.t = 0
        self.m = {k: np.zeros_like(p) for k, p in params.items()}
        self.v = {k: np.zeros_like(p) for k, p in params.items()}

    def step(self, grads: dict[str, Array]) -> None:
        checks.grads(grads, self.params)
        self.t += 1
        b1, b2 = self.b1, self.b2
        for k, p in self.params.items():
            g = grads[k]
            self.m[k] = b1 * self.m[k] + (1 - b1) * g
            self.v[k] = b2 * self.v[k] + (1 - b2) * g ** 2
            m_hat = self.m[k] / (1 - b1 ** self.t)
            v_hat = self.v[k] / (1 - b2 ** self.t)
            p -= self.lr * m_hat / (np.sqrt(v_hat) + self.eps)

    def state_dict(self) -> dict[str, Array]:
        return {"t": np.array(self.t, dtype=np.int64),
                **{f"m.{k}": m.copy() for k, m in self.m.items()},
                **{f"v.{k}": v.copy() for k, v in self.v.items()}}

    def _set_state(self, key: str, value: Array) -> None:
        if key == "t":
            self.t = int(value)
            return
        moment, name = key.split(".", 1)
        getattr(self, moment)[name] = value.astype(self.params[name].dtype)


OPTIMIZERS = {"adam": Adam, "sgd": SGD}


def make_optimizer(name: str, params: dict[str, Array], lr: float, **settings) -> Optimizer:
    """Build an optimizer by name ("adam" or "sgd") with the given lr and other settings."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[name](params, lr=lr, **settings)
