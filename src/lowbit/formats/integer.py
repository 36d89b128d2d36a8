"""Integer formats, 2-8 bits, symmetric or asymmetric, applied per group along the last dimension.

Codes are always stored unsigned in [0, 2^bits - 1]; the real value is (code - zero) * scale. A symmetric
format fixes zero at 2^(bits-1) (`symmetric_zero`), so that code - zero is a signed integer in
`signed_range(bits)` = [-2^(b-1), 2^(b-1) - 1]; `to_signed` and `to_unsigned` convert between the stored codes
and those signed integers. An asymmetric format fits its zero. Methods that compute signed codes directly
(per-token activations, QAT's uniform quantizers) take their range from `signed_range`.
Granularity is expressed by the shape of the input: reshape a weight [out, in] to [out, in // g, g] for
groups of g, to [out, 1, in] per channel, or to [1, 1, numel] per tensor; every function reduces over the
last dimension.
"""

from __future__ import annotations

import torch


def qmax(bits: int) -> int:
    """Largest unsigned code of a `bits`-bit integer format."""
    if not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"bits must be an integer in 1..8, got {bits!r}")
    return (1 << bits) - 1


def symmetric_zero(bits: int) -> int:
    """Zero point 2^(bits-1) of a symmetric `bits`-bit format: the stored code of the real value 0."""
    if bits < 1:
        raise ValueError(f"bits must be at least 1, got {bits!r}")
    return 1 << (bits - 1)


def signed_range(bits: int) -> tuple[int, int]:
    """(lo, hi) = (-2^(bits-1), 2^(bits-1) - 1): the two's-complement range of `bits`-bit signed integers.

    These are the values code - symmetric_zero(bits) of a symmetric format; any bits >= 1 is accepted (per-token
    activations and QAT use it beyond the 1..8 bits of stored formats). 1 bit gives (-1, 0).
    """
    half = symmetric_zero(bits)
    return -half, half - 1


def to_signed(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Stored unsigned codes [0, 2^bits - 1] of a symmetric format to signed integers code - 2^(bits-1) (int8)."""
    qmax(bits)  # validates bits (1..8)
    return (codes.to(torch.int16) - symmetric_zero(bits)).to(torch.int8)


def to_unsigned(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed integers in `signed_range(bits)` to the stored codes q + 2^(bits-1) (uint8); inverse of `to_signed`.

    Raises ValueError for values outside the range (they would not fit the format).
    """
    qmax(bits)  # validates bits (1..8)
    lo, hi = signed_range(bits)
    if q.is_floating_point():
        raise ValueError(f"to_unsigned takes integer tensors, got {q.dtype}")
    if q.numel() and (int(q.min()) < lo or int(q.max()) > hi):
        raise ValueError(f"values must lie in [{lo}, {hi}] for {bits} bits, got [{int(q.min())}, {int(q.max())}]")
    return (q.to(torch.int16) + symmetric_zero(bits)).to(torch.uint8)


def fit_scale_zero(
    w: torch.Tensor, bits: int, symmetric: bool, clip: float | torch.Tensor = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Min-max scale and zero point per slice of the last dimension (keepdim), shrunk by `clip`."""
    top = qmax(bits)
    w = w.float()
    if symmetric:
        half = symmetric_zero(bits)
        amax = w.abs().amax(dim=-1, keepdim=True) * clip
        # GPTQ's convention: [-amax, amax] spans all 2^b codes around zero 2^(b-1) (+amax clips by half a step).
        scale = (2 * amax / top).clamp_min(1e-10)
        zero = torch.full_like(scale, float(half))
        return scale, zero
    lo = (w.amin(dim=-1, keepdim=True) * clip).clamp(max=0.0)
    hi = (w.amax(dim=-1, keepdim=True) * clip).clamp(min=0.0)
    scale = ((hi - lo) / top).clamp_min(1e-10)
    zero = torch.round(-lo / scale).clamp(0, top)
    return scale, zero


def quantize(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Round to unsigned integer codes (uint8) with the given scale and zero point (broadcast)."""
    q = torch.round(w.float() / scale) + zero
    return q.clamp_(0, qmax(bits)).to(torch.uint8)


def dequantize(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """Real values (code - zero) * scale, in the dtype of `scale`."""
    return (codes.to(scale.dtype) - zero.to(scale.dtype)) * scale
