"""npvae: autoencoders and variational autoencoders in plain NumPy, every gradient written by hand."""

__version__ = "0.1.0"
