"""Weight quantization spec (bits, granularity, symmetry) and round-to-nearest of a 2-D weight."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lowbit.errors import LowbitError, not_finite
from lowbit.formats import dequantize, fit_scale_zero, quantize

RANGES = ("minmax", "mse")
MSE_NORM = 2.4
MSE_GRID = [1 - 0.01 * i for i in range(1, 41)]  # shrink factors 0.99 .. 0.60


@dataclass(frozen=True)
class WeightSpec:
    """How a linear weight [out, in] is quantized: bits, group size along `in` (0 = per channel, -1 = per tensor)."""

    bits: int = 4
    group_size: int = 128
    symmetric: bool = True
    range: str = "minmax"  # range estimation: "minmax", or "mse" (shrink the range to minimise |error|^2.4)

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise LowbitError(f"bits must be an integer from 2 to 8, got {self.bits!r}; pick e.g. --bits 4")
        if self.range not in RANGES:
            raise LowbitError(f"unknown range estimation {self.range!r}; choose one of {', '.join(RANGES)}")
        if self.group_size < -1:
            raise LowbitError(f"group size must be positive, 0 (per channel) or -1 (per tensor), got {self.group_size}")

    def groups(self, in_features: int) -> int:
        """Number of groups along the input dimension, checking that the group size divides it."""
        if self.group_size <= 0:
            return 1
        if in_features % self.group_size:
            raise LowbitError(
                f"group size {self.group_size} does not divide the input dimension {in_features}; "
                f"choose a group size that divides it (e.g. {_divisor_hint(in_features)}) or 0 for per-channel"
            )
        return in_features // self.group_size

    def describe(self) -> str:
        """Short human name such as W4 g128 sym."""
        g = {0: "per-channel", -1: "per-tensor"}.get(self.group_size, f"g{self.group_size}")
        mse = " mse" if self.range == "mse" else ""
        return f"W{self.bits} {g} {'sym' if self.symmetric else 'asym'}{mse}"


def _divisor_hint(n: int) -> int:
    for g in (128, 64, 32, 16, 8):
        if n % g == 0:
            return g
    return 0


@dataclass
class QuantizedWeight:
    """Integer codes [out, in] (uint8, unpacked) with per-group scales and zeros [out, groups]."""

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    spec: WeightSpec

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Float weight [out, in] represented by the codes."""
        return dequantize_weight(self.codes, self.scales, self.zeros, dtype)

    def split(self, sizes: list[int]) -> list[QuantizedWeight]:
        """Split along the output dimension (per-tensor ranges are shared by every part)."""
        cs = self.codes.split(sizes)
        if self.scales.shape[0] == 1 and self.codes.shape[0] != 1:
            return [QuantizedWeight(c, self.scales, self.zeros, self.spec) for c in cs]
        return [QuantizedWeight(c, s, z, self.spec)
                for c, s, z in zip(cs, self.scales.split(sizes), self.zeros.split(sizes), strict=True)]


def _grouped(w: torch.Tensor, spec: WeightSpec) -> torch.Tensor:
    out, inp = w.shape
    if spec.group_size == -1:
        return w.reshape(1, 1, -1)
    return w.reshape(out, spec.groups(inp), -1)


def fp16_round(s: torch.Tensor) -> torch.Tensor:
    """Scales as they are stored: rounded to fp16, returned as float32 (every method fits to these)."""
    return s.to(torch.float16).float()


def _fp16_scale(s: torch.Tensor) -> torch.Tensor:
    return fp16_round(s.clamp_min(1e-7))


def check_finite(w: torch.Tensor) -> None:
    """Refuse a weight holding NaN or Inf, before any work is done on it."""
    if not torch.isfinite(w).all():
        raise not_finite("the weight", "fix or re-export the checkpoint before quantizing")


def fit_ranges(w: torch.Tensor, spec: WeightSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero per slice of the last dim (keepdim), by min-max or MSE search; scales rounded to fp16."""
    s, z = fit_scale_zero(w, spec.bits, spec.symmetric)
    s = _fp16_scale(s)
    if spec.range == "minmax":
        return s, z
    w = w.float()
    best = (w - dequantize(quantize(w, s, z, spec.bits), s, z)).abs().pow(MSE_NORM).sum(-1, keepdim=True)
    for shrink in MSE_GRID:  # GPTQ's reference `mse` search: shrink the range while the p-norm error drops
        sc, zc = fit_scale_zero(w, spec.bits, spec.symmetric, clip=shrink)
        sc = _fp16_scale(sc)
        err = (w - dequantize(quantize(w, sc, zc, spec.bits), sc, zc)).abs().pow(MSE_NORM).sum(-1, keepdim=True)
        better = err < best
        s, z, best = torch.where(better, sc, s), torch.where(better, zc, z), torch.where(better, err, best)
    return s, z


def fit_weight(w: torch.Tensor, spec: WeightSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Min-max scales and zeros [out, groups] (per-tensor: [1, 1]) for a weight [out, in]."""
    s, z = fit_ranges(_grouped(w, spec), spec)
    return s.squeeze(-1), z.squeeze(-1)


def quantize_weight(w: torch.Tensor, spec: WeightSpec) -> QuantizedWeight:
    """Round-to-nearest quantization of a 2-D weight with min-max ranges."""
    if w.dim() != 2:
        raise LowbitError(f"expected a 2-D weight, got shape {tuple(w.shape)}")
    check_finite(w)
    scales, zeros = fit_weight(w, spec)
    g = _grouped(w, spec)
    codes = quantize(g, scales.unsqueeze(-1), zeros.unsqueeze(-1), spec.bits).reshape(w.shape)
    return QuantizedWeight(codes, scales, zeros, spec)


def dequantize_weight(
    codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Float weight from codes [out, in] and scales/zeros [out, groups] (groups contiguous along `in`)."""
    out, inp = codes.shape
    if scales.numel() == 1:
        return dequantize(codes, scales.to(dtype).reshape(1, 1), zeros.to(dtype).reshape(1, 1))
    g = codes.reshape(out, scales.shape[1], -1)
    return dequantize(g, scales.to(dtype).unsqueeze(-1), zeros.to(dtype).unsqueeze(-1)).reshape(out, inp)
