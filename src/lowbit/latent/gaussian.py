"""Gaussian Quant and its target divergence constraint (Xu et al., 2025, VQ using Gaussian VAE).

GQ turns a trained Gaussian VAE into a VQ-VAE without training: the codebook is K points of a scrambled Sobol
sequence pushed through the inverse normal CDF (regenerated from the seed, never stored), latent channels are
split into groups of ``group`` dimensions, and each group is coded by the codebook entry with the largest
importance ratio log N(c; mu, sigma) - beta log N(c; 0, I) (or, optionally, the one nearest to mu).
The TDC regulariser trains the VAE so that each group's KL (in bits) sits near log2 K.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn
from torch.quasirandom import SobolEngine

from lowbit.quantizers.ste import straight_through

from .common import LatentQuantizer

__all__ = ["GaussianQuant", "TDC", "gaussian_codebook"]

LN2 = math.log(2.0)


def gaussian_codebook(codebook_size: int, group: int, seed: int = 42) -> Tensor:
    """K x group standard-normal codebook: scrambled Sobol points through the inverse normal CDF."""
    engine = SobolEngine(dimension=group, scramble=True, seed=seed)
    u = engine.draw(codebook_size, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    return torch.special.ndtri(u).float()


def _to_groups(z: Tensor, group: int, strided: bool) -> Tensor:
    """(N, C) -> (N, C // group, group); strided: group j holds channels j, j + C/group, ..."""
    n, c = z.shape
    if strided:
        return z.reshape(n, group, c // group).transpose(1, 2)
    return z.reshape(n, c // group, group)


def _from_groups(g: Tensor, strided: bool) -> Tensor:
    n, ng, group = g.shape
    if strided:
        return g.transpose(1, 2).reshape(n, ng * group)
    return g.reshape(n, ng * group)


class TDC(nn.Module):
    """Target divergence constraint: per-group KL (bits) kept in log2 K +- tolerance by adaptive weights."""

    def __init__(
        self,
        codebook_size: int,
        dim: int,
        group: int,
        tolerance: float = 0.5,
        factor: float = 1.01,
        lam_range: tuple[float, float] = (1e-3, 1e3),
        strided: bool = True,
        channels_first: bool = False,
        logvar_range: tuple[float, float] = (-30.0, 20.0),
        global_weight: bool = False,
    ) -> None:
        super().__init__()
        if dim % group != 0:
            raise ValueError(f"TDC: dim={dim} must be divisible by group={group}")
        if factor <= 1.0:
            raise ValueError(f"TDC: factor must be > 1 (it multiplies or divides the weights), got {factor}")
        self.target = math.log2(codebook_size)
        self.dim, self.group, self.tolerance, self.factor = dim, group, tolerance, factor
        self.lam_range = lam_range
        self.strided, self.channels_first = strided, channels_first
        self.logvar_range = logvar_range
        # The global lam is tracked but, as in the reference code, not applied by default: applied, it shrinks
        # whenever the mean KL is below target and so cancels lam_max on the groups above the band (measured:
        # lam x lam_max ~ 5 after 500 steps, 22% of groups above the band, q95 of 27 bits against 16).
        self.global_weight = global_weight
        # Adaptive weights live in the state_dict so training can resume.
        self.register_buffer("lam", torch.tensor(1.0, dtype=torch.float64))
        self.register_buffer("lam_max", torch.tensor(1.0, dtype=torch.float64))
        self.register_buffer("lam_min", torch.tensor(1.0, dtype=torch.float64))
        self.register_buffer("steps", torch.tensor(0, dtype=torch.long))

    def group_kl_bits(self, mu: Tensor, logvar: Tensor) -> Tensor:
        """KL(N(mu, sigma) || N(0, I)) in bits per token and group: shape (tokens, C // group)."""
        if self.channels_first:
            mu, logvar = mu.movedim(1, -1), logvar.movedim(1, -1)
        logvar = logvar.clamp(*self.logvar_range)
        kl = 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar) / LN2
        return _to_groups(kl.reshape(-1, self.dim), self.group, self.strided).sum(dim=-1)

    def forward(self, mu: Tensor, logvar: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Weighted KL loss (bits, summed over tokens and groups, mean over batch) and statistics."""
        if mu.shape != logvar.shape:
            raise ValueError(
                f"TDC: mu {tuple(mu.shape)} and logvar {tuple(logvar.shape)} must have one shape"
            )
        kl = self.group_kl_bits(mu, logvar)
        hi, lo = self.target + self.tolerance, self.target - self.tolerance
        weight = torch.where(
            kl > hi,
            self.lam_max.to(kl.dtype),
            torch.where(kl < lo, self.lam_min.to(kl.dtype), kl.new_ones(())),
        )
        loss = (weight.detach() * kl).sum() / mu.shape[0]
        if self.global_weight:
            loss = self.lam.to(kl.dtype) * loss
        kl_d = kl.detach()
        mean, kmin, kmax = float(kl_d.mean()), float(kl_d.min()), float(kl_d.max())
        if self.training:
            self._update(mean, kmin, kmax)
        stats = {
            "bits_mean": mean,
            "bits_min": kmin,
            "bits_max": kmax,
            "in_band": float(((kl_d >= lo) & (kl_d <= hi)).float().mean()),
            "lam": float(self.lam),
            "lam_max": float(self.lam_max),
            "lam_min": float(self.lam_min),
        }
        return loss, stats

    @torch.no_grad()
    def _update(self, mean: float, kmin: float, kmax: float) -> None:
        f, (low, high) = self.factor, self.lam_range
        self.lam.mul_(f if mean > self.target else 1.0 / f).clamp_(low, high)
        self.lam_max.mul_(f if kmax > self.target + self.tolerance else 1.0 / f).clamp_(1.0, high)
        self.lam_min.mul_(1.0 / f if kmin < self.target - self.tolerance else f).clamp_(low, 1.0)
        self.steps += 1


class GaussianQuant(LatentQuantizer):
    """Gaussian Quant: Gaussian VAE posterior coded with a fixed Sobol-Gaussian codebook (Xu et al., 2025)."""

    def __init__(
        self,
        dim: int,
        codebook_size: int = 1 << 16,
        group: int = 16,
        seed: int = 42,
        selection: Literal["importance", "nearest"] = "importance",
        beta: float = 1.0,
        strided: bool = True,
        straight_through: bool = True,
        logvar_range: tuple[float, float] = (-30.0, 20.0),
        tolerance: float = 0.5,
        tdc_global_weight: bool = False,
        channels_first: bool = False,
        track_usage: bool = True,
        chunk: int = 1 << 23,
    ) -> None:
        if not isinstance(group, int) or group < 1 or dim % group != 0:
            raise ValueError(
                f"GaussianQuant: dim={dim} must be divisible by group={group} (each token is split into "
                f"dim // group groups of group channels); choose group from "
                f"{[g for g in range(1, dim + 1) if dim % g == 0]}"
            )
        if not isinstance(codebook_size, int) or codebook_size < 2:
            raise ValueError(f"GaussianQuant: codebook_size must be an integer >= 2, got {codebook_size!r}")
        if selection not in ("importance", "nearest"):
            raise ValueError(f"GaussianQuant: selection must be 'importance' or 'nearest', got {selection!r}")
        # usage per group (one head each): the codebook is shared, but each group's codes are counted on their own
        super().__init__(dim, channels_first, dim // group, codebook_size if track_usage else None)
        self.codebook_size, self.group, self.seed = codebook_size, group, seed
        self.num_groups = dim // group
        self.selection, self.beta, self.strided = selection, beta, strided
        self.straight_through = straight_through
        self.logvar_range = logvar_range
        self.chunk = chunk
        cb = gaussian_codebook(codebook_size, group, seed)
        self.register_buffer("codebook", cb, persistent=False)  # regenerated from the seed, not stored
        self.register_buffer("_features", torch.cat([cb.square(), cb], dim=1), persistent=False)
        self.tdc = TDC(
            codebook_size,
            dim,
            group,
            tolerance,
            strided=strided,
            channels_first=channels_first,
            logvar_range=logvar_range,
            global_weight=tdc_global_weight,
        )

    def tdc_loss(self, mu: Tensor, logvar: Tensor) -> tuple[Tensor, dict[str, float]]:
        """TDC regulariser for training the Gaussian VAE (same layout as forward)."""
        self._check_input(mu, what="mu")
        self._check_input(logvar, what="logvar")
        return self.tdc(mu, logvar)

    def forward(self, x: Tensor, logvar: Tensor | None = None) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Code posterior means x (log-variances for importance selection); returns (codes, indices, {})."""
        self._check_input(x, what="mu")
        if logvar is not None:
            self._check_input(logvar, what="logvar")
            if logvar.shape != x.shape:
                raise ValueError(
                    f"GaussianQuant: logvar {tuple(logvar.shape)} must match mu {tuple(x.shape)}"
                )
        elif self.selection == "importance":
            raise ValueError(
                "GaussianQuant: selection='importance' needs the posterior log-variance; call gq(mu, logvar) "
                "or construct with selection='nearest'"
            )
        mu = self._to_last(x)
        lead = mu.shape[:-1]
        lv = self._to_last(logvar).reshape(-1, self.dim) if logvar is not None else None
        q, idx = self._select(mu.reshape(-1, self.dim), lv)
        self._record_usage(idx)
        q = self._from_last(q.reshape(*lead, self.dim))
        return q, idx.reshape(*lead, self.num_groups), {}

    @torch.no_grad()
    def select_indices(self, mu_g: Tensor, logvar_g: Tensor | None) -> Tensor:
        """Codebook index per grouped token (M, group): importance ratio or nearest mean, chunked."""
        mu_g = mu_g.float()
        if self.selection == "importance" and logvar_g is not None:
            inv_var = torch.exp(-logvar_g.float().clamp(*self.logvar_range))
            # sum_d [log N(c; mu, s) - beta log N(c; 0, 1)] = sum_d c^2 (beta - 1/s^2)/2 + c mu / s^2 + const
            w = torch.cat([0.5 * (self.beta - inv_var), mu_g * inv_var], dim=1)
        else:  # nearest mean: argmax 2 c.mu - |c|^2
            w = torch.cat([torch.full_like(mu_g, -1.0), 2.0 * mu_g], dim=1)
        rows = max(1, self.chunk // self.codebook_size)
        out = torch.empty(w.shape[0], dtype=torch.long, device=w.device)
        feats_t = self._features.t()
        for s in range(0, w.shape[0], rows):
            out[s : s + rows] = (w[s : s + rows] @ feats_t).argmax(dim=1)
        return out

    def _select(self, mu: Tensor, logvar: Tensor | None) -> tuple[Tensor, Tensor]:
        n = mu.shape[0]
        mu_g = _to_groups(mu, self.group, self.strided).reshape(-1, self.group)
        lv_g = (
            None if logvar is None else _to_groups(logvar, self.group, self.strided).reshape(-1, self.group)
        )
        idx = self.select_indices(mu_g.detach(), None if lv_g is None else lv_g.detach())
        codes = _from_groups(self.codebook[idx].view(n, self.num_groups, self.group), self.strided).to(
            mu.dtype
        )
        if self.straight_through:
            codes = straight_through(mu, codes)
        return codes, idx.view(n, self.num_groups)

    def _codes(self, indices: Tensor) -> Tensor:
        if indices.shape[-1] != self.num_groups:
            raise ValueError(
                f"GaussianQuant: indices need last dim {self.num_groups} (groups), got {tuple(indices.shape)}"
            )
        lead = indices.shape[:-1]
        flat = indices.reshape(-1, self.num_groups)
        codes = _from_groups(self.codebook[flat], self.strided)
        return codes.reshape(*lead, self.dim)
