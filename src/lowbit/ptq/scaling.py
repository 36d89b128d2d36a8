"""Per-channel scale migration shared by SmoothQuant, AWQ and CBQ's CFP: which scales fold exactly, and folding.

A scale s on the input channels of a group of linear layers is exact when the layer producing that input
can absorb 1/s: a norm's weight (and bias) or the output rows of a previous linear layer (up -> down,
v -> o when every attention head has its own value head). x W^T = (x / s) (W diag(s))^T.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lowbit.quantizers.activation import fp_activations, transform_of

# (producer, kind, consumers) candidates by naming convention; those absent from a block are skipped
_CANDIDATES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("input_layernorm", "norm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    ("input_layernorm", "norm", ("self_attn.qkv_proj",)),
    ("post_attention_layernorm", "norm", ("mlp.gate_proj", "mlp.up_proj")),
    ("pre_feedforward_layernorm", "norm", ("mlp.gate_proj", "mlp.up_proj")),
    ("post_attention_layernorm", "norm", ("mlp.gate_up_proj",)),
    ("self_attn.v_proj", "linear", ("self_attn.o_proj",)),
    ("mlp.up_proj", "linear", ("mlp.down_proj",)),
    ("attention.self.value", "linear", ("attention.output.dense",)),
)


@dataclass(frozen=True)
class ScaleGroup:
    """Linear layers (`consumers`) reading one tensor whose channels `producer` (a norm or a linear) can rescale."""

    producer: str
    kind: str
    consumers: tuple[str, ...]


def scale_groups(block: nn.Module) -> list[ScaleGroup]:
    """The exactly foldable groups of one block (at most one per consumer)."""
    mods = dict(block.named_modules())
    out: list[ScaleGroup] = []
    taken: set[str] = set()
    for prod, kind, cons in _CANDIDATES:
        if prod not in mods or not all(c in mods for c in cons) or taken & set(cons):
            continue
        if any(transform_of(mods[c]) is not None and transform_of(mods[c]).hadamard for c in cons):
            continue  # an online Hadamard between producer and consumer mixes the channels
        if kind == "norm" and "post_attention_layernorm" == prod and "pre_feedforward_layernorm" in mods:
            continue  # Gemma-2: the post-attention norm sits on the residual branch, not before the MLP
        if kind == "linear":
            p = mods[prod]
            if not isinstance(p, nn.Linear) or p.out_features != mods[cons[0]].in_features:
                continue  # e.g. grouped-query attention: a value head feeds several heads of o_proj
        out.append(ScaleGroup(prod, kind, cons))
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
            if "Gemma" in type(prod).__name__:  # Gemma's RMSNorm multiplies by (1 + weight)
                w.copy_(((1 + w.float()) / s - 1).to(w.dtype))
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


def input_stats(block: nn.Module, inputs: object, names: list[str], sample_tokens: int = 0,
                seed: int = 0) -> dict[str, ChannelStats]:
    """Statistics of the (full-precision) inputs of the named linear layers over one pass of the calibration data."""
    mods = dict(block.named_modules())
    amax: dict[str, torch.Tensor] = {}
    asum: dict[str, torch.Tensor] = {}
    count: dict[str, int] = {}
    samples: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    g = torch.Generator().manual_seed(seed)
    per_batch = max(1, sample_tokens // max(1, len(inputs.hidden))) if sample_tokens else 0  # type: ignore[attr-defined]

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
            inputs.run(block)  # type: ignore[attr-defined]
    finally:
        for h in hooks:
            h.remove()
    return {n: ChannelStats(amax[n], asum[n] / count[n],
                            torch.cat(samples[n]) if samples[n] else torch.empty(0, amax[n].numel()))
            for n in names}
