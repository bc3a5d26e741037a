"""`npvae explore RUN`: one self-contained web page to play with a trained model's latent space.

    npvae explore RUN [--out FILE.html]          (default RUN/explore.html)

The page carries the run's decoder as numbers (float32, base64), a few hundred test images with
their labels and codes, and plain JavaScript that runs the decoder's forward pass (the template
explore.html beside this file). It makes no network request and opens from disk in any current
browser, offline. On it: the test images' codes as dots coloured by digit (for Z > 2, on the plane
of their first two principal components), the decode of the point under the pointer, linear and
spherical interpolation between two picked images, one slider per latent dimension (inactive
units marked), and a control that moves the current point toward the centre of a digit's cloud.

For tests the page defines window.npvae = {ready, decode(z) -> Float32Array(784), latentDim}.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path

import numpy as np

from .data import as_float
from . import folders, runs, settings
from .checkpoint import CheckpointError
from .evaluate import ACTIVE_UNIT_THRESHOLD, active_units

TEMPLATE = Path(__file__).with_name("explore.html")
DATA_MARK = "/*NPVAE_DATA*/null"     # where the template receives the run's numbers
N_SHOWN = 500                        # test images carried by the page (dots on the plane)


def _b64(a: np.ndarray, dtype: str) -> str:
    """An array as base64 of its little-endian bytes ("<f4": float32, "|u1": uint8), row-major."""
    return base64.b64encode(np.ascontiguousarray(a, dtype=dtype).tobytes()).decode("ascii")


def _plane(codes: np.ndarray) -> dict:
    """The plane the dots are drawn on: z = origin + u * axes[0] + v * axes[1].

    Z = 2: the latent plane itself (origin 0, axes e1 and e2). Z > 2: the plane of the codes' first
    two principal components: origin the mean code, axes the first two right singular vectors of
    the centred codes X = U S V^T (signs fixed so the largest loading is positive).
    """
    n, Z = codes.shape
    if Z == 1:
        raise ValueError("a 1-D latent space has no plane to draw; explore needs latent_dim >= 2")
    if Z == 2:
        return {"origin": [0.0, 0.0], "axes": np.eye(2).tolist(), "pca": False, "explained": None}
    mean = codes.mean(0)
    _, s, vt = np.linalg.svd(codes - mean, full_matrices=False)
    axes = vt[:2] * np.sign(vt[:2][np.arange(2), np.abs(vt[:2]).argmax(1)])[:, None]
    return {"origin": mean.tolist(), "axes": axes.tolist(), "pca": True,
            "explained": (s[:2] ** 2 / np.sum(s ** 2)).tolist()}


def page_data(model, images: np.ndarray, labels: np.ndarray, name: str = "", n_shown: int = N_SHOWN) -> dict:
    """Everything the page needs, as JSON-ready values.

    images: (N, 784) test images, uint8 or floats in [0, 1]; labels: (N,). The codes of all N
    images give the plane, the slider ranges, the clouds' centres and (for a VAE) the active
    units; the first n_shown images travel with the page as dots.
    """
    cfg = model.config()
    x = as_float(images)
    pixels = images if images.dtype == np.uint8 else np.round(255 * x).astype(np.uint8)
    codes = model.codes(x).astype(np.float64)                          # (N, Z)
    labels = np.asarray(labels).astype(int)
    n_layers = len(cfg["decoder_hidden_dims"]) + 1
    layers = [{"shape": list(model.params[f"dec{i}.W"].shape),
               "W": _b64(model.params[f"dec{i}.W"], "<f4"), "b": _b64(model.params[f"dec{i}.b"], "<f4")}
              for i in range(n_layers)]
    # the active units of `npvae evaluate` (Burda et al.): Var_x[mu_u] > 0.01. An AE has no KL
    # term, so no unit is switched off: its variances are shown, but no unit is marked.
    _, variances = active_units(model, x, return_variances=True)
    active = (variances > ACTIVE_UNIT_THRESHOLD).tolist() if cfg["model"] == "vae" else None
    lo, hi = codes.min(0), codes.max(0)
    pad = 0.1 * (hi - lo) + 1e-3
    lo, hi = lo - pad, hi + pad
    if cfg["model"] == "vae":     # the prior's +-3 sigma as well: an inactive unit's codes sit at 0
        lo, hi = np.minimum(lo, -3.0), np.maximum(hi, 3.0)
    shown = slice(0, min(n_shown, len(codes)))
    return {
        "name": name, "kind": cfg["model"], "likelihood": cfg["likelihood"], "activation": cfg["activation"],
        "architecture": [cfg["input_dim"], *cfg["hidden_dims"], cfg["latent_dim"]],
        "latentDim": cfg["latent_dim"],
        "decoder": layers,
        "conditional": None,      # hook for a conditional VAE: the decoder input would be [z | onehot(y)]
        "images": _b64(pixels[shown], "|u1"), "labels": labels[shown].tolist(),
        "codes": _b64(codes[shown], "<f4"), "nShown": len(labels[shown]), "nCoded": len(codes),
        "plane": _plane(codes),
        "centres": {str(d): codes[labels == d].mean(0).tolist() for d in range(10) if np.any(labels == d)},
        "sliders": {"lo": lo.tolist(), "hi": hi.tolist()},
        "variances": variances.tolist(), "active": active, "threshold": ACTIVE_UNIT_THRESHOLD,
    }


def render(data: dict) -> str:
    """The page: the template with the data written into it as a JavaScript object literal."""
    text = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")    # no "</script>" inside
    return TEMPLATE.read_text(encoding="utf-8").replace(DATA_MARK, text, 1)


def write_page(run: str | Path, out: str | Path | None = None) -> Path:
    """Write the explore page of a run folder (default RUN/explore.html). Returns its path."""
    model, ckpt = folders.load_run(run)
    cfg = {**settings.DEFAULTS, **ckpt.config}
    if model.config()["input_dim"] != 784:
        raise ValueError(f"explore draws 28x28 images; this run's images have {model.config()['input_dim']} pixels")
    _, x_test, y_test = runs.load_data(cfg)
    folder = folders.run_folder(run)
    out = Path(out) if out is not None else folder / "explore.html"
    name = f"{folder.name} ({ckpt.epoch} epoch{'s' * (ckpt.epoch != 1)})"
    html = render(page_data(model, x_test, y_test, name=name))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html, encoding="utf-8")
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="a run folder written by `npvae train` (or its checkpoint file)")
    p.add_argument("--out", metavar="FILE.html", help="where to write the page (default RUN/explore.html)")


def run(args: argparse.Namespace) -> int:
    try:
        path = write_page(args.run, args.out)
    except (CheckpointError, ValueError, OSError) as e:
        print(f"npvae explore: {e}", file=sys.stderr)
        return 1
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB); open it in a browser")
    return 0
