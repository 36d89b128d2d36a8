"""Shared base for latent quantizers: one interface, input checks, channels-first flag, usage statistics."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["LatentQuantizer", "check_power_of_two", "check_levels"]

# Above this many codes per head a full histogram is not kept (see FSQ with huge level products).
MAX_HISTOGRAM = 1 << 24


def histogram_usage(counts: Tensor, sizes: Tensor) -> tuple[Tensor, Tensor]:
    """Per row of code counts [heads, K]: the fraction of the row's `sizes` codes used, and exp(entropy)."""
    counts = counts.double()
    p = counts / counts.sum(dim=1).clamp_min(1)[:, None]
    entropy = -(p * torch.log(p.clamp_min(1e-300))).sum(dim=1)
    return (counts > 0).sum(dim=1).double() / sizes.double(), torch.exp(entropy)


def check_power_of_two(name: str, codebook_size: int) -> int:
    """Return log2(codebook_size), or raise a ValueError naming the nearest valid sizes."""
    if not isinstance(codebook_size, int) or codebook_size < 2:
        raise ValueError(f"{name}: codebook_size must be an integer >= 2, got {codebook_size!r}")
    bits = codebook_size.bit_length() - 1
    if 1 << bits != codebook_size:
        raise ValueError(
            f"{name}: codebook_size must be a power of 2 (one code per sign pattern of log2(K) bits), "
            f"got {codebook_size}; use {1 << bits} or {1 << (bits + 1)}"
        )
    return bits


def check_levels(name: str, levels: list[int]) -> list[int]:
    """Validate a list of per-dimension level counts (each an integer >= 2)."""
    levels = [int(v) for v in levels]
    if len(levels) == 0:
        raise ValueError(f"{name}: levels must be a non-empty list of integers >= 2")
    bad = [v for v in levels if v < 2]
    if bad:
        raise ValueError(
            f"{name}: every level count must be >= 2 (a dimension with one value carries no information), "
            f"got levels={levels}; raise {bad} to 2 or more, or drop those dimensions"
        )
    return levels


class LatentQuantizer(nn.Module):
    """Common interface: forward(x) -> (quantized, indices, losses), indices_to_codes, codebook_usage."""

    def __init__(
        self,
        dim: int,
        channels_first: bool = False,
        usage_heads: int = 1,
        usage_size: int | None = None,
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"{type(self).__name__}: dim must be a positive integer, got {dim!r}")
        self.dim = dim
        self.channels_first = channels_first
        self.check_finite = check_finite
        self.usage_heads = usage_heads
        self.usage_size = usage_size if usage_size is not None and usage_size <= MAX_HISTOGRAM else None
        size = (usage_heads, self.usage_size) if self.usage_size is not None else (0, 0)
        # Statistics, not model state: kept out of state_dict.
        self.register_buffer("usage_counts", torch.zeros(size, dtype=torch.long), persistent=False)

    # ----------------------------------------------------------------- input handling
    def _check_input(self, x: Tensor, dim: int | None = None, what: str = "input") -> None:
        name = type(self).__name__
        dim = self.dim if dim is None else dim
        if not isinstance(x, Tensor):
            raise TypeError(f"{name}: {what} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(
                f"{name}: {what} must be a floating-point tensor, got dtype {x.dtype}; call .float()"
            )
        if x.ndim < 2:
            raise ValueError(
                f"{name}: {what} must have shape (batch, ..., {dim}) (at least 2 dims), got {tuple(x.shape)}"
            )
        axis = 1 if self.channels_first else -1
        if x.shape[axis] != dim:
            layout = (
                "channels-first (batch, dim, ...)"
                if self.channels_first
                else "channels-last (batch, ..., dim)"
            )
            hint = (
                "pass channels_first=False for (batch, ..., dim) inputs"
                if self.channels_first
                else "pass channels_first=True for (batch, dim, ...) inputs such as conv feature maps"
            )
            raise ValueError(
                f"{name}: expected {what} in {layout} layout with {dim} channels, got shape {tuple(x.shape)} "
                f"(size {x.shape[axis]} on that axis); project the features to {dim} channels or {hint}"
            )
        # One sum is NaN/inf if any element is (a cheap reduction); count the bad values only then.
        if self.check_finite and not bool(torch.isfinite(x.detach().sum())):
            n_bad = int((~torch.isfinite(x)).sum())
            if n_bad == 0:  # the sum overflowed on large finite values
                return
            raise ValueError(
                f"{name}: {what} contains {n_bad} NaN/inf values; the encoder diverged or the data is bad "
                "(check the learning rate, use float32 rather than fp16, or clip gradients)"
            )

    def _to_last(self, x: Tensor) -> Tensor:
        return x.movedim(1, -1) if self.channels_first else x

    def _from_last(self, x: Tensor) -> Tensor:
        return x.movedim(-1, 1) if self.channels_first else x

    # ----------------------------------------------------------------- interface
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Quantize x of shape (batch, ..., dim); returns (quantized, indices, losses)."""
        self._check_input(x)
        z = self._to_last(x)
        lead = z.shape[:-1]
        q, idx, losses = self._quantize(z.reshape(-1, self.dim))
        self._record_usage(idx)
        q = self._from_last(q.reshape(*lead, q.shape[-1]))
        idx = idx.reshape(*lead, *idx.shape[1:])
        return q, idx, losses

    def _quantize(self, z: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Quantize flat tokens z (N, dim); return (quantized (N, dim), indices (N, ...), losses)."""
        raise NotImplementedError

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """Map indices (as returned by forward) back to quantized vectors (layout as forward's output)."""
        if not isinstance(indices, Tensor) or indices.dtype in (torch.float16, torch.float32, torch.float64):
            raise TypeError(f"{type(self).__name__}: indices must be an integer tensor")
        codes = self._codes(indices.long())
        if self.channels_first:
            # indices carry no channel axis; put the channel axis after batch as forward does.
            codes = codes.movedim(-1, 1)
        return codes

    def _codes(self, indices: Tensor) -> Tensor:
        raise NotImplementedError

    # ----------------------------------------------------------------- usage statistics
    @torch.no_grad()
    def _record_usage(self, idx: Tensor) -> None:
        """Add indices (N,) or (N, heads) to the running histogram (one bincount)."""
        if self.usage_size is None:
            return
        flat = idx.reshape(-1, self.usage_heads)
        if self.usage_heads > 1:
            offs = torch.arange(self.usage_heads, device=flat.device) * self.usage_size
            flat = flat + offs
        counts = torch.bincount(flat.reshape(-1), minlength=self.usage_heads * self.usage_size)
        self.usage_counts += counts.view(self.usage_heads, self.usage_size)

    def reset_usage(self) -> None:
        """Clear the running code histogram."""
        self.usage_counts.zero_()

    def _usage_sizes(self) -> Tensor:
        """Number of valid codes per head (LatentQuantize overrides for mixed level counts)."""
        return torch.full((self.usage_heads,), float(self.usage_size or 0))

    def codebook_usage(self) -> dict[str, float]:
        """Fraction of codes used and perplexity of the histogram since the last reset_usage()."""
        if self.usage_size is None:
            raise RuntimeError(
                f"{type(self).__name__}: codebook too large for a histogram (> {MAX_HISTOGRAM} codes)"
            )
        total = self.usage_counts.sum(dim=1)
        used, perplexity = histogram_usage(self.usage_counts, self._usage_sizes())
        return {
            "used_fraction": float(used.mean()),
            "perplexity": float(perplexity.mean()),
            "max_perplexity": float(self._usage_sizes().double().mean()),
            "tokens": int(total[0]) if total.numel() else 0,
            "heads": self.usage_heads,
            "bits": math.log2(float(self._usage_sizes().double().mean())),
        }
