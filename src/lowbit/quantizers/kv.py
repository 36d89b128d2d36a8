"""Simulated KV-cache quantization: per-token, per-head dynamic integer keys and values inside attention.

Hook point: the attention function of transformers' attention modules. Every Llama-like family in transformers
5 (Llama, Mistral, Qwen2/3, Phi-3, Gemma) computes q/k/v, applies RoPE (and Qwen3's q/k norms), updates the
cache and then calls `ALL_ATTENTION_FUNCTIONS[config._attn_implementation](module, q, k, v, mask, ...)`.
lowbit registers an attention function `lowbit_kv_<inner>` that fake-quantizes keys and values there, i.e.
keys after RoPE, exactly what a quantized cache would hold, and then calls the original implementation
(`<inner>`: sdpa, eager, ...) with the original mask function. Each (token, head) row of head_dim values gets
its own symmetric scale max|x| / (2^(b-1) - 1); since the quantization is per token, quantizing after the cache
read equals quantizing before the cache write. With `hadamard`, queries and keys are first multiplied by the
same orthonormal Hadamard matrix per head (q k^T is unchanged; QuaRot's online key rotation), which spreads
outlier channels of the keys before they are quantized.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from lowbit.errors import LowbitError
from lowbit.quantizers.activation import fake_quant_tokens
from lowbit.quantizers.hadamard import factor, fwht

KV_BITS = (4, 8, 16)
PREFIX = "lowbit_kv_"


def check_kv_bits(bits: int) -> int:
    """Validate a KV-cache bit width (16 = keys and values left in floating point)."""
    if isinstance(bits, bool) or bits not in KV_BITS:
        raise LowbitError(f"KV-cache bits must be one of {', '.join(map(str, KV_BITS))} (16 = not quantized), "
                          f"got {bits!r}")
    return bits


@dataclass
class KVQuant:
    """What happens to one attention layer's keys and values: optional Hadamard on q/k, then per-token fake quant."""

    bits: int = 16
    hadamard: bool = False
    enabled: bool = field(default=True, compare=False)

    def apply(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Queries, keys and values as the attention should see them ([batch, heads, tokens, head_dim])."""
        if self.hadamard:
            q, k = fwht(q), fwht(k)
        if self.bits < 16 and self.enabled:
            k, v = fake_quant_tokens(k, self.bits), fake_quant_tokens(v, self.bits)
        return q, k, v

    def to_json(self) -> dict:
        """Plain dict for lowbit_quant.json."""
        return {"bits": self.bits, "hadamard": self.hadamard}


def _inner_function(name: str, module: nn.Module):  # -> Callable
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if name in ALL_ATTENTION_FUNCTIONS:
        return ALL_ATTENTION_FUNCTIONS[name]
    eager = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    return eager if eager is not None else ALL_ATTENTION_FUNCTIONS["sdpa"]


def _register(inner: str) -> str:
    """Register `lowbit_kv_<inner>` (attention and mask functions) with transformers; returns the name."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface

    name = PREFIX + inner

    def attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, **kwargs: object) -> tuple:
        kv = getattr(module, "_lowbit_kv", None)
        if kv is not None:
            query, key, value = kv.apply(query, key, value)
        return _inner_function(inner, module)(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register(name, attention)
    if inner in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS._global_mapping[inner])
    return name


class FamilyLike(Protocol):
    """What KV-cache quantization asks of a model family (lowbit.models.families.Family; duck-typed so that
    quantizers/ does not import lowbit.models)."""

    name: str
    kind: str

    def blocks(self, model: nn.Module) -> nn.ModuleList: ...

    def attention(self, block: nn.Module) -> nn.Module | None: ...


def attention_modules(model: nn.Module, family: FamilyLike) -> list[nn.Module]:
    """The self-attention module of every block (clear error for encoders and unknown layouts)."""
    if getattr(family, "kind", None) != "causal":
        raise LowbitError(f"KV-cache quantization is for decoder LMs; {getattr(family, 'name', family)} is an "
                          "encoder without a KV cache")
    mods = []
    for i, block in enumerate(family.blocks(model)):
        attn = family.attention(block)
        if attn is None or not hasattr(attn, "head_dim"):
            raise LowbitError(f"block {i} of {family.name} has no self_attn module with a head_dim; "
                              "KV-cache quantization supports Llama-like attention")
        mods.append(attn)
    return mods


def quantize_kv(model: nn.Module, family: FamilyLike, bits: int, hadamard: bool = False) -> None:
    """Install per-token, per-head fake quantization of keys and values in every attention layer."""
    check_kv_bits(bits)
    mods = attention_modules(model, family)
    if bits == 16 and not hadamard:
        return
    if hadamard:
        factor(int(mods[0].head_dim))  # a clear error if no Hadamard matrix of that order is known
    cfg = model.config  # type: ignore[attr-defined]
    current = cfg._attn_implementation or "eager"
    inner = current[len(PREFIX):] if current.startswith(PREFIX) else current
    name = _register(inner)
    cfg._attn_implementation = name
    for m in mods:
        m._lowbit_kv = KVQuant(bits, hadamard)  # type: ignore[assignment]
        if getattr(m, "config", cfg) is not cfg:
            m.config._attn_implementation = name


def kv_of(model: nn.Module) -> KVQuant | None:
    """The model's KV-cache quantizer (that of its first attention layer), if any."""
    return next((m._lowbit_kv for m in model.modules() if getattr(m, "_lowbit_kv", None) is not None), None)


def to_json(model: nn.Module) -> dict | None:
    """The KV-cache setting for lowbit_quant.json (None when keys and values are untouched)."""
    kv = kv_of(model)
    return None if kv is None else kv.to_json()


def from_json(model: nn.Module, family: FamilyLike, saved: dict) -> None:
    """Re-install a KV-cache setting saved by to_json() (used when a checkpoint is loaded)."""
    if not isinstance(saved, dict) or "bits" not in saved:
        raise LowbitError(f"the checkpoint's kv_cache entry {saved!r} is malformed (want {{bits, hadamard}})")
    quantize_kv(model, family, int(saved["bits"]), bool(saved.get("hadamard", False)))
