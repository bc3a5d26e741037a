"""What the demos share: the command line, trained runs (reused when they exist), data, and small maths.

Every demo is `python demos/NAME.py [--out DIR] [--quick] [--runs DIR] [--seed N]`. A demo asks
`get_run` for the model it needs; the run is trained once (with npvae.runs.train_run, the same path
as `npvae train`) into runs/<name> and reused by every later demo that asks for the same settings.

Also here, because NumPy lacks them or they are demo-specific: the inverse normal CDF (for the
Gaussian-quantile manifold), spherical interpolation, a 2-D PCA, nearest-training-image distances,
and the optional digit classifier of npvae.evaluate. The demos draw every figure with
npvae.plots; none of them touches matplotlib directly.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
FIGURES = REPO / "demos" / "figures"            # the committed figures (the README's): full runs only
QUICK_FIGURES = REPO / "runs" / "quick-figures"  # --quick's default (runs/ is not tracked by git)
os.environ.setdefault("MPLBACKEND", "Agg")      # headless: npvae.plots draws off-screen anyway

if importlib.util.find_spec("npvae") is None:   # the demos run from a checkout without installing npvae
    sys.path.insert(0, str(REPO))

from npvae.checkpoint import CheckpointError  # noqa: E402
from npvae.data import in_batches, load_mnist_uint8, to_float  # noqa: E402
from npvae.models import VAE  # noqa: E402
from npvae.folders import CHECKPOINT, load_run  # noqa: E402
from npvae.runs import train_run  # noqa: E402
from npvae.settings import DEFAULTS, run_name  # noqa: E402

# --quick: a small subset and a few epochs, so that every demo finishes in seconds (for the tests).
QUICK = {"train_size": 5000, "test_size": 1000, "epochs": 3}
QUICK_NOTE = (f"  (--quick: numbers of small models, {QUICK['train_size']} training images and {QUICK['epochs']} "
              f"epochs; they are not the README's and may even point the other way)")
_quick = False                                  # set by parse_args: heading() then adds QUICK_NOTE
# How many training images the nearest-training-image distance searches (for speed).
NEAREST_SUBSET = {False: 10000, True: 2000}

# The runs the demos share (settings on top of npvae.settings.DEFAULTS, the study note's 784-400-20 VAE).
VAE_20 = {}                                     # the study note's VAE: 784-400-20, L2 + KL, 10 epochs
AE_20 = {"model": "ae"}                         # the same architecture, trained as a plain autoencoder
VAE_2 = {"latent": 2}                           # a 2-D latent space, to be drawn
AE_2 = {"model": "ae", "latent": 2}


# --------------------------------------------------------------------------------------------
# Command line and printing
# --------------------------------------------------------------------------------------------

def parse_args(description: str, argv: list[str] | None = None) -> argparse.Namespace:
    """The options every demo takes: --out, --quick, --runs, --seed."""
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path,
                   help=f"folder for the PNG figures (default {_show(FIGURES)}; with --quick {_show(QUICK_FIGURES)})")
    p.add_argument("--quick", action="store_true",
                   help=f"a small, fast version: {QUICK['train_size']} training images, "
                        f"{QUICK['epochs']} epochs, smaller samples (for the tests)")
    p.add_argument("--runs", type=Path, default=REPO / "runs",
                   help="folder of trained runs, reused when the settings match (default: runs/ at the repo root)")
    p.add_argument("--seed", type=int, default=0, help="seed of the demo's random draws (default 0)")
    args = p.parse_args(argv)
    global _quick
    _quick = args.quick
    if args.out is None:
        args.out = QUICK_FIGURES if args.quick else FIGURES
    if args.quick and args.out.resolve().is_relative_to(FIGURES):
        p.error(f"--quick would overwrite the README's figures in {FIGURES}; give another --out "
                f"(default {QUICK_FIGURES})")
    print(description.split("\n    python demos/")[0].strip() + "\n", flush=True)   # what the figures show
    args.out.mkdir(parents=True, exist_ok=True)
    args.rng = np.random.default_rng(args.seed)
    args.started = time.perf_counter()
    return args


def heading(text: str) -> None:
    """The title of a block of numbers (with --quick, and a warning that they are not the README's)."""
    print(f"\n== {text} ==" + ("\n" + QUICK_NOTE if _quick else ""), flush=True)


def wrote(path: Path) -> Path:
    print(f"  wrote {path}", flush=True)
    return path


def done(args: argparse.Namespace) -> None:
    print(f"\nDone in {time.perf_counter() - args.started:.1f} s.", flush=True)


# --------------------------------------------------------------------------------------------
# Trained runs: reuse or train
# --------------------------------------------------------------------------------------------

def run_config(overrides: dict, quick: bool) -> dict:
    """The full settings of a run: npvae.settings.DEFAULTS, then the demo's overrides, then --quick's."""
    cfg = {**DEFAULTS, **overrides}
    if quick:
        cfg.update(QUICK)
    return cfg


def get_run(overrides: dict, runs_dir: str | Path, quick: bool) -> tuple:
    """The trained model and its per-epoch history for these settings: reused, resumed or trained.

    The run folder is runs_dir/<npvae.settings.run_name(cfg)> (plus "-quick" with --quick). A run
    there is reused when its settings match and it has trained at least the requested epochs;
    a shorter one (say, interrupted) is resumed. A folder holding a run with other settings is
    left alone, and the run is trained beside it. Returns (model, history).
    """
    cfg = run_config(overrides, quick)
    name = run_name(cfg) + ("-quick" if quick else "")
    out = Path(runs_dir) / name
    state, note = _inspect(out, cfg)
    if state == "other":
        print(f"{_show(out)} holds {note}; this run goes beside it")
        out = out.with_name(f"{name}-{_digest(cfg)}")
        state, note = _inspect(out, cfg)
    if state == "done":
        print(f"reusing trained run {_show(out)} ({note} epochs)", flush=True)
    elif state == "short":
        print(f"resuming run {_show(out)} from epoch {note} to {cfg['epochs']}", flush=True)
        train_run(cfg, out, resume=True, figures=False, stream=sys.stdout, given=["epochs"])
    else:
        print(f"training run {_show(out)} (no trained run with these settings yet)", flush=True)
        train_run(cfg, out, overwrite=True, figures=False, stream=sys.stdout)
    model, ckpt = load_run(out)
    return model, ckpt.history


def _inspect(out: Path, cfg: dict) -> tuple[str, object]:
    """What a run folder holds for these settings: ("none", None), ("done", epochs),
    ("short", epochs) for the same settings with fewer epochs, or ("other", why)."""
    if not (out / CHECKPOINT).exists():
        return "none", None
    try:
        _, ckpt = load_run(out)
    except CheckpointError as err:
        return "other", f"an unreadable checkpoint ({err})"
    saved = {**DEFAULTS, **ckpt.config}
    differ = [k for k in cfg if k != "epochs" and saved.get(k) != cfg[k]]
    if differ:
        return "other", "a run with other settings (" + ", ".join(f"{k}={saved.get(k)!r}" for k in differ) + ")"
    return ("done" if ckpt.epoch >= cfg["epochs"] else "short"), ckpt.epoch


def _digest(cfg: dict) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _show(path: Path) -> str:
    """A path relative to the current folder when it is below it (runs/x rather than /home/.../runs/x)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def describe(model) -> str:
    hidden = "-".join(map(str, model.hidden_dims))
    kind = "VAE" if isinstance(model, VAE) else "AE"
    extra = f", beta {model.beta:g}" if isinstance(model, VAE) else ""
    return f"{kind} {model.input_dim}-{hidden}-{model.latent_dim}{extra}"


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------

def load_split(split: str, quick: bool) -> tuple[np.ndarray, np.ndarray]:
    """Images float32 (N, 784) in [0, 1] and labels (N,): the same subset the runs use."""
    images, labels = load_mnist_uint8(split)
    if quick:
        n = QUICK["train_size"] if split == "train" else QUICK["test_size"]
        images, labels = images[:n], labels[:n]
    return to_float(images), labels


def codes_of(model, x: np.ndarray) -> np.ndarray:
    """The point in latent space of each image: mu for a VAE, z for an autoencoder. (N, Z)."""
    return model.codes(x)


def decode(model, z: np.ndarray, batch: int = 2000) -> np.ndarray:
    """Decode codes (N, Z) in batches. Returns (N, 784) images in (0, 1)."""
    return in_batches(model.decode, z, batch)


def recon_error(model, x: np.ndarray) -> float:
    """Mean squared pixel error of reconstructions (decoding mu for a VAE): the L2 loss / 784."""
    return float(np.mean((decode(model, codes_of(model, x)) - x) ** 2))


class NearestTraining:
    """Distance from images to their nearest training image (mean squared pixel difference).

    Searches the first `n` training images, using |a - b|^2 = |a|^2 + |b|^2 - 2 a.b in chunks.
    Also returns that neighbour's label, a crude classifier-free check of which digit a decode is.
    """

    def __init__(self, quick: bool) -> None:
        x, y = load_split("train", quick)
        n = NEAREST_SUBSET[quick]
        self.x, self.y = x[:n], y[:n]
        self.sq = (self.x ** 2).sum(1)                                    # (M,)

    def __call__(self, images: np.ndarray, chunk: int = 500,
                 exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """images (N, 784) -> (distance (N,), nearest training label (N,)).

        exclude (N,): for each image, the index of a searched training image to leave out, e.g.
        the one a decode was made from (it would otherwise be its own nearest neighbour, and the
        distance a reconstruction error, not how digit-like the decode is).
        """
        dist, label = [], []
        for i in range(0, len(images), chunk):
            a = np.asarray(images[i:i + chunk], dtype=np.float32)
            d2 = (a ** 2).sum(1)[:, None] + self.sq[None, :] - 2 * a @ self.x.T   # (n, M)
            if exclude is not None:
                d2[np.arange(len(a)), exclude[i:i + chunk]] = np.inf
            j = d2.argmin(1)
            dist.append(np.maximum(d2[np.arange(len(a)), j], 0) / a.shape[1])
            label.append(self.y[j])
        return np.concatenate(dist), np.concatenate(label)


# --------------------------------------------------------------------------------------------
# The digit classifier of npvae.evaluate (optional)
# --------------------------------------------------------------------------------------------

def get_classifier(quick: bool):
    """The digit classifier of npvae.evaluate (an MLP built from npvae's own layers), or None.

    Training it costs about a minute, once: it is cached in the user cache folder (see
    npvae.data.cache_root). With --quick it is used only when already cached and valid.
    """
    try:
        from npvae.evaluate import get_classifier as get
    except ImportError:
        print("(no digit classifier: npvae.evaluate is not available; the nearest-training-image "
              "distance is the measure)")
        return None
    if quick:
        try:
            from npvae.classifier import classifier_path, load_classifier
            clf = load_classifier(classifier_path())
        except (ImportError, OSError, ValueError):      # not there, not cached, or stale
            print("(--quick: the digit classifier is not cached yet, so it is skipped; a demo run "
                  "without --quick trains and caches it, about a minute)")
            return None
    else:
        clf = get(progress=sys.stdout)
    print(f"digit classifier: {clf!r}", flush=True)
    return clf


def classify(clf, images: np.ndarray, labels: np.ndarray | None = None) -> dict:
    """What the classifier says about images: its mean confidence (max softmax probability), the
    fraction it is sure about (max probability > 0.9), the entropy of the predicted-class
    histogram (log 10 = 2.303 nats: all digits equally often), the predictions, and with labels
    the fraction predicted as that label."""
    from npvae.evaluate import class_entropy
    proba = clf.predict_proba(images)                                       # (N, 10)
    pred = proba.argmax(1)
    out = {"confidence": float(proba.max(1).mean()), "pred": pred, "sure": float(np.mean(proba.max(1) > 0.9)),
           "class_entropy": class_entropy(np.bincount(pred, minlength=10))}
    if labels is not None:
        out["agree"] = float(np.mean(pred == labels))
    return out


# --------------------------------------------------------------------------------------------
# Maths NumPy does not have
# --------------------------------------------------------------------------------------------

# Acklam's rational approximation of the inverse normal CDF (relative error < 1.15e-9).
_A = (-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02,
      1.383577518672690e+02, -3.066479806614716e+01, 2.506628277459239e+00)
_B = (-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
      6.680131188771972e+01, -1.328068155288572e+01)
_C = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
      -2.549732539343734e+00, 4.374664141464968e+00, 2.938163982698783e+00)
_D = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00, 3.754408661907416e+00)
_P_LOW = 0.02425


def _acklam(p: float) -> float:
    if p < _P_LOW:                                    # lower tail
        q = math.sqrt(-2 * math.log(p))
        return ((((((_C[0] * q + _C[1]) * q + _C[2]) * q + _C[3]) * q + _C[4]) * q + _C[5])
                / ((((_D[0] * q + _D[1]) * q + _D[2]) * q + _D[3]) * q + 1))
    if p > 1 - _P_LOW:                                # upper tail, by symmetry
        return -_acklam(1 - p)
    q = p - 0.5                                       # central region
    r = q * q
    return ((((((_A[0] * r + _A[1]) * r + _A[2]) * r + _A[3]) * r + _A[4]) * r + _A[5]) * q
            / (((((_B[0] * r + _B[1]) * r + _B[2]) * r + _B[3]) * r + _B[4]) * r + 1))


def inverse_normal_cdf(p) -> np.ndarray:
    """Phi^-1(p): the z with P(N(0, 1) <= z) = p, for p in (0, 1). Works elementwise on arrays.

    Acklam's rational approximation, then one Halley step on Phi(x) - p with math.erf
    (Phi(x) = (1 + erf(x / sqrt 2)) / 2), which brings it to full double precision.
    """
    p = np.asarray(p, dtype=float)
    if np.any((p <= 0) | (p >= 1)):
        raise ValueError("inverse_normal_cdf needs probabilities strictly between 0 and 1")
    out = np.empty_like(p)
    for i, pi in np.ndenumerate(p):
        x = _acklam(float(pi))
        e = 0.5 * (1 + math.erf(x / math.sqrt(2))) - pi          # Phi(x) - p
        u = e * math.sqrt(2 * math.pi) * math.exp(x * x / 2)      # e / phi(x)
        out[i] = x - u / (1 + x * u / 2)                          # Halley's step
    return out


def slerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Spherical interpolation from a to b: equal angle steps along the great circle through them.

    a, b: (Z,) or (N, Z); t: (T,) in [0, 1]. Returns (T, Z) or (N, T, Z).
    slerp(t) = sin((1 - t) w) / sin(w) * a + sin(t w) / sin(w) * b, with w the angle between a
    and b. For unit a and b every point has unit norm; otherwise the norm moves between |a| and
    |b| (never dipping toward the origin as the straight line does). Falls back to the straight
    line when a and b are (nearly) parallel.
    """
    a, b, t = np.asarray(a, dtype=float), np.asarray(b, dtype=float), np.asarray(t, dtype=float)
    single = a.ndim == 1
    a, b = np.atleast_2d(a), np.atleast_2d(b)                                     # (N, Z)
    cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    w = np.arccos(np.clip(cos, -1.0, 1.0))[:, None, None]                         # (N, 1, 1)
    t = t[None, :, None]                                                          # (1, T, 1)
    sin_w = np.sin(w)
    small = sin_w < 1e-6
    safe = np.where(small, 1.0, sin_w)
    ca = np.where(small, 1 - t, np.sin((1 - t) * w) / safe)
    cb = np.where(small, t, np.sin(t * w) / safe)
    out = ca * a[:, None, :] + cb * b[:, None, :]                                 # (N, T, Z)
    return out[0] if single else out


def pca_2d(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Project codes (N, Z) on their two main axes, with NumPy's SVD.

    Returns (projected (N, 2), axes (2, Z), explained (2,): the fraction of the total variance
    along each axis). Centred data X = U S V^T; the axes are the first two rows of V^T, the
    projection is X V[:, :2] = U[:, :2] S[:2]. Signs are fixed so the largest loading is positive.
    """
    x = np.asarray(codes, dtype=float)
    x = x - x.mean(0)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    axes = vt[:2] * np.sign(vt[:2][np.arange(2), np.abs(vt[:2]).argmax(1)])[:, None]
    explained = s[:2] ** 2 / np.sum(s ** 2)
    return x @ axes.T, axes, explained
