"""Integer formats, 2-8 bits, symmetric or asymmetric, applied per group along the last dimension.

Codes are always stored unsigned in [0, 2^bits - 1]; the real value is (code - zero) * scale. A symmetric
format fixes zero at 2^(bits-1) (so codes -2^(b-1)..2^(b-1)-1 after shifting); an asymmetric one fits it.
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


def fit_scale_zero(
    w: torch.Tensor, bits: int, symmetric: bool, clip: float | torch.Tensor = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Min-max scale and zero point per slice of the last dimension (keepdim), shrunk by `clip`."""
    top = qmax(bits)
    w = w.float()
    if symmetric:
        half = 1 << (bits - 1)
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
