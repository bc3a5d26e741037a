"""npvae: autoencoders and variational autoencoders in plain NumPy, every gradient written by hand.

A first script:

    from npvae import VAE, Adam, fit, load_mnist
    x, _ = load_mnist("train")                    # float32 (60000, 784) in [0, 1]
    model = VAE(784, 400, 20)                     # 784-400-20, L2 loss + KL, ReLU
    fit(model, Adam(model.params), x, epochs=1)   # one epoch, a few seconds
    images = model.sample(16, rng=0)              # (16, 784): decodes of z ~ N(0, I)

The reading order, the textbook path first (each file opens with what it is for):

    npvae.layers    Dense (y = x @ W + b), ReLU, LeakyReLU, Tanh, Sigmoid, Softplus, Sequential
    npvae.losses    the L2 and Bernoulli reconstruction losses, the KL term, each with its gradient
    npvae.models    Autoencoder and VAE: forward, backward, the reparameterization trick
    npvae.cvae      conditional VAEs: CVAE (a digit by its label), the quadrant task's StructuredCVAE
    npvae.optim     SGD with momentum, and Adam
    npvae.train     fit: minibatches, KL warm-up, clipping, the per-epoch history
    npvae.gradcheck every backward pass against central differences (python -m npvae gradcheck)

Then the rest: npvae.fast (the same step, bit for bit, written for speed: fit uses it),
npvae.base and npvae.checks (the models' bookkeeping and input checks), npvae.gaussian (the
Gaussian likelihood), npvae.ppca (the linear VAE's exact answer), npvae.data (MNIST and other
IDX files), npvae.checkpoint, npvae.settings (a run's settings), npvae.folders (run folders: their
files, lock, checkpoint and history), npvae.figures (a run's standard figures), npvae.runs (the
`npvae train` command), npvae.evaluate, npvae.explore (the web page), npvae.plots (figures; needs
matplotlib), npvae.bench.
"""

import importlib

__version__ = "0.1.0"

# The names of a first script, imported when first used: `import npvae` alone loads no NumPy,
# so that the command line can set OpenBLAS's threads first (see npvae.threads).
_API = {"VAE": "models", "CVAE": "cvae", "Autoencoder": "models", "build_model": "models", "Adam": "optim", "SGD": "optim",
        "fit": "train", "load_mnist": "data"}
__all__ = list(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module 'npvae' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
