"""A lean forward for Llama-like decoders (Llama, Mistral, Qwen2, Qwen3) with a static KV cache, for generation.

transformers' forward costs about a millisecond of Python and dispatch per layer and token, and its CPU
attention kernel is slow for one query; at batch 1 that overhead is as large as the low-bit matmuls. This
module walks the same modules (so packed kernels, activation-quantization hooks and rotations all apply) with
a few tensor ops per layer: RMSNorm through `torch.nn.functional.rms_norm`, rotary tables computed once by
the model's own rotary module, the KV cache preallocated, one-query attention as two small matmuls grouped
by KV head. Its logits equal transformers' to float rounding (tested per family).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from lowbit.kernels.decode import FusedLayer, attention_one, norm_eps, rms_norm
from lowbit.kernels.qlinear import FusedLinears, dense_linear
from lowbit.models.families import REGISTRY, Decode, family_of_model, get_path


def _decode_of(model: nn.Module) -> Decode | None:
    fam = family_of_model(model)
    return fam.decode if fam is not None else None


def unsupported(model: nn.Module) -> str | None:
    """Why `model` cannot run through LeanDecoder, or None if it can."""
    cfg = getattr(model, "config", None)
    mt = getattr(cfg, "model_type", None)
    dec = _decode_of(model)
    if dec is None:
        lean = [f.name for f in REGISTRY if f.decode is not None]
        return f"model type {mt!r} is not one of {', '.join(lean)}"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"activation {cfg.hidden_act!r} (only silu)"
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", dec.sliding_window_default):
        return "sliding-window attention"
    if any(get_path(model, p) is None for p in (dec.rotary, dec.head)) or get_path(model, dec.layers) is None:
        return f"no {dec.rotary} / {dec.head}"
    for layer in get_path(model, dec.layers):
        a = getattr(layer, dec.attn)
        if a._forward_hooks or a._forward_pre_hooks or layer._forward_hooks or layer._forward_pre_hooks:
            return "hooks on attention or decoder layers"
    return None


def _rms(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """transformers' RMSNorm: normalise in fp32, back to the input dtype, times the weight."""
    return rms_norm(x, norm.weight, norm_eps(norm))


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding in the rotate-half convention, x [T, heads, dim], cos/sin [T, 1, dim]; `sin` carries the
    sign of the first half (rotate_half(x) = [-x2, x1] = roll(x, dim/2) * [-1.., 1..])."""
    return x * cos + torch.roll(x, x.shape[-1] // 2, -1) * sin


class LeanDecoder:
    """Runs `model` token by token with its own static KV cache; `step(ids)` returns the last logits."""

    def __init__(self, model: nn.Module, max_len: int, fused_layers: bool = True) -> None:
        why = unsupported(model)
        if why:
            raise ValueError(f"LeanDecoder cannot run this model: {why}")
        cfg, dec = model.config, _decode_of(model)
        assert dec is not None  # unsupported() checked it
        self.model, self.max_len = model, max_len
        self.embed, self.final_norm, self.head = (model.get_submodule(p) for p in (dec.embed, dec.norm, dec.head))
        layers = model.get_submodule(dec.layers)
        self.layers = [dec.parts(layer, getattr(cfg, "hidden_act", "silu")) for layer in layers]
        self.heads = cfg.num_attention_heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.dtype = self.final_norm.weight.dtype  # (a packed embedding has no float weight)
        shape = (len(layers), self.kv_heads, max_len, self.head_dim)
        self.k = torch.zeros(shape)  # fp32 cache: small at batch 1, and bf16 matmuls of this size are slow here
        self.v = torch.zeros(shape)
        pos = torch.arange(max_len).unsqueeze(0)
        cos, sin = model.get_submodule(dec.rotary)(torch.zeros(1, dtype=self.dtype), pos)
        sin = sin.clone()
        sin[..., : self.head_dim // 2] *= -1
        self.cos, self.sin = cos[0].to(self.dtype).unsqueeze(1), sin[0].to(self.dtype).unsqueeze(1)
        self.pos = 0
        # q/k/v and gate/up as one kernel call each at batch 1, where the packed kernels allow it
        self.fused = [(FusedLinears.build([p.q, p.k, p.v], self.dtype), FusedLinears.build([p.gate, p.up], self.dtype))
                      for p in self.layers]
        # and, for bf16 packed layers, the whole layer as one C call at batch 1 (same ops, same rounding)
        shape = (self.heads, self.kv_heads, self.head_dim)
        # (the C layer has no q/k norms and computes SiLU)
        self.fused_layers = [FusedLayer.build(p.o, p.down, (p.norm1, p.norm2), *self.fused[i], shape, p.attn.scaling,
                                              max_len)
                             if fused_layers and p.q_norm is None and p.act == "silu" else None
                             for i, p in enumerate(self.layers)]

    def reset(self) -> None:
        """Forget the cached tokens."""
        self.pos = 0

    @torch.inference_mode()
    def step(self, ids: list[int]) -> torch.Tensor:
        """Feed `ids` after the cached tokens; logits [vocab] of the last one."""
        t, p0 = len(ids), self.pos
        if p0 + t > self.max_len:
            raise ValueError(f"LeanDecoder holds {self.max_len} tokens; {p0 + t} asked")
        h = self.embed(torch.tensor(ids))
        cos, sin = self.cos[p0:p0 + t], self.sin[p0:p0 + t]
        rep = self.heads // self.kv_heads
        for i, p in enumerate(self.layers):
            if t == 1 and self.fused_layers[i] is not None:
                self.fused_layers[i](h, self.cos[p0, 0], self.sin[p0, 0], self.k[i], self.v[i], p0)
                continue
            a = p.attn
            x = _rms(h, p.norm1)
            qkv, gate_up = self.fused[i]
            q, k, v = qkv(x) if qkv is not None and t == 1 else (p.q(x), p.k(x), p.v(x))
            q = q.view(t, self.heads, self.head_dim)
            k = k.view(t, self.kv_heads, self.head_dim)
            v = v.view(t, self.kv_heads, self.head_dim)
            if p.q_norm is not None and p.k_norm is not None:  # Qwen3: RMSNorm over each head before the rotation
                q, k = _rms(q, p.q_norm), _rms(k, p.k_norm)
            q, k = _rope(q, cos, sin), _rope(k, cos, sin)
            if t == 1:  # one query: heads grouped by their KV head
                self.k[i, :, p0] = k[0]
                self.v[i, :, p0] = v[0]
                o = attention_one(q[0].float(), self.k[i], self.v[i], p0 + 1, a.scaling).view(1, -1)
            else:
                self.k[i, :, p0:p0 + t] = k.transpose(0, 1)
                self.v[i, :, p0:p0 + t] = v.transpose(0, 1)
                keys, vals = self.k[i, :, :p0 + t], self.v[i, :, :p0 + t]
                mask = None if p0 == 0 else torch.ones(t, p0 + t, dtype=torch.bool).tril(p0)
                o = F.scaled_dot_product_attention(q.float().transpose(0, 1), keys, vals, attn_mask=mask,
                                                   is_causal=p0 == 0, scale=a.scaling, enable_gqa=rep > 1)
                o = o.transpose(0, 1).reshape(t, -1)
            h = h + p.o(o.to(self.dtype))
            x = _rms(h, p.norm2)
            g, u = gate_up(x) if gate_up is not None and t == 1 else (p.gate(x), p.up(x))
            h = h + p.down(F.silu(g) * u)
        self.pos = p0 + t
        return dense_linear(_rms(h[-1:], self.final_norm), self.head)[0]
