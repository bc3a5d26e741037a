"""The training loop: minibatches, an optimizer, a KL warm-up, and a per-epoch history.

`fit` is the one training loop: `npvae train`, the demos and `npvae bench` all call it.

    history = fit(model, optimizer, train_images, epochs=10, batch_size=128, rng=rng,
                  eval_images=test_images)

Images may be uint8 (0..255, converted to [0, 1] one batch at a time, so the whole training set
stays four times smaller in memory) or floating point in [0, 1]. By default (fast=True) the
steps run on the fast twin of the model (npvae.fast), which computes the textbook path's
gradients bit for bit; fast=False runs the textbook path itself.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Callable, TextIO

import numpy as np

from . import fast as fast_twin
from .data import binarize, minibatch_indices
from .layers import as_generator
from .models import VAE, Autoencoder
from .optim import Optimizer
from .progress import Progress

DEFAULT_SEED = 0    # fit's shuffling and binarization draws when no rng is given

Array = np.ndarray
Model = Autoencoder | VAE


class TrainingDiverged(RuntimeError):
    """The loss (or, at the end of an epoch, a parameter or the test loss) became NaN or infinite."""

    def __init__(self, epoch: int, batch: int | None, loss: float, what: str = "the loss") -> None:
        self.epoch, self.batch, self.loss = epoch, batch, loss
        where = f"at epoch {epoch}, batch {batch}" if batch is not None else f"in epoch {epoch}"
        super().__init__(
            f"{what} became {loss} {where}. Training stopped; the checkpoint "
            f"of the last complete epoch is kept. Try a lower learning rate (--lr) or gradient-norm "
            f"clipping (--clip 5), or a KL warm-up (--warmup 5).")


def beta_at(epoch: int, beta: float, warmup: int) -> float:
    """The KL weight for a 1-based epoch: a linear warm-up from 0 over the first `warmup` epochs.

    Epoch e of a K-epoch warm-up uses beta * (e - 1) / K, so the first epoch trains the
    reconstruction alone, and every epoch after the warm-up uses the full beta.
    """
    if warmup <= 0:
        return beta
    return beta * min(1.0, (epoch - 1) / warmup)


def iwae_lr(epoch: int, lr: float = 1e-3) -> float:
    """The learning-rate schedule of Burda et al. (2015): stage i = 0..7 lasts 3^i epochs at
    lr * 10^(-i/7), 3280 epochs in all. Epochs past the last stage stay at the last rate."""
    stage, end = 0, 1
    while epoch > end and stage < 7:
        stage += 1
        end += 3 ** stage
    return lr * 10 ** (-stage / 7)


def to_batch(images: Array, idx: Array, dtype: np.dtype, out: Array | None = None) -> Array:
    """images[idx] as `dtype` in [0, 1]: uint8 pixels are multiplied by 1/255 in `dtype` (within
    one rounding of x / 255). Returns (len(idx), D).

    With `out` (a preallocated (B, D) buffer of `dtype`, B >= len(idx)) the batch is written into it.
    """
    dtype = np.dtype(dtype)
    if out is not None and out.dtype != dtype:
        raise ValueError(f"out has dtype {out.dtype}, the batch is asked for as {dtype}")
    rows = images[idx]
    if out is None:
        out = np.empty(rows.shape, dtype=dtype)
    out = out[:len(idx)]
    if rows.dtype == np.uint8:
        np.multiply(rows, dtype.type(1 / 255), out=out)
    else:
        out[...] = rows
    return out


def check_settings(*, epochs: int, batch_size: int, warmup: int = 0, clip: float | None = None,
                   beta: float | None = None) -> None:
    """Raise ValueError for settings that cannot train: fit calls it, and so does `npvae train`
    before it writes anything. A clipping norm <= 0 would freeze (0) or reverse (< 0) every step."""
    if beta is not None and not (beta >= 0 and math.isfinite(beta)):
        raise ValueError(f"beta must be a finite number >= 0, got {beta}")
    for name, value, least in (("epochs", epochs, 0), ("batch_size", batch_size, 1), ("warmup", warmup, 0)):
        if value < least:
            raise ValueError(f"{name} must be >= {least}, got {value}")
    if clip is not None and not (clip > 0 and math.isfinite(clip)):
        raise ValueError(f"clip must be a finite number > 0 (or None: no clipping), got {clip}")


def clip_grad_norm(grads: dict[str, Array] | Array, max_norm: float) -> float:
    """Scale the gradients in place so that their global L2 norm, sqrt(sum of every g^2), is at
    most max_norm. grads: a dict of arrays, or one array. Returns the norm before clipping.

    The squares are summed in float64: in float32 they overflow for gradients above about 1e19.
    """
    arrays = list(grads.values()) if isinstance(grads, dict) else [grads]
    norm = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in arrays))
    if norm > max_norm:
        for g in arrays:
            g *= max_norm / norm
    return norm


class TextbookStep:
    """One step of `fit` on the textbook path: loss and gradients, clipping, the optimizer's step."""

    def __init__(self, model, optimizer: Optimizer, clip: float | None) -> None:
        if isinstance(optimizer, fast_twin.FusedOptimizer):
            raise ValueError("fit(fast=False) trains the textbook path, which takes a textbook optimizer "
                             "(npvae.Adam or npvae.SGD), not a fused one from npvae.fast")
        self.model, self.optimizer, self.clip = model, optimizer, clip

    def loss_and_grads(self, x: Array, y: Array | None = None) -> dict[str, float]:
        """y: the batch's labels, for a conditional model (npvae.cvae.CVAE); None for the others."""
        self.report, self.grads = self.model.loss_and_grads(x) if y is None else self.model.loss_and_grads(x, y)
        return self.report

    def update(self) -> None:
        if self.clip is not None:
            clip_grad_norm(self.grads, self.clip)
        self.optimizer.step(self.grads)

    @property
    def lr(self) -> float:
        return self.optimizer.lr

    @lr.setter
    def lr(self, value: float) -> None:
        self.optimizer.lr = value

    def finish(self) -> None:
        pass


def evaluate_loss(model: Model, images: Array, *, batch_size: int = 1000,
                  rng: np.random.Generator | None = None, binarization: str = "none",
                  labels: Array | None = None) -> dict[str, float]:
    """Per-image loss and its parts on a data set, one draw of eps per image (for a VAE or a CVAE,
    which takes the images' labels (N,)).

    The draws (of eps, and of the pixels under dynamic binarization) come from `rng` (default: a
    fixed seed), never from the model's own generator, so evaluating does not change the course
    of training.
    """
    rng = as_generator(rng if rng is not None else 0)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = images.shape[0]
    if n == 0:
        raise ValueError("evaluate_loss needs at least one image, got none")
    totals: dict[str, float] = {}
    for start in range(0, n, batch_size):
        x = to_batch(images, np.arange(start, min(n, start + batch_size)), model.dtype)
        if binarization != "none":
            x = binarize(x, binarization, rng=rng)
        if labels is not None:
            eps = rng.standard_normal((x.shape[0], model.latent_dim), dtype=model.dtype)
            report = model.loss(x, labels[start:start + x.shape[0]], eps=eps)
        elif isinstance(model, VAE):
            eps = rng.standard_normal((x.shape[0], model.latent_dim), dtype=model.dtype)
            report = model.loss(x, eps=eps)
        else:
            report = model.loss(x)
        for k, v in report.items():
            totals[k] = totals.get(k, 0.0) + v * x.shape[0]
    return {k: v / n for k, v in totals.items()}


def format_epoch(row: dict) -> str:
    """One line per epoch: train and test loss with their parts, beta and the time."""
    def part(prefix: str) -> str:
        if f"{prefix}_kl" in row:
            return (f"{prefix} {row[prefix + '_loss']:8.3f} (recon {row[prefix + '_recon']:8.3f}"
                    f" + kl {row[prefix + '_kl']:6.3f})")
        return f"{prefix} {row[prefix + '_loss']:8.3f}"
    text = f"epoch {row['epoch']:3d}  {part('train')}"
    if "test_loss" in row:
        text += f"  {part('test')}"
    if "beta" in row:
        text += f"  beta {row['beta']:.2f}"
    return text + f"  {row['seconds']:.1f} s"


def fit(model: Model, optimizer: Optimizer, train_images: Array, *, epochs: int, batch_size: int = 128,
        rng: np.random.Generator | int | None = None, eval_images: Array | None = None,
        beta: float | None = None, warmup: int = 0, clip: float | None = None, binarization: str = "none",
        lr_schedule: Callable[[int], float] | None = None,
        history: list[dict] | None = None, eval_seed: int = 0,
        on_epoch_end: Callable[[list[dict]], None] | None = None,
        progress: Progress | None = None, log: TextIO | None = None, fast: bool = True,
        labels: Array | None = None, eval_labels: Array | None = None) -> list[dict]:
    """Train `model` with `optimizer` until `epochs` epochs are complete; return the history.

    train_images: (N, D), uint8 or float in [0, 1]; eval_images: (M, D), evaluated after every
    epoch (with a draw of eps seeded from `eval_seed` and the epoch, so a resumed run evaluates
    exactly like an uninterrupted one). Both are checked before the first step.
    rng: the generator (or int seed) for shuffling and dynamic binarization; None means the
    seed DEFAULT_SEED (0). The VAE's eps comes from the model's own generator.
    lr_schedule(epoch) gives the learning rate of each 1-based epoch (default: the optimizer's).
    history: the rows of epochs already done (to resume); training continues from epoch
    len(history) + 1. on_epoch_end(history) runs after each epoch (to checkpoint); it never
    sees an epoch whose losses or parameters are not finite: training stops with
    TrainingDiverged before it.
    fast: run the steps on the fast twin (npvae.fast; the same gradients, bit for bit) where the
    model has one, else the textbook path. With a textbook optimizer the twin works on a fused
    copy of its state and writes it back after every epoch (m of Adam within one rounding).

    labels: (N,) integer labels of train_images, for a conditional model (npvae.cvae.CVAE), which
    needs them (eval_labels: those of eval_images); they are shuffled with the images and each
    step calls model.loss_and_grads(x, y). Conditional models train on the textbook path.

    Each history row holds epoch, train_loss, train_recon, [train_kl], test_loss, test_recon,
    [test_kl], [beta], lr, seconds: per-image means; the train figures are averaged over the
    epoch's batches (while the model improves), the test figures use the end-of-epoch model.
    """
    check_settings(epochs=epochs, batch_size=batch_size, warmup=warmup, clip=clip, beta=beta)
    model.check_data(train_images, "train_images")       # once, so the steps need not check each batch
    if eval_images is not None:
        model.check_data(eval_images, "eval_images")
    conditional = hasattr(model, "check_y")
    if conditional != (labels is not None) or (conditional and eval_images is not None) != (eval_labels is not None):
        raise ValueError(f"labels= (and eval_labels= with eval_images) are for a conditional model, and a "
                         f"conditional model needs them; got a {type(model).__name__} with labels "
                         f"{'given' if labels is not None else 'not given'}")
    if conditional:
        labels = model.check_y(labels, len(train_images), "labels")
        if eval_images is not None:
            eval_labels = model.check_y(eval_labels, len(eval_images), "eval_labels")
    rng = as_generator(DEFAULT_SEED if rng is None else rng)
    step = fast_twin.training_step(model, optimizer, clip) if fast else None
    if step is None:
        step = TextbookStep(model, optimizer, clip)
    history = list(history or [])
    is_vae = isinstance(model, VAE) or conditional
    full_beta = model.beta if (is_vae and beta is None) else beta
    log = log if log is not None else sys.stdout
    n = train_images.shape[0]
    batch = np.empty((min(batch_size, n), model.input_dim), dtype=model.dtype)   # reused every step
    n_batches = math.ceil(n / batch_size)

    try:
        for epoch in range(len(history) + 1, epochs + 1):
            start = time.perf_counter()
            if is_vae:
                model.beta = beta_at(epoch, full_beta, warmup)
            if lr_schedule is not None:
                step.lr = lr_schedule(epoch)
            totals, seen = {"loss": 0.0, "recon": 0.0, "kl": 0.0}, 0
            for b, idx in enumerate(minibatch_indices(n, batch_size, rng), start=1):
                x = to_batch(train_images, idx, model.dtype, out=batch)
                if binarization != "none":
                    x = binarize(x, binarization, rng=rng)
                report = step.loss_and_grads(x) if labels is None else step.loss_and_grads(x, labels[idx])
                if not math.isfinite(report["loss"]):
                    raise TrainingDiverged(epoch, b, report["loss"])
                step.update()
                for k, v in report.items():
                    totals[k] += v * len(idx)
                seen += len(idx)
                if progress is not None:
                    progress.batch(epoch, epochs, b, n_batches, totals["loss"] / seen,
                                   time.perf_counter() - start)
            if progress is not None:
                progress.epoch_end()
            step.finish()

            row: dict = {"epoch": epoch}
            parts = ("loss", "recon", "kl") if is_vae else ("loss", "recon")
            row.update({f"train_{k}": totals[k] / n for k in parts})
            if eval_images is not None:
                test = evaluate_loss(model, eval_images, rng=np.random.default_rng([eval_seed, epoch]),
                                     binarization=binarization, labels=eval_labels)
                row.update({f"test_{k}": v for k, v in test.items()})
            _check_finite_epoch(epoch, row, model)
            if is_vae:
                row["beta"] = model.beta
            row["lr"] = step.lr
            row["seconds"] = time.perf_counter() - start
            history.append(row)
            log.write(format_epoch(row) + "\n")
            log.flush()
            if on_epoch_end is not None:
                on_epoch_end(history)
    finally:
        if is_vae:       # the warm-up changes model.beta epoch by epoch: give the full beta back,
            model.beta = full_beta      # also after a divergence or Ctrl-C, so a later fit starts right
    return history


def _check_finite_epoch(epoch: int, row: dict, model: Model) -> None:
    """Raise TrainingDiverged unless the epoch's losses and the model's parameters are all finite:
    a huge step can leave inf or NaN parameters (or a NaN test loss) behind a finite last batch."""
    for key in ("train_loss", "test_loss"):
        if key in row and not math.isfinite(row[key]):
            raise TrainingDiverged(epoch, None, row[key], what=f"the {key.replace('_', ' ')}")
    for name, p in model.params.items():
        if not np.isfinite(p).all():
            raise TrainingDiverged(epoch, None, float(p[~np.isfinite(p)].flat[0]), what=f"parameter {name}")
