"""envkit: pinned PyTorch/CUDA images, built, verified and reproduced."""

__version__ = "0.1.0"
