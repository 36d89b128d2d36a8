"""Finite scalar quantization (Mentzer et al., 2023, "FSQ: VQ-VAE made simple")."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lowbit.quantizers.ste import straight_through

from .common import MAX_HISTOGRAM, LatentQuantizer, check_levels

__all__ = ["FSQ"]


class FSQ(LatentQuantizer):
    """Bound each dimension with tanh and round it to one of levels[i] values (FSQ, Mentzer et al., 2023)."""

    def __init__(
        self,
        levels: list[int],
        dim: int | None = None,
        channels_first: bool = False,
        track_usage: bool = True,
        eps: float = 1e-3,
    ) -> None:
        levels = check_levels("FSQ", levels)
        n = len(levels)
        dim = dim or n
        codebook_size = math.prod(levels)
        per_dim = codebook_size > MAX_HISTOGRAM
        # Huge products: track a histogram per dimension instead of per code.
        heads, size = (n, max(levels)) if per_dim else (1, codebook_size)
        super().__init__(dim, channels_first, heads, size if track_usage else None)
        self.levels = levels
        self.codebook_size = codebook_size
        self.eps = eps
        self._per_dim_usage = per_dim
        lv = torch.tensor(levels, dtype=torch.float32)
        self.register_buffer("_levels", lv, persistent=False)
        basis = torch.cumprod(torch.tensor([1] + levels[:-1], dtype=torch.long), dim=0)
        self.register_buffer("_basis", basis, persistent=False)
        self.register_buffer("_basis_f", basis.double(), persistent=False)
        half_l = (lv - 1) * (1 - eps) / 2
        offset = torch.where(torch.tensor(levels) % 2 == 0, 0.5, 0.0)
        self.register_buffer("_half_l", half_l, persistent=False)
        self.register_buffer("_offset", offset, persistent=False)
        self.register_buffer("_shift", torch.atanh(offset / half_l), persistent=False)
        self.register_buffer("_half_width", torch.floor(lv / 2), persistent=False)
        self.project_in = nn.Linear(dim, n) if dim != n else nn.Identity()
        self.project_out = nn.Linear(n, dim) if dim != n else nn.Identity()

    def bound(self, z: Tensor) -> Tensor:
        """Squash z so that rounding gives exactly levels[i] integer values per dimension."""
        return torch.tanh(z + self._shift) * self._half_l - self._offset

    def _quantize(self, x: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        z = self.project_in(x)
        b = self.bound(z)
        rounded = torch.round(b).detach()
        q = straight_through(b, rounded) / self._half_width  # straight-through rounding, values in [-1, 1]
        level_idx = rounded + self._half_width  # 0 .. L-1 per dimension, as floats
        if self._per_dim_usage:
            idx = level_idx.long()  # (N, n): the mixed-radix index may overflow int64
        else:
            # mixed-radix index as one float64 matrix-vector product (exact below 2^53; autocast leaves float64 alone)
            idx = (level_idx.double() @ self._basis_f).long()
        return self.project_out(q), idx, {}

    def codes_from_levels(self, level_idx: Tensor) -> Tensor:
        """Per-dimension level indices (..., n) -> normalized codes in [-1, 1] (before project_out)."""
        return (level_idx.to(self._half_width.dtype) - self._half_width) / self._half_width

    def _codes(self, indices: Tensor) -> Tensor:
        if self._per_dim_usage:
            level_idx = indices
        else:
            if bool((indices < 0).any()) or bool((indices >= self.codebook_size).any()):
                raise ValueError(f"FSQ: indices must lie in [0, {self.codebook_size}), got values outside")
            level_idx = (indices[..., None] // self._basis) % self._levels.long()
        return self.project_out(self.codes_from_levels(level_idx))

    def _usage_sizes(self) -> Tensor:
        if self._per_dim_usage:
            return self._levels.double().cpu()
        return super()._usage_sizes()
