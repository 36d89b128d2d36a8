"""Latent quantization: a learnable scalar codebook per latent dimension (Hsu et al., 2023, QLAE).

The implicit product codebook (prod_i levels[i] codes) is never materialised: quantization is a nearest-value
search per dimension, O(tokens x dim x max(levels)) memory. Indices are per dimension, shape (..., dim).
Losses follow QLAE's names: quantization = ||sg(z_c) - z_q||^2 (trains the values),
commitment = ||z_c - sg(z_q)||^2 (trains the encoder); both are means over tokens and dimensions.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lowbit.quantizers.ste import straight_through

from .common import LatentQuantizer, check_levels

__all__ = ["LatentQuantize"]


class LatentQuantize(LatentQuantizer):
    """Per-dimension learnable scalar codebooks, nearest-value quantization (QLAE, Hsu et al., 2023)."""

    def __init__(
        self,
        levels: int | list[int],
        dim: int | None = None,
        quantization_weight: float = 1.0,
        commitment_weight: float = 1.0,
        learnable: bool = True,
        value_range: tuple[float, float] = (-0.5, 0.5),
        channels_first: bool = False,
        track_usage: bool = True,
    ) -> None:
        if isinstance(levels, int):
            if dim is None:
                raise ValueError(
                    "LatentQuantize: with a single level count pass dim= (the number of latents)"
                )
            levels = [levels] * dim
        levels = check_levels("LatentQuantize", levels)
        dim = dim or len(levels)
        if dim != len(levels):
            raise ValueError(
                f"LatentQuantize: got {len(levels)} level counts for dim={dim}; give one per latent"
            )
        max_l = max(levels)
        super().__init__(dim, channels_first, dim, max_l if track_usage else None)
        self.levels = levels
        self.quantization_weight = quantization_weight
        self.commitment_weight = commitment_weight
        lo, hi = value_range
        values = torch.zeros(dim, max_l)
        valid = torch.zeros(dim, max_l, dtype=torch.bool)
        for i, n in enumerate(levels):
            values[i, :n] = torch.linspace(lo, hi, n)
            values[i, n:] = values[i, n - 1]  # padding, masked out of the search
            valid[i, :n] = True
        self.values = nn.Parameter(values, requires_grad=learnable)
        self.register_buffer("_valid", valid, persistent=False)
        self.register_buffer("_num_levels", torch.tensor(levels, dtype=torch.float64), persistent=False)

    def _quantize(self, z: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        with torch.no_grad():
            dist = (z.detach()[:, :, None] - self.values[None]).abs()
            dist = dist.masked_fill(~self._valid[None], float("inf"))
            idx = dist.argmin(dim=-1)  # (N, dim)
        zq = torch.gather(self.values.expand(z.shape[0], -1, -1), 2, idx[..., None]).squeeze(-1)
        zq = zq.to(z.dtype)
        losses = {
            "quantization": self.quantization_weight * (z.detach() - zq).square().mean(),
            "commitment": self.commitment_weight * (z - zq.detach()).square().mean(),
        }
        out = straight_through(z, zq)  # straight-through to the encoder
        return out, idx, losses

    def _codes(self, indices: Tensor) -> Tensor:
        if indices.shape[-1] != self.dim:
            raise ValueError(
                f"LatentQuantize: indices must end with dim={self.dim}, got {tuple(indices.shape)}"
            )
        if bool((indices < 0).any()) or bool((indices >= self._num_levels.to(indices.device).long()).any()):
            raise ValueError(f"LatentQuantize: index out of range for levels {self.levels}")
        lead = indices.shape[:-1]
        flat = indices.reshape(-1, self.dim)
        return torch.gather(self.values.expand(flat.shape[0], -1, -1), 2, flat[..., None]).reshape(
            *lead, self.dim
        )

    def _usage_sizes(self) -> Tensor:
        return self._num_levels.cpu()
