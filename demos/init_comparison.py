"""Which initialisation trains the study note's VAE best? PyTorch's default against He and Glorot.

    python demos/init_comparison.py              # 2 seeds x 3 initialisations x 10 epochs, about 3 minutes
    python demos/init_comparison.py --quick      # a smoke test in seconds

Each run is `npvae train` with its defaults (VAE 784-400-20, ReLU, L2 reconstruction + KL, Adam
1e-3, batch 128, 10 epochs), built the same way (same seeds for the model, the shuffling and the
test draws), except that the Dense layers' parameters are drawn anew with another rule:

- pytorch: W, b ~ U(-1/sqrt(D_in), 1/sqrt(D_in)) in every layer (npvae's default);
- he+glorot: He, W ~ N(0, 2/D_in), for the layers followed by a ReLU, Glorot, W ~ N(0, 2/(D_in + D_out)),
  for the linear ones (the mu/logvar head and the decoder's output), biases 0;
- he: He in every layer.

It prints the test loss after the last epoch, per image, as `npvae train` reports it.
"""

from __future__ import annotations

import io
import sys

import numpy as np

import _common  # noqa: F401  (puts the repository on the path)
from npvae.layers import Dense, ReLU, Sequential
from npvae.models import build_model
from npvae.runs import load_data
from npvae.settings import DEFAULTS, model_config
from npvae.optim import Adam
from npvae.train import fit

INITS = ("pytorch", "he+glorot", "he")


def dense_layers_and_followers(model) -> list[tuple[Dense, bool]]:
    """Every Dense layer of the model, in order, with whether a ReLU follows it."""
    found = []
    for part in (model.encoder, model.head, model.decoder):
        layers = part.layers if isinstance(part, Sequential) else [part]
        for i, layer in enumerate(layers):
            if isinstance(layer, Dense):
                relu_next = i + 1 < len(layers) and isinstance(layers[i + 1], ReLU)
                found.append((layer, relu_next))
    return found


def reinitialise(model, rule: str, rng: np.random.Generator) -> None:
    """Draw the Dense layers' parameters anew with `rule`, in place (they are views of one buffer)."""
    if rule == "pytorch":
        return
    for layer, relu_next in dense_layers_and_followers(model):
        d_in, d_out = layer.params["W"].shape
        init = "he" if (rule == "he" or relu_next) else "glorot"
        fresh = Dense(d_in, d_out, init=init, rng=rng, dtype=model.dtype)
        layer.params["W"][...] = fresh.params["W"]
        layer.params["b"][...] = fresh.params["b"]


def run(rule: str, seed: int, quick: bool) -> float:
    cfg = {**DEFAULTS, "seed": seed}
    if quick:
        cfg.update(epochs=1, train_size=2000, test_size=500)
    seeds = np.random.SeedSequence(seed).spawn(2)
    model = build_model(model_config(cfg), rng=np.random.default_rng(seeds[0]))
    reinitialise(model, rule, np.random.default_rng([seed, 1]))
    x_train, x_test, _ = load_data(cfg)
    history = fit(model, Adam(model.params, lr=cfg["lr"]), x_train, epochs=cfg["epochs"],
                  batch_size=cfg["batch_size"], rng=np.random.default_rng(seeds[1]), eval_images=x_test,
                  eval_seed=seed, log=io.StringIO())
    return history[-1]["test_loss"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if {"-h", "--help"} & set(argv):
        print(__doc__)
        return 0
    quick = "--quick" in argv
    print(f"{'initialisation':>15s} {'seed 0':>8s} {'seed 1':>8s}   (test loss after {'one epoch' if quick else '10 epochs'})"
          + ("\n  (--quick: one epoch on 2000 images; these are not the README's numbers)" if quick else ""))
    for rule in INITS:
        losses = [run(rule, seed, quick) for seed in (0, 1)]
        print(f"{rule:>15s} " + " ".join(f"{x:8.2f}" for x in losses), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
