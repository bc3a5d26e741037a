"""A run's settings: their defaults and presets, the command line's types for them, the checks a saved
run's settings must pass, the folder name they give, and the model they describe.

A run's settings are one flat dict (DEFAULTS lists every key); `npvae train` stores it in the
run's checkpoint and config.json.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Callable

import numpy as np

from .checkpoint import Checkpoint, CheckpointError
from .cvae import CVAE
from .models import build_model

# The study note's model (the note npvae started from: a VAE with the L2 loss plus KL): 784-400-20,
# ReLU, Adam 1e-3, batch 128, 10 epochs, on the bundled MNIST.
DEFAULTS: dict = {
    "model": "vae", "likelihood": "l2", "hidden": [400], "latent": 20, "activation": "relu",
    "beta": 1.0, "warmup": 0, "epochs": 10, "batch_size": 128, "lr": 1e-3, "optimizer": "adam",
    "clip": None, "seed": 0, "dtype": "float32", "data_dir": None, "binarize": "none",
    "train_size": None, "test_size": None, "schedule": "constant", "adam_eps": 1e-8, "preset": None,
    "sigma2": "learned", "decoder_output": "sigmoid",     # likelihood "gaussian" only
    "threads": None,    # the BLAS threads it trained with (they change the matrix products' rounding)
}

# Named settings. "iwae-mnist" is the one-stochastic-layer VAE of Burda, Grosse and
# Salakhutdinov, "Importance Weighted Autoencoders" (2015): 784-200-200-50 with tanh, Bernoulli
# likelihood on dynamically binarized MNIST, Adam (eps 1e-4), batch 20, and their schedule of
# 3280 epochs (`--epochs 3280`); by default only its first four stages, 1 + 3 + 9 + 27 = 40 epochs.
PRESETS: dict[str, dict] = {
    "iwae-mnist": {"model": "vae", "likelihood": "bernoulli", "hidden": [200, 200], "latent": 50,
                   "activation": "tanh", "binarize": "dynamic", "batch_size": 20, "lr": 1e-3,
                   "schedule": "iwae", "adam_eps": 1e-4, "epochs": 40},
}
# Settings a resumed run may change: the epoch to train up to, and the remedies for a diverging
# run (a lower learning rate, gradient clipping). Every other setting must match the run's.
CHANGEABLE_ON_RESUME = ("epochs", "lr", "clip", "threads")
# The settings that take one of a few names: the command line's choices, and what a checkpoint may hold.
CHOICES: dict[str, tuple] = {
    "model": ("vae", "ae", "cvae"), "likelihood": ("l2", "bernoulli", "gaussian"),
    "decoder_output": ("sigmoid", "linear"),
    "activation": ("relu", "leaky_relu", "tanh", "sigmoid", "softplus"), "optimizer": ("adam", "sgd"),
    "dtype": ("float32", "float64"), "binarize": ("none", "static", "dynamic"), "schedule": ("constant", "iwae"),
    "preset": (None, *PRESETS),
}


def positive_int(text: str) -> int:
    """An argparse type for the command line's counts (epochs, sizes, samples)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def nonnegative_int(text: str) -> int:
    """An argparse type for counts that may be 0 (the warm-up's epochs)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    """An argparse type for a finite number > 0 (learning rate, clipping norm)."""
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def nonnegative_float(text: str) -> float:
    """An argparse type for a finite number >= 0 (the KL weight beta)."""
    value = float(text)
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _whole(value, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _finite(value, least: float, strict: bool) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and (value > least if strict else value >= least))


# What each numeric or free-form setting of a run must be: (description, test).
_SETTING_RULES: dict[str, tuple[str, Callable[[object], bool]]] = {
    "hidden": ("a list of integers >= 1", lambda v: isinstance(v, list) and all(_whole(h, 1) for h in v)),
    "latent": ("an integer >= 1", lambda v: _whole(v, 1)),
    "beta": ("a finite number >= 0", lambda v: _finite(v, 0, strict=False)),
    "warmup": ("an integer >= 0", lambda v: _whole(v, 0)),
    "epochs": ("an integer >= 0", lambda v: _whole(v, 0)),
    "batch_size": ("an integer >= 1", lambda v: _whole(v, 1)),
    "lr": ("a finite number > 0", lambda v: _finite(v, 0, strict=True)),
    "clip": ("null or a finite number > 0", lambda v: v is None or _finite(v, 0, strict=True)),
    "seed": ("an integer >= 0", lambda v: _whole(v, 0)),
    "data_dir": ("null or a folder name", lambda v: v is None or isinstance(v, str)),
    "train_size": ("null or an integer >= 1", lambda v: v is None or _whole(v, 1)),
    "test_size": ("null or an integer >= 1", lambda v: v is None or _whole(v, 1)),
    "adam_eps": ("a finite number > 0", lambda v: _finite(v, 0, strict=True)),
    "threads": ("null or an integer >= 1", lambda v: v is None or _whole(v, 1)),
    "sigma2": ("'learned', 'optimal' or a finite number > 0",
               lambda v: v in ("learned", "optimal") or _finite(v, 0, strict=True)),
}


def check_run_metadata(path: Path, ckpt: Checkpoint) -> None:
    """Refuse a checkpoint whose config, generator states or history a run cannot use (say, edited
    by hand): CheckpointError naming the file, the member and the entry."""
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{path}: member 'meta': {what}; the file was edited or damaged, so the run "
                               f"cannot be used as it is")
    cfg = {**DEFAULTS, **ckpt.config}
    for key, choices in CHOICES.items():
        if cfg[key] not in choices:
            raise bad(f"config {key!r} must be one of {list(choices)}, got {cfg[key]!r}")
    for key, (what, ok) in _SETTING_RULES.items():
        if not ok(cfg[key]):
            raise bad(f"config {key!r} must be {what}, got {cfg[key]!r}")
    for name in ("model", "data"):
        try:
            np.random.PCG64().state = ckpt.rng_state[name]
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise bad(f"rng_state[{name!r}] is not the state of a numpy PCG64 generator "
                      f"({type(exc).__name__}: {exc})") from None
    if len(ckpt.history) != ckpt.epoch:
        raise bad(f"history has {len(ckpt.history)} rows but epoch is {ckpt.epoch}")
    for i, row in enumerate(ckpt.history):
        if not isinstance(row, dict) or row.get("epoch") != i + 1:
            raise bad(f"history row {i} must be an object with \"epoch\": {i + 1}, got {row!r}")
        odd = [k for k, v in row.items() if not _finite(v, -math.inf, strict=True)]
        if odd:
            raise bad(f"history row {i} ({odd[0]!r}) must hold finite numbers only, got {row[odd[0]]!r}")


# The settings a run's folder name shows when they differ from the defaults (or the preset's).
_NAMED_SETTINGS = ("activation", "binarize", "warmup", "seed", "dtype", "lr", "batch_size", "optimizer",
                   "train_size", "clip")


def run_name(cfg: dict) -> str:
    """A folder name that tells the settings apart, e.g. "vae-l2-h400-z20", or for a preset its
    name and what differs from it, e.g. "iwae-mnist-h16-trainsize200"."""
    def hidden(h):
        return "h" + "x".join(map(str, h))
    if cfg.get("preset"):
        name, base = cfg["preset"], {**DEFAULTS, **PRESETS[cfg["preset"]]}
        parts = [("model", str), ("likelihood", str), ("hidden", hidden), ("latent", lambda z: f"z{z}"),
                 ("beta", lambda b: f"beta{b:g}")]
        for key, show in parts:
            if cfg[key] != base[key]:
                name += "-" + show(cfg[key])
    else:
        name, base = f"{cfg['model']}-{cfg['likelihood']}-{hidden(cfg['hidden'])}-z{cfg['latent']}", DEFAULTS
        if cfg["model"] in ("vae", "cvae") and cfg["beta"] != 1:
            name += f"-beta{cfg['beta']:g}"
    if cfg.get("likelihood") == "gaussian":       # its noise level and output, e.g. "-sigma2-optimal-linear"
        s2 = cfg["sigma2"]
        name += f"-sigma2-{s2}" if isinstance(s2, str) else f"-sigma2-{s2:g}"
        name += "-linear" if cfg["decoder_output"] == "linear" else ""
    for key in _NAMED_SETTINGS:
        if cfg[key] != base[key]:
            name += f"-{key.replace('_', '')}{cfg[key]}"
    if cfg["data_dir"]:
        name += "-" + Path(cfg["data_dir"]).name
    return name


def model_config(cfg: dict) -> dict:
    """The arguments of `build_model` for a run's settings."""
    return {"model": cfg["model"], "input_dim": 784, "hidden_dims": list(cfg["hidden"]),
            "latent_dim": cfg["latent"], "likelihood": cfg["likelihood"], "beta": cfg["beta"],
            "activation": cfg["activation"], "dtype": cfg["dtype"], "sigma2": cfg["sigma2"],
            "decoder_output": cfg["decoder_output"], **({"num_classes": 10} if cfg["model"] == "cvae" else {})}


def build_run_model(config: dict, rng=None):
    """build_model, and for a conditional run (config["model"] == "cvae") the CVAE."""
    return CVAE.from_config(config, rng) if config.get("model") == "cvae" else build_model(config, rng)

