"""Latent quantizers for autoencoders and tokenizers behind one interface.

Every quantizer is an ``nn.Module`` whose forward takes ``(batch, ..., dim)`` (or ``(batch, dim, ...)`` with
``channels_first=True``) and returns ``(quantized, indices, losses)``; ``indices_to_codes(indices)``
inverts the indices and ``codebook_usage()`` reports the fraction of codes used and the perplexity
of the code histogram.
"""

from .common import LatentQuantizer
from .fsq import FSQ
from .gaussian import TDC, GaussianQuant, gaussian_codebook
from .latent_quantize import LatentQuantize
from .lfq import BSQ, LFQ
from .vq import ResidualVQ, VectorQuantize

__all__ = [
    "LatentQuantizer",
    "VectorQuantize",
    "ResidualVQ",
    "FSQ",
    "LFQ",
    "BSQ",
    "GaussianQuant",
    "TDC",
    "gaussian_codebook",
    "LatentQuantize",
]
