"""Number formats and bit packing: pure tensor functions, importing nothing else from lowbit."""

from lowbit.formats.integer import (
    dequantize,
    fit_scale_zero,
    qmax,
    quantize,
    signed_range,
    symmetric_zero,
    to_signed,
    to_unsigned,
)
from lowbit.formats.packing import pack, packed_numel, unpack

__all__ = [
    "dequantize",
    "fit_scale_zero",
    "pack",
    "packed_numel",
    "qmax",
    "quantize",
    "signed_range",
    "symmetric_zero",
    "to_signed",
    "to_unsigned",
    "unpack",
]
