"""Lookup-free quantization (Yu et al., 2023, MAGVIT-v2) and binary spherical quantization (Zhao et al. 2024).

Entropy terms without a tokens x K matrix
-----------------------------------------
Both quantizers define a soft code distribution per token, q(k | z) = softmax_k(2 tau z . c_k), over the
codes c_k in {-s, +s}^b. Because ||c_k|| is the same for every k, this distribution factorises over bits
exactly: P(bit i = +1 | z) = sigmoid(a_i) with a_i = 4 tau s z_i. Hence

* the per-sample entropy H(q(.|z)) = sum_i h(sigmoid(a_i)) is exact and costs O(tokens x bits);
* the codebook (batch) entropy H(mean_n q(.|z_n)) does not factorise (the mean of product distributions is
  not a product). We split the bits into groups of ``entropy_group_bits`` bits and, for each group, compute
  the exact entropy of the batch-mean distribution of that group's 2^g codes, chunked over codes with
  activation checkpointing (memory O(tokens x min(2^g, chunk))). The sum over groups is exact when
  ``entropy_group_bits >= bits`` and otherwise an upper bound of the true codebook entropy (subadditivity);
  with ``entropy_group_bits=1`` it is the entropy of the product of per-bit batch marginals (BSQ's
  factorised approximation). The default, 8 bits per group, is exact for K <= 256 and costs
  O(tokens x 256) per group.
Entropies are in nats.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from lowbit.quantizers.ste import straight_through

from .common import LatentQuantizer, check_power_of_two

__all__ = ["LFQ", "BSQ", "bit_entropy", "per_sample_entropy", "codebook_entropy"]


def bit_entropy(a: Tensor) -> Tensor:
    """Entropy (nats) of Bernoulli(sigmoid(a)), computed stably from the logit a."""
    p = torch.sigmoid(a)
    return p * F.softplus(-a) + (1 - p) * F.softplus(a)


def per_sample_entropy(a: Tensor) -> Tensor:
    """Mean over tokens of the exact entropy of the factorised code distribution with bit logits a (N, b)."""
    return bit_entropy(a).sum(dim=-1).mean()


def _code_bits(start: int, end: int, g: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    codes = torch.arange(start, end, device=device)
    shifts = torch.arange(g - 1, -1, -1, device=device)
    return ((codes[:, None] >> shifts) & 1).to(dtype)  # (C, g), most significant bit first


def _chunk_mean_probs(a: Tensor, base: Tensor, bits: Tensor) -> Tensor:
    # log q_n(k) = sum_i log sigmoid(-a_ni) + bits_k . a_n   (log sigmoid(a) = log sigmoid(-a) + a)
    # clamp at -80 (exp = 2e-35): avoids slow denormals; such terms are negligible in the mean
    return torch.exp(torch.addmm(base[:, None], a, bits.t()).clamp_min(-80.0)).mean(dim=0)


def _group_entropy(a: Tensor, chunk: int) -> Tensor:
    """Exact entropy of mean_n prod_i Bernoulli(sigmoid(a_ni)) over the 2^g codes of one group, chunked."""
    g = a.shape[1]
    base = F.logsigmoid(-a).sum(dim=1)
    total = a.new_zeros(())
    for start in range(0, 1 << g, chunk):
        bits = _code_bits(start, min(start + chunk, 1 << g), g, a.device, a.dtype)
        if torch.is_grad_enabled() and a.requires_grad:
            p = checkpoint(_chunk_mean_probs, a, base, bits, use_reentrant=False)
        else:
            p = _chunk_mean_probs(a, base, bits)
        total = total - (p * torch.log(p.clamp_min(1e-30))).sum()
    return total


def codebook_entropy(a: Tensor, group_bits: int = 8, chunk: int = 4096) -> Tensor:
    """Entropy of the batch-mean code distribution, exact within groups of group_bits bits, summed."""
    b = a.shape[1]
    group_bits = max(1, min(group_bits, b))
    if group_bits == 1:  # closed form: entropy of each bit's batch marginal
        p = torch.sigmoid(a).mean(dim=0).clamp(1e-7, 1 - 1e-7)
        return -(p * torch.log(p) + (1 - p) * torch.log1p(-p)).sum()
    return sum(_group_entropy(a[:, s : s + group_bits], chunk) for s in range(0, b, group_bits))


class LFQ(LatentQuantizer):
    """Lookup-free quantization: sign of each of log2(K) dimensions (MAGVIT-v2, Yu et al., 2023)."""

    spherical = False

    def __init__(
        self,
        codebook_size: int,
        dim: int | None = None,
        entropy_weight: float = 0.1,
        commitment_weight: float = 0.25,
        diversity_gamma: float = 1.0,
        inv_temperature: float = 100.0,
        entropy_group_bits: int = 8,
        entropy_chunk: int = 4096,
        codebook_scale: float = 1.0,
        channels_first: bool = False,
        track_usage: bool = True,
    ) -> None:
        name = type(self).__name__
        bits = check_power_of_two(name, codebook_size)
        if bits > 62:
            raise ValueError(f"{name}: at most 2^62 codes fit an int64 index, got 2^{bits}")
        if entropy_group_bits < 1:
            raise ValueError(f"{name}: entropy_group_bits must be >= 1, got {entropy_group_bits}")
        dim = dim or bits
        super().__init__(dim, channels_first, 1, codebook_size if track_usage else None)
        self.codebook_size = codebook_size
        self.bits = bits
        self.entropy_weight = entropy_weight
        self.commitment_weight = commitment_weight
        self.diversity_gamma = diversity_gamma
        self.inv_temperature = inv_temperature
        self.entropy_group_bits = entropy_group_bits
        self.entropy_chunk = entropy_chunk
        self.scale = 1.0 / math.sqrt(bits) if self.spherical else codebook_scale
        self.project_in = nn.Linear(dim, bits) if dim != bits else nn.Identity()
        self.project_out = nn.Linear(bits, dim) if dim != bits else nn.Identity()
        self.register_buffer("_pow2", 2 ** torch.arange(bits - 1, -1, -1, dtype=torch.long), persistent=False)
        self.last_entropy: dict[str, float] = {}

    def bit_logits(self, z: Tensor) -> Tensor:
        """Logit of P(bit = +1) per dimension for (projected, normalised) tokens z: 4 tau s z_i."""
        return (4.0 * self.inv_temperature * self.scale) * z

    def entropy_terms(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """(per-sample entropy, codebook entropy) in nats for projected tokens z (N, bits)."""
        a = self.bit_logits(z.float())
        return per_sample_entropy(a), codebook_entropy(a, self.entropy_group_bits, self.entropy_chunk)

    def _prepare(self, x: Tensor) -> Tensor:
        z = self.project_in(x)
        return F.normalize(z, dim=-1) if self.spherical else z

    def _quantize(self, x: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        z = self._prepare(x)
        positive = z > 0
        q = torch.where(positive, self.scale, -self.scale).to(z.dtype)
        out = straight_through(z, q)
        idx = (positive.long() * self._pow2).sum(dim=-1)
        losses: dict[str, Tensor] = {}
        if self.commitment_weight > 0:
            losses["commitment"] = self.commitment_weight * F.mse_loss(z, q)
        if self.training and self.entropy_weight > 0:
            ps, cb = self.entropy_terms(z)
            losses["entropy"] = self.entropy_weight * (ps - self.diversity_gamma * cb)
            self.last_entropy = {"per_sample": float(ps.detach()), "codebook": float(cb.detach())}
        return self.project_out(out), idx, losses

    def _codes(self, indices: Tensor) -> Tensor:
        if bool((indices < 0).any()) or bool((indices >= self.codebook_size).any()):
            raise ValueError(f"{type(self).__name__}: indices must lie in [0, {self.codebook_size})")
        positive = (indices[..., None] & self._pow2) > 0
        q = torch.where(positive, self.scale, -self.scale).float()
        return self.project_out(q)


class BSQ(LFQ):
    """Binary spherical quantization: LFQ on the unit sphere, codes +-1/sqrt(bits) (Zhao et al., 2024)."""

    spherical = True

    def __init__(
        self,
        codebook_size: int,
        dim: int | None = None,
        entropy_weight: float = 0.1,
        commitment_weight: float = 0.25,
        diversity_gamma: float = 1.0,
        inv_temperature: float = 1.0,
        entropy_group_bits: int = 8,
        entropy_chunk: int = 4096,
        channels_first: bool = False,
        track_usage: bool = True,
    ) -> None:
        super().__init__(
            codebook_size,
            dim=dim,
            entropy_weight=entropy_weight,
            commitment_weight=commitment_weight,
            diversity_gamma=diversity_gamma,
            inv_temperature=inv_temperature,
            entropy_group_bits=entropy_group_bits,
            entropy_chunk=entropy_chunk,
            channels_first=channels_first,
            track_usage=track_usage,
        )
