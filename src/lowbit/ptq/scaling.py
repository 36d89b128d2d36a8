"""Per-channel scale migration shared by SmoothQuant, AWQ and CBQ's CFP: which scales fold exactly, and folding.

A scale s on the input channels of a group of linear layers is exact when the layer producing that input
can absorb 1/s: a norm's weight (and bias) or the output rows of a previous linear layer (up -> down,
v -> o when every attention head has its own value head). x W^T = (x / s) (W diag(s))^T.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lowbit.models import BlockInputs
from lowbit.models.families import Family, block_family
from lowbit.quantizers.activation import fp_activations, transform_of


@dataclass(frozen=True)
class ScaleGroup:
    """Linear layers (`consumers`) reading one tensor whose channels `producer` (a norm or a linear) can rescale.

    `offset`: a norm producer multiplies by (offset + weight) (Gemma's RMSNorm: 1), which folding must respect.
    """

    producer: str
    kind: str
    consumers: tuple[str, ...]
    offset: float = 0.0


def scale_groups(block: nn.Module, family: Family | None = None) -> list[ScaleGroup]:
    """The exactly foldable groups of one block (at most one per consumer), from the family's candidates.

    Without a family, the block's own (from the config its modules hold), else the generic naming convention.
    """
    fam = block_family(block, family)
    mods = dict(block.named_modules())
    out: list[ScaleGroup] = []
    taken: set[str] = set()
    for cand in fam.candidates:
        prod, kind, cons = cand.producer, cand.kind, cand.consumers
        if prod not in mods or not all(c in mods for c in cons) or taken & set(cons):
            continue
        if any((t := transform_of(mods[c])) is not None and t.hadamard for c in cons):
            continue  # an online Hadamard between producer and consumer mixes the channels
        if kind == "linear":
            p = mods[prod]
            if not isinstance(p, nn.Linear) or p.out_features != mods[cons[0]].in_features:
                continue  # e.g. grouped-query attention: a value head feeds several heads of o_proj
        out.append(ScaleGroup(prod, kind, cons, fam.norm_offset if kind == "norm" else 0.0))
        taken |= set(cons)
    return out


def fold(block: nn.Module, group: ScaleGroup, s: torch.Tensor) -> None:
    """Divide the producer's output channels by s and multiply the consumers' input columns by s (exact)."""
    mods = dict(block.named_modules())
    prod = mods[group.producer]
    s = s.float()
    with torch.no_grad():
        if group.kind == "norm":
            w = prod.weight
            if group.offset:  # the norm multiplies by (offset + weight)
                w.copy_(((group.offset + w.float()) / s - group.offset).to(w.dtype))
            else:
                w.copy_((w.float() / s).to(w.dtype))
        else:
            prod.weight.copy_((prod.weight.float() / s[:, None]).to(prod.weight.dtype))
        if getattr(prod, "bias", None) is not None:
            prod.bias.copy_((prod.bias.float() / s).to(prod.bias.dtype))
        for c in group.consumers:
            lin = mods[c]
            lin.weight.copy_((lin.weight.float() * s[None, :]).to(lin.weight.dtype))


@dataclass
class ChannelStats:
    """Per-input-channel statistics of one linear layer's input over the calibration tokens, plus a sample."""

    absmax: torch.Tensor
    absmean: torch.Tensor
    sample: torch.Tensor  # [tokens, in] rows drawn at random (for AWQ's search)


def input_stats(block: nn.Module, inputs: BlockInputs, names: list[str], sample_tokens: int = 0,
                seed: int = 0) -> dict[str, ChannelStats]:
    """Statistics of the (full-precision) inputs of the named linear layers over one pass of the calibration data."""
    mods = dict(block.named_modules())
    amax: dict[str, torch.Tensor] = {}
    asum: dict[str, torch.Tensor] = {}
    count: dict[str, int] = {}
    samples: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    g = torch.Generator().manual_seed(seed)
    per_batch = max(1, sample_tokens // max(1, len(inputs.hidden))) if sample_tokens else 0

    def hook(name: str, x: torch.Tensor) -> None:
        x = x.detach().float().reshape(-1, x.shape[-1])
        a = x.abs()
        amax[name] = torch.maximum(amax[name], a.amax(0)) if name in amax else a.amax(0)
        asum[name] = asum[name] + a.sum(0) if name in asum else a.sum(0)
        count[name] = count.get(name, 0) + x.shape[0]
        if per_batch:
            idx = torch.randperm(x.shape[0], generator=g)[:per_batch]
            samples[name].append(x[idx])

    hooks = [mods[n].register_forward_hook(lambda _m, a, _o, n=n: hook(n, a[0])) for n in names]
    try:
        with fp_activations(block):
            inputs.run(block)
    finally:
        for h in hooks:
            h.remove()
    return {n: ChannelStats(amax[n], asum[n] / count[n],
                            torch.cat(samples[n]) if samples[n] else torch.empty(0, amax[n].numel()))
            for n in names}
