"""The digit classifier of the evaluation: an MLP built from npvae's own layers, trained once.

It answers "does this image look like a digit, and which?" for reconstructions and samples
(see `npvae.evaluate.sample_quality`). The recipe, 784-512-512-10 with ReLU, Adam 1e-3 decayed by
0.7 per epoch, batch 128, 6 epochs from seed 0, reaches 98.4% test accuracy on MNIST. It is
trained the first time it is needed (about a minute on 2 cores) and cached as a checkpoint file in
<cache folder>/classifier/ (see `npvae.data.cache_root`); a cached file that is corrupt or made
by another recipe is trained again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from . import losses
from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from .data import as_float, cache_root, in_batches, load_mnist_uint8
from .fast import FusedAdam, SequentialTwin
from .layers import Sequential, mlp
from .progress import Ticker, progress_stream

Array = np.ndarray


@dataclass(frozen=True)
class ClassifierSpec:
    """How the evaluation's digit classifier is built and trained (all of it is the cache key)."""

    sizes: tuple[int, ...] = (784, 512, 512, 10)
    activation: str = "relu"
    epochs: int = 6
    batch_size: int = 128
    lr: float = 1e-3
    lr_decay: float = 0.7                  # the learning rate of epoch e (from 0) is lr * lr_decay**e
    seed: int = 0
    train_size: int | None = None          # None: all 60,000 training images
    # Raised whenever npvae's training numerics change (e.g. Adam's rounding): a classifier
    # cached by an older npvae is then retrained, so every machine evaluates with the classifier
    # today's code trains (2: Adam with decaying sums; 3: the fused Adam rounds as the textbook's).
    revision: int = 3

    def key(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def file_name(self) -> str:
        return f"mnist-mlp-{'-'.join(map(str, self.sizes))}-{self.activation}-{self.key()}.npz"


DEFAULT_CLASSIFIER = ClassifierSpec()
CLASSIFIER_FORMAT, CLASSIFIER_VERSION = "npvae-classifier", 1


class Classifier:
    """An MLP digit classifier: logits = net(x), x: (N, 784) pixels in [0, 1]."""

    def __init__(self, net: Sequential, spec: ClassifierSpec, info: dict | None = None) -> None:
        self.net, self.spec = net, spec
        self.info = dict(info or {})   # test_accuracy, train_seconds, source ("trained" / "cache"), path

    @property
    def test_accuracy(self) -> float | None:
        return self.info.get("test_accuracy")

    def logits(self, x: Array, batch_size: int = 2000) -> Array:
        x = as_float(x)
        if x.ndim != 2 or x.shape[1] != self.spec.sizes[0]:
            raise ValueError(f"x must have shape (N, {self.spec.sizes[0]}), got {x.shape}")
        x = x.astype(np.float32, copy=False)
        return in_batches(self.net.forward, x, batch_size) if len(x) else np.empty((0, self.spec.sizes[-1]), np.float32)

    def predict_proba(self, x: Array, batch_size: int = 2000) -> Array:
        """Softmax probabilities, (N, 10) float64, rows summing to 1."""
        return np.exp(losses.log_softmax(self.logits(x, batch_size).astype(np.float64)))

    def predict(self, x: Array, batch_size: int = 2000) -> Array:
        return self.logits(x, batch_size).argmax(axis=1)

    def accuracy(self, x: Array, y: Array, batch_size: int = 2000) -> float:
        return float(np.mean(self.predict(x, batch_size) == np.asarray(y)))

    def __repr__(self) -> str:
        acc = self.test_accuracy
        return (f"Classifier({'-'.join(map(str, self.spec.sizes))} {self.spec.activation}"
                + (f", test accuracy {acc:.4f}" if acc is not None else "") + ")")


def _build_net(spec: ClassifierSpec, rng) -> Sequential:
    return mlp(list(spec.sizes), spec.activation, rng=rng, dtype=np.float32)


def _net_params(net: Sequential) -> dict[str, Array]:
    return {f"{i}.{k}": v for i, layer in enumerate(net.dense_layers) for k, v in layer.params.items()}


def _params_digest(params: dict[str, Array]) -> str:
    h = hashlib.sha256()
    for name in sorted(params):
        a = np.ascontiguousarray(params[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def train_classifier(spec: ClassifierSpec | None = None, progress: bool | TextIO | None = True) -> Classifier:
    """Train the digit classifier on MNIST from spec.seed: Adam, softmax cross-entropy.

    Deterministic for a given BLAS and thread count: the initial weights and the minibatch order
    come from spec.seed, but a matrix product on another number of threads adds its float32
    terms in another order, and training drifts a little (98.14% test accuracy with one
    OpenBLAS thread, 98.12% with two, here). The cached classifier is reused, so one machine's
    numbers stay put. Returns the classifier with info["test_accuracy"] measured on the 10,000
    MNIST test images.
    """
    spec = spec or DEFAULT_CLASSIFIER
    out = progress_stream(progress)
    init_seed, order_seed = np.random.SeedSequence(spec.seed).spawn(2)
    net = _build_net(spec, np.random.default_rng(init_seed))
    twin = SequentialTwin(net)                 # the fast twin: the same numbers, arrays reused
    opt = FusedAdam(twin.params, lr=spec.lr)
    x_train, y_train = load_mnist_uint8("train")
    x_test, y_test = load_mnist_uint8("test")
    if spec.train_size:
        x_train, y_train = x_train[:spec.train_size], y_train[:spec.train_size]
    n = len(x_train)
    order_rng = np.random.default_rng(order_seed)
    steps_per_epoch = math.ceil(n / spec.batch_size)
    if out is not None:
        out.write(f"Training the digit classifier {'-'.join(map(str, spec.sizes))} ({spec.activation}, Adam "
                  f"{spec.lr:g} x {spec.lr_decay:g} per epoch, batch {spec.batch_size}, {spec.epochs} epochs, "
                  f"seed {spec.seed}) on {n:,} "
                  f"MNIST images; it is cached for later runs.\n")
        out.flush()
    ticker = Ticker("classifier", spec.epochs * steps_per_epoch, out, unit="steps")
    start, step, running = time.perf_counter(), 0, None
    buf = np.empty((spec.batch_size, spec.sizes[0]), np.float32)
    for epoch in range(spec.epochs):
        opt.lr = spec.lr * spec.lr_decay ** epoch
        order = order_rng.permutation(n)
        for s in range(0, n, spec.batch_size):
            idx = order[s:s + spec.batch_size]
            xb = np.multiply(x_train[idx], np.float32(1 / 255), out=buf[:len(idx)])
            logits = twin.forward(xb)
            loss, dlogits = losses.softmax_cross_entropy(logits, y_train[idx])
            twin.backward(dlogits.astype(np.float32, copy=False), need_dx=False)
            opt.step(twin.grads)
            running = loss if running is None else 0.98 * running + 0.02 * loss
            step += 1
            ticker.update(step, f", epoch {epoch + 1}, loss {running:.4f}")
    seconds = time.perf_counter() - start
    clf = Classifier(net, spec, {"train_seconds": seconds, "source": "trained"})
    clf.info["test_accuracy"] = clf.accuracy(x_test, y_test)
    if out is not None:
        out.write(f"Classifier trained in {seconds:.1f} s: test accuracy {clf.info['test_accuracy']:.4f}\n")
        out.flush()
    return clf


def classifier_path(spec: ClassifierSpec | None = None) -> Path:
    """Where the classifier of `spec` is cached: <cache_root()>/classifier/<name>.npz."""
    return cache_root() / "classifier" / (spec or DEFAULT_CLASSIFIER).file_name()


def save_classifier(clf: Classifier, path: str | os.PathLike) -> Path:
    """Write the classifier atomically as a checkpoint file: its weights, and its recipe, test
    accuracy and the SHA-256 of its weights in the config."""
    params = _net_params(clf.net)
    config = {"format": CLASSIFIER_FORMAT, "version": CLASSIFIER_VERSION, "spec": asdict(clf.spec),
              "test_accuracy": clf.info.get("test_accuracy"), "train_seconds": clf.info.get("train_seconds"),
              "params_sha256": _params_digest(params)}
    return save_checkpoint(path, Checkpoint(params=params, optimizer_state={}, rng_state={}, epoch=clf.spec.epochs,
                                            history=[], config=config))


class ClassifierCacheError(ValueError):
    """A cached classifier file is unreadable or does not match the expected architecture."""


def load_classifier(path: str | os.PathLike, spec: ClassifierSpec | None = None) -> Classifier:
    """Load a classifier saved by save_classifier (allow_pickle=False), checking that it matches
    `spec`: recipe, names, shapes, dtypes, finiteness, and the recorded SHA-256 of the weights.
    Raises FileNotFoundError for a missing file, ClassifierCacheError for anything else wrong."""
    spec = spec or DEFAULT_CLASSIFIER
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(path)
    net = _build_net(spec, 0)
    expected = _net_params(net)
    try:
        ckpt = load_checkpoint(path, expected_params={k: (v.shape, v.dtype) for k, v in expected.items()})
    except CheckpointError as exc:
        raise ClassifierCacheError(str(exc)) from exc
    meta = ckpt.config
    if (meta.get("format"), meta.get("version")) != (CLASSIFIER_FORMAT, CLASSIFIER_VERSION):
        raise ClassifierCacheError(f"{path}: not an npvae classifier file of version {CLASSIFIER_VERSION}")
    if meta.get("spec") != json.loads(json.dumps(asdict(spec))):
        raise ClassifierCacheError(f"{path}: made for {meta.get('spec')}, expected {asdict(spec)}")
    if not all(np.isfinite(v).all() for v in ckpt.params.values()):
        raise ClassifierCacheError(f"{path}: the weights hold NaN or inf")
    if _params_digest(ckpt.params) != meta.get("params_sha256"):
        raise ClassifierCacheError(f"{path}: the weights do not match their recorded SHA-256")
    for name, target in expected.items():
        target[...] = ckpt.params[name]
    return Classifier(net, spec, {"test_accuracy": meta.get("test_accuracy"),
                                  "train_seconds": meta.get("train_seconds"), "source": "cache", "path": str(path)})


def get_classifier(progress: bool | TextIO | None = True, spec: ClassifierSpec | None = None,
                   rebuild: bool = False) -> Classifier:
    """The digit classifier: loaded from the cache folder, or trained once and cached there.

    The file lives in <cache_root()>/classifier/ (cache_root() honours $NPVAE_CACHE_DIR). A file
    that is missing, corrupt, or made for another architecture or training recipe is rebuilt
    (trained again from its random seed, spec.seed, deterministically) and replaced. An unwritable cache folder
    only costs the retraining next time.
    """
    spec = spec or DEFAULT_CLASSIFIER
    path = classifier_path(spec)
    out = progress_stream(progress)
    if not rebuild and path.exists():
        try:
            return load_classifier(path, spec)
        except (ClassifierCacheError, OSError) as exc:
            if out is not None:
                out.write(f"The cached classifier is unusable, retraining it: {exc}\n")
                out.flush()
    clf = train_classifier(spec, progress)
    try:
        save_classifier(clf, path)
        clf.info["path"] = str(path)
    except OSError as exc:
        if out is not None:
            out.write(f"Could not cache the classifier in {path}: {exc}\n")
    return clf
