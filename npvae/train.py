"""The training loop: minibatches, an optimizer, a KL warm-up, and a per-epoch history.

`fit` is the one training path: `npvae train`, the demos and `npvae bench` all call it.

    history = fit(model, optimizer, train_images, epochs=10, batch_size=128, rng=rng,
                  eval_images=test_images)

Images may be uint8 (0..255, converted to [0, 1] one batch at a time, so the whole training set
stays four times smaller in memory) or floating point in [0, 1].
"""

from __future__ import annotations

import math
import sys
import time
from typing import Callable, TextIO

import numpy as np

from .data import binarize, minibatch_indices
from .layers import as_generator
from .models import VAE, Autoencoder
from .optim import Optimizer

Array = np.ndarray
Model = Autoencoder | VAE


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""

    def __init__(self, epoch: int, batch: int, loss: float) -> None:
        self.epoch, self.batch, self.loss = epoch, batch, loss
        super().__init__(
            f"the loss became {loss} at epoch {epoch}, batch {batch}. Training stopped; the checkpoint "
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


def clip_grad_norm(flat_grads: Array, max_norm: float) -> float:
    """Scale the gradient in place so its global L2 norm is at most max_norm. Returns the norm before."""
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


def evaluate_loss(model: Model, images: Array, *, batch_size: int = 1000,
                  rng: np.random.Generator | None = None, binarization: str = "none") -> dict[str, float]:
    """Per-image loss and its parts on a data set, one draw of eps per image (for a VAE).

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
        if isinstance(model, VAE):
            eps = rng.standard_normal((x.shape[0], model.latent_dim), dtype=model.dtype)
            report = model.loss(x, eps=eps)
        else:
            report = model.loss(x)
        for k, v in report.items():
            totals[k] = totals.get(k, 0.0) + v * x.shape[0]
    return {k: v / n for k, v in totals.items()}


class Progress:
    """Shows progress within an epoch: a live bar on a terminal, a few plain lines otherwise."""

    def __init__(self, stream: TextIO | None = None, live: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.live = self.stream.isatty() if live is None else live

    def batch(self, epoch: int, epochs: int, done: int, total: int, loss: float, elapsed: float) -> None:
        left = elapsed / done * (total - done)
        if self.live:
            width = 30
            filled = int(width * done / total)
            bar = "#" * filled + "." * (width - filled)
            self.stream.write(f"\repoch {epoch}/{epochs} [{bar}] {done}/{total} batches  loss {loss:8.3f}  "
                              f"{elapsed:5.1f} s, ~{left:4.0f} s left ")
            self.stream.flush()
        elif done * 4 // total > (done - 1) * 4 // total:      # a line at every quarter, the last at the end
            self.stream.write(f"  epoch {epoch}/{epochs}: {done}/{total} batches, loss {loss:.3f}, "
                              f"{elapsed:.1f} s, ~{left:.0f} s left\n")
            self.stream.flush()

    def epoch_end(self) -> None:
        if self.live:
            self.stream.write("\r\033[K")   # clear the bar: the epoch line replaces it
            self.stream.flush()


def progress_stream(progress: bool | TextIO | None) -> TextIO | None:
    """progress=True: stderr; False/None: silent; a stream: that stream."""
    if progress is True:
        return sys.stderr
    if not progress:
        return None
    return progress


class Ticker:
    """Writes a line at every ~10% of `total` units of work, with the elapsed time and an ETA."""

    def __init__(self, what: str, total: int, stream: TextIO | None, unit: str = "images") -> None:
        self.what, self.total, self.stream, self.unit = what, max(1, total), stream, unit
        self.start = time.perf_counter()
        self.next_tenth = 1

    def update(self, done: int, extra: str = "") -> None:
        if self.stream is None or done * 10 < self.next_tenth * self.total:
            return
        while done * 10 >= self.next_tenth * self.total:
            self.next_tenth += 1
        elapsed = time.perf_counter() - self.start
        left = elapsed / max(done, 1) * (self.total - done)
        self.stream.write(f"  {self.what}: {done:,}/{self.total:,} {self.unit} ({100 * done / self.total:3.0f}%), "
                          f"{elapsed:.1f} s, ~{left:.0f} s left{extra}\n")
        self.stream.flush()


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
        rng: np.random.Generator, eval_images: Array | None = None, beta: float | None = None,
        warmup: int = 0, clip: float | None = None, binarization: str = "none",
        lr_schedule: Callable[[int], float] | None = None,
        history: list[dict] | None = None, eval_seed: int = 0,
        on_epoch_end: Callable[[list[dict]], None] | None = None,
        progress: Progress | None = None, log: TextIO | None = None) -> list[dict]:
    """Train `model` with `optimizer` until `epochs` epochs are complete; return the history.

    train_images: (N, D), uint8 or float in [0, 1], checked once before the first step (so a
    bad image fails at once, not at its batch; the steps then skip the per-batch checks of
    `loss_and_grads`). eval_images: (M, D), evaluated after every
    epoch (with a draw of eps seeded from `eval_seed` and the epoch, so a resumed run evaluates
    exactly like an uninterrupted one). rng: the generator for shuffling and dynamic
    binarization. lr_schedule(epoch) gives the learning rate of each 1-based epoch (default: the
    optimizer's). history: the rows of epochs already done (to resume); training continues
    from epoch len(history) + 1. on_epoch_end(history) runs after each epoch (to checkpoint).

    Each history row holds epoch, train_loss, train_recon, [train_kl], test_loss, test_recon,
    [test_kl], [beta], lr, seconds: per-image means; the train figures are averaged over the
    epoch's batches, weighted by batch size.
    """
    check_settings(epochs=epochs, batch_size=batch_size, warmup=warmup, clip=clip, beta=beta)
    model.check_data(train_images, "train_images")       # once, so the steps need not check each batch
    history = list(history or [])
    is_vae = isinstance(model, VAE)
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
                optimizer.lr = lr_schedule(epoch)
            totals, seen = {"loss": 0.0, "recon": 0.0, "kl": 0.0}, 0
            for b, idx in enumerate(minibatch_indices(n, batch_size, rng), start=1):
                x = to_batch(train_images, idx, model.dtype, out=batch)
                if binarization != "none":
                    x = binarize(x, binarization, rng=rng)
                report, _ = model.loss_and_grads(x, check=False)
                if not math.isfinite(report["loss"]):
                    raise TrainingDiverged(epoch, b, report["loss"])
                if clip is not None:
                    clip_grad_norm(model.flat_grads, clip)
                optimizer.step(model.grads, overwrite_grads=True)    # nothing reads the gradients after the step
                for k, v in report.items():
                    totals[k] += v * len(idx)
                seen += len(idx)
                if progress is not None:
                    progress.batch(epoch, epochs, b, n_batches, totals["loss"] / seen,
                                   time.perf_counter() - start)
            if progress is not None:
                progress.epoch_end()

            row: dict = {"epoch": epoch}
            parts = ("loss", "recon", "kl") if is_vae else ("loss", "recon")
            row.update({f"train_{k}": totals[k] / n for k in parts})
            if eval_images is not None:
                test = evaluate_loss(model, eval_images, rng=np.random.default_rng([eval_seed, epoch]),
                                     binarization=binarization)
                row.update({f"test_{k}": v for k, v in test.items()})
            if is_vae:
                row["beta"] = model.beta
            row["lr"] = optimizer.lr
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
