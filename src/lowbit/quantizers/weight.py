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
        """Number of groups along the input dimension (the last one is shorter where the size does not divide)."""
        if self.group_size <= 0:
            return 1
        return -(-in_features // self.group_size)

    def group_len(self, in_features: int) -> int:
        """Columns per group (the whole row per channel or per tensor)."""
        return in_features if self.group_size <= 0 else min(self.group_size, in_features)

    def padded(self, in_features: int) -> int:
        """The row width rounded up to whole groups (what packed storage and the kernels hold)."""
        return self.groups(in_features) * self.group_len(in_features)

    def describe(self) -> str:
        """Short human name such as W4 g128 sym."""
        g = {0: "per-channel", -1: "per-tensor"}.get(self.group_size, f"g{self.group_size}")
        mse = " mse" if self.range == "mse" else ""
        return f"W{self.bits} {g} {'sym' if self.symmetric else 'asym'}{mse}"


@dataclass
class QuantizedWeight:
    """Integer codes [out, in] (uint8, unpacked) with per-group scales and zeros [out, groups]."""

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    spec: WeightSpec

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Float weight [out, in] represented by the codes."""
        return dequantize_weight(self.codes, self.scales, self.zeros, dtype, self.spec.group_len(self.codes.shape[1]))

    def split(self, sizes: list[int]) -> list[QuantizedWeight]:
        """Split along the output dimension (per-tensor ranges are shared by every part)."""
        cs = self.codes.split(sizes)
        if self.scales.shape[0] == 1 and self.codes.shape[0] != 1:
            return [QuantizedWeight(c, self.scales, self.zeros, self.spec) for c in cs]
        return [QuantizedWeight(c, s, z, self.spec)
                for c, s, z in zip(cs, self.scales.split(sizes), self.zeros.split(sizes), strict=True)]


def _group_slices(w: torch.Tensor, spec: WeightSpec) -> list[torch.Tensor]:
    """Views [rows, n, len] covering w [out, in] group by group: the whole groups, then the short last one."""
    out, inp = w.shape
    if spec.group_size == -1:
        return [w.reshape(1, 1, -1)]
    g = spec.group_len(inp)
    full = inp // g * g
    parts = [w[:, :full].reshape(out, -1, g)] if full else []
    return parts + ([w[:, full:].reshape(out, 1, -1)] if full < inp else [])


def expand_groups(t: torch.Tensor, group_len: int, cols: int) -> torch.Tensor:
    """Per-group values [rows, groups] repeated over their columns: [rows, cols] (the last group may be short)."""
    return t.repeat_interleave(group_len, dim=1)[:, :cols]


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
    fits = [fit_ranges(part, spec) for part in _group_slices(w, spec)]
    return torch.cat([s for s, _ in fits], 1).squeeze(-1), torch.cat([z for _, z in fits], 1).squeeze(-1)


def quantize_weight(w: torch.Tensor, spec: WeightSpec) -> QuantizedWeight:
    """Round-to-nearest quantization of a 2-D weight with min-max ranges."""
    if w.dim() != 2:
        raise LowbitError(f"expected a 2-D weight, got shape {tuple(w.shape)}")
    check_finite(w)
    scales, zeros = fit_weight(w, spec)
    return QuantizedWeight(quantize_with(w, scales, zeros, spec), scales, zeros, spec)


def quantize_with(w: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, spec: WeightSpec) -> torch.Tensor:
    """Codes [out, in] of w on the given per-group scales and zeros [rows, groups]."""
    glen = spec.group_len(w.shape[1])
    if scales.numel() == 1:
        return quantize(w, scales.reshape(1, 1), zeros.reshape(1, 1), spec.bits)
    return quantize(w, expand_groups(scales, glen, w.shape[1]), expand_groups(zeros, glen, w.shape[1]), spec.bits)


def dequantize_weight(
    codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, dtype: torch.dtype = torch.float32,
    group_len: int = 0,
) -> torch.Tensor:
    """Float weight from codes [out, in] and scales/zeros [out, groups] (groups of `group_len` contiguous columns
    along `in`, the last one possibly shorter; 0: the groups divide `in` evenly)."""
    out, inp = codes.shape
    if scales.numel() == 1:
        return dequantize(codes, scales.to(dtype).reshape(1, 1), zeros.to(dtype).reshape(1, 1))
    groups = scales.shape[1]
    if not group_len:
        if inp % groups:
            raise LowbitError(f"{groups} groups do not divide {inp} columns: pass the group length")
        group_len = inp // groups
    if group_len * groups == inp:
        g = codes.reshape(out, groups, -1)
        return dequantize(g, scales.to(dtype).unsqueeze(-1), zeros.to(dtype).unsqueeze(-1)).reshape(out, inp)
    s, z = (expand_groups(t.to(dtype), group_len, inp) for t in (scales, zeros))
    return dequantize(codes, s, z)
