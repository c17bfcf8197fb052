"""steve1: a reproducible training pipeline for STEVE-1, the text-conditioned Minecraft agent."""

from steve1.numerics import request_reproducible_blas

# Before anything imports torch: MKL reads its reproducibility mode at its first computation.
request_reproducible_blas()

__version__ = "0.1.0"
