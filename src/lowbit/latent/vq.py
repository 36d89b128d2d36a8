"""Vector quantization (van den Oord et al., 2017, VQ-VAE) and residual VQ (Zeghidour et al., 2021)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lowbit.quantizers.ste import straight_through

from .common import LatentQuantizer

__all__ = ["VectorQuantize", "ResidualVQ", "kmeans"]


def _assign(z: Tensor, codebook: Tensor, cosine: bool, chunk: int = 1 << 23) -> Tensor:
    """Index of the nearest code for each row of z (Euclidean, or max dot product for unit vectors)."""
    n, k = z.shape[0], codebook.shape[0]
    rows = max(1, chunk // max(k, 1))  # tokens x codes score block of ~8M floats (32 MB)
    out = torch.empty(n, dtype=torch.long, device=z.device)
    if cosine:
        lhs, rhs = z, codebook.t()
    else:
        # argmin ||c||^2 - 2 z.c as one matmul: [z, 1] @ [-2 c, ||c||^2]^T (||z||^2 is constant per row)
        lhs = torch.cat([z, z.new_ones(n, 1)], dim=1)
        rhs = torch.cat([-2.0 * codebook, (codebook * codebook).sum(1, keepdim=True)], dim=1).t().contiguous()
    for s in range(0, n, rows):
        scores = lhs[s : s + rows] @ rhs
        out[s : s + rows] = scores.argmax(dim=1) if cosine else scores.argmin(dim=1)
    return out


@torch.no_grad()
def kmeans(
    z: Tensor, k: int, iters: int = 10, cosine: bool = False, generator: torch.Generator | None = None
) -> Tensor:
    """Lloyd's k-means on rows of z; empty clusters keep their previous centre. Returns (k, d) centres."""
    n = z.shape[0]
    pick = (
        torch.randint(n, (k,), generator=generator) if n < k else torch.randperm(n, generator=generator)[:k]
    )
    centres = z[pick.to(z.device)].clone()
    for _ in range(iters):
        idx = _assign(z, centres, cosine)
        counts = torch.bincount(idx, minlength=k).to(z.dtype)
        sums = torch.zeros_like(centres).index_add_(0, idx, z)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled, None]
        if cosine:
            centres = F.normalize(centres, dim=-1)
    return centres


def rotation_trick(z: Tensor, q: Tensor, eps: float = 1e-6) -> Tensor:
    """Rotation trick (Fifty et al., 2024): value q, gradient through a fixed rotation and scale of z."""
    z_norm = z.norm(dim=-1, keepdim=True).clamp_min(eps)
    q_norm = q.norm(dim=-1, keepdim=True)
    e = (z / z_norm).detach()
    q_hat = (q / q_norm.clamp_min(eps)).detach()
    r = F.normalize(e + q_hat, dim=-1, eps=eps).detach()
    scale = (q_norm / z_norm).detach()
    # R z = z - 2 r (r.z) + 2 q_hat (e.z), R maps e onto q_hat; value equals q exactly (up to rounding).
    rz = z - 2 * r * (r * z).sum(-1, keepdim=True) + 2 * q_hat * (e * z).sum(-1, keepdim=True)
    out = scale * rz
    return straight_through(out, q)  # remove rounding drift from the value, keep the rotated gradient


class VectorQuantize(LatentQuantizer):
    """Vector quantization with EMA or learnable codebook (VQ-VAE, van den Oord et al., 2017)."""

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        codebook_dim: int | None = None,
        distance: Literal["euclidean", "cosine"] = "euclidean",
        ema: bool = True,
        decay: float = 0.99,
        eps: float = 1e-5,
        commitment_weight: float = 0.25,
        codebook_weight: float = 1.0,
        kmeans_init: bool = False,
        kmeans_iters: int = 10,
        dead_code_threshold: float = 0.0,
        gradient: Literal["ste", "rotation"] = "ste",
        channels_first: bool = False,
        track_usage: bool = True,
    ) -> None:
        if not isinstance(codebook_size, int) or codebook_size < 2:
            raise ValueError(f"VectorQuantize: codebook_size must be an integer >= 2, got {codebook_size!r}")
        if distance not in ("euclidean", "cosine"):
            raise ValueError(f"VectorQuantize: distance must be 'euclidean' or 'cosine', got {distance!r}")
        if gradient not in ("ste", "rotation"):
            raise ValueError(f"VectorQuantize: gradient must be 'ste' or 'rotation', got {gradient!r}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"VectorQuantize: decay must be in [0, 1), got {decay}")
        super().__init__(dim, channels_first, 1, codebook_size if track_usage else None)
        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim or dim
        self.cosine = distance == "cosine"
        self.ema = ema
        self.decay = decay
        self.eps = eps
        self.commitment_weight = commitment_weight
        self.codebook_weight = codebook_weight
        self.kmeans_iters = kmeans_iters
        self.dead_code_threshold = dead_code_threshold
        self.gradient = gradient
        has_proj = self.codebook_dim != dim
        self.project_in = nn.Linear(dim, self.codebook_dim) if has_proj else nn.Identity()
        self.project_out = nn.Linear(self.codebook_dim, dim) if has_proj else nn.Identity()

        init = torch.randn(codebook_size, self.codebook_dim)
        if self.cosine:
            init = F.normalize(init, dim=-1)
        if ema:
            self.register_buffer("embed", init)
            self.register_buffer("embed_avg", init.clone())
        else:
            self.embed = nn.Parameter(init)
        self.register_buffer("cluster_size", torch.ones(codebook_size))  # EMA counts (prior weight 1)
        # EMA of per-step hits from zero: a code is dead while this stays below dead_code_threshold
        self.register_buffer("hits_ema", torch.zeros(codebook_size))
        self.register_buffer("initted", torch.tensor(not kmeans_init))
        self.replaced = 0  # codes replaced by dead-code replacement so far (statistics, not state)

    # ----------------------------------------------------------------- codebook maintenance
    @torch.no_grad()
    def _init_kmeans(self, z: Tensor) -> None:
        centres = kmeans(z.detach().float(), self.codebook_size, self.kmeans_iters, self.cosine)
        self.embed.data.copy_(centres)
        if self.ema:
            self.embed_avg.copy_(centres)
        self.cluster_size.fill_(1.0)
        self.initted.fill_(True)

    @torch.no_grad()
    def _ema_update(self, z: Tensor, idx: Tensor) -> None:
        counts = torch.bincount(idx, minlength=self.codebook_size).to(z.dtype)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.hits_ema.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        if not self.ema:
            return
        sums = torch.zeros_like(self.embed_avg).index_add_(0, idx, z)
        self.embed_avg.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (
            (self.cluster_size + self.eps) / (n + self.codebook_size * self.eps) * n
        )  # Laplace smoothing
        new = self.embed_avg / smoothed[:, None]
        self.embed.copy_(F.normalize(new, dim=-1) if self.cosine else new)

    @torch.no_grad()
    def _replace_dead(self, z: Tensor) -> None:
        dead = (self.hits_ema < self.dead_code_threshold).nonzero().squeeze(1)
        if dead.numel() == 0:
            return
        # One distinct batch vector per replaced code: with more dead codes than tokens, a random subset is
        # replaced now and the rest in later steps (copies of one vector would split one cluster and die again).
        n = min(dead.numel(), z.shape[0])
        if n < dead.numel():
            dead = dead[torch.randperm(dead.numel(), device=z.device)[:n]]
        pick = torch.randperm(z.shape[0], device=z.device)[:n]
        new = z[pick] + 1e-3 * z.std(dim=0) * torch.randn(n, z.shape[1], device=z.device, dtype=z.dtype)
        if self.cosine:
            new = F.normalize(new, dim=-1)
        self.embed.data[dead] = new
        # Restart replaced codes at twice the threshold: they get ~ln(2) / (1 - decay) steps to attract data.
        self.hits_ema[dead] = 2.0 * self.dead_code_threshold
        self.cluster_size[dead] = 1.0
        if self.ema:
            self.embed_avg[dead] = new
        self.replaced += n

    # ----------------------------------------------------------------- quantization
    def _project(self, z: Tensor) -> Tensor:
        z = self.project_in(z)
        return F.normalize(z, dim=-1) if self.cosine else z

    def _lookup(self, z: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Nearest codes for projected tokens z (no gradient trick); updates the codebook in training."""
        if self.training and not bool(self.initted):
            self._init_kmeans(z)
        idx = _assign(z.detach(), self.embed.detach(), self.cosine)
        q = F.embedding(idx, self.embed)
        losses: dict[str, Tensor] = {}
        if self.commitment_weight > 0:
            losses["commitment"] = self.commitment_weight * F.mse_loss(z, q.detach())
        if not self.ema and self.codebook_weight > 0:
            losses["codebook"] = self.codebook_weight * F.mse_loss(q, z.detach())
        if self.training:
            self._ema_update(z.detach(), idx)
            if self.dead_code_threshold > 0:
                self._replace_dead(z.detach())
        return q, idx, losses

    def _quantize(self, x: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        z = self._project(x)
        q, idx, losses = self._lookup(z)
        if self.gradient == "rotation":
            out = rotation_trick(z, q.detach())
        else:
            # straight-through; a learnable codebook is trained by the codebook loss (as in VQ-VAE)
            out = straight_through(z, q)
        return self.project_out(out), idx, losses

    def _codes(self, indices: Tensor) -> Tensor:
        return self.project_out(F.embedding(indices, self.embed))


class ResidualVQ(LatentQuantizer):
    """Residual VQ: each stage quantizes the previous residual (SoundStream, Zeghidour et al., 2021)."""

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        num_quantizers: int,
        codebook_dim: int | None = None,
        channels_first: bool = False,
        track_usage: bool = True,
        **vq_kwargs,
    ) -> None:
        if not isinstance(num_quantizers, int) or num_quantizers < 1:
            raise ValueError(f"ResidualVQ: num_quantizers must be a positive integer, got {num_quantizers!r}")
        if vq_kwargs.get("distance", "euclidean") != "euclidean":
            raise ValueError("ResidualVQ: residuals are not unit vectors; use distance='euclidean'")
        super().__init__(dim, channels_first, num_quantizers, codebook_size if track_usage else None)
        self.codebook_size = codebook_size
        self.num_quantizers = num_quantizers
        self.codebook_dim = codebook_dim or dim
        has_proj = self.codebook_dim != dim
        self.project_in = nn.Linear(dim, self.codebook_dim) if has_proj else nn.Identity()
        self.project_out = nn.Linear(self.codebook_dim, dim) if has_proj else nn.Identity()
        self.layers = nn.ModuleList(
            VectorQuantize(self.codebook_dim, codebook_size, track_usage=False, **vq_kwargs)
            for _ in range(num_quantizers)
        )

    def _quantize(self, x: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        z = self.project_in(x)
        residual = z
        total = torch.zeros_like(z)
        indices, losses = [], {}
        for layer in self.layers:
            q, idx, layer_losses = layer._lookup(residual)
            total = total + q
            residual = residual - q.detach()
            indices.append(idx)
            for name, value in layer_losses.items():
                losses[name] = losses.get(name, 0.0) + value
        # One straight-through estimator for the whole stack: d out / d z = identity.
        out = straight_through(z, total)
        return self.project_out(out), torch.stack(indices, dim=-1), losses

    def _codes(self, indices: Tensor) -> Tensor:
        if indices.shape[-1] != self.num_quantizers:
            raise ValueError(
                f"ResidualVQ: indices must end with a dimension of num_quantizers={self.num_quantizers}, "
                f"got shape {tuple(indices.shape)}"
            )
        total = sum(F.embedding(indices[..., i], layer.embed) for i, layer in enumerate(self.layers))
        return self.project_out(total)
