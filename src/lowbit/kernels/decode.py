"""Small C helpers for batch-1 decode (RMSNorm, one-query attention, a whole decoder layer), with PyTorch fallbacks
that compute the same."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from lowbit.kernels.fused import FusedLinears
from lowbit.kernels.lib import get_lib, scratch_matrix


def norm_eps(norm: torch.nn.Module) -> float:
    """The epsilon of a transformers RMSNorm module (`variance_epsilon` or `eps`; 1e-6 if it has neither)."""
    return getattr(norm, "variance_epsilon", None) or getattr(norm, "eps", 1e-6)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' RMSNorm: normalise in fp32, round to x's dtype, times the weight (bf16 or fp32, contiguous)."""
    lib = get_lib() if x.dtype == weight.dtype and x.dtype in (torch.bfloat16, torch.float32) else None
    if lib is None:
        return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)
    x = x.contiguous()
    y = torch.empty_like(x)
    lib.lbq_rmsnorm(x.data_ptr(), weight.data_ptr(), x.numel() // x.shape[-1], x.shape[-1], eps,
                    int(x.dtype == torch.bfloat16), y.data_ptr())
    return y


def attention_one(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, length: int, scale: float) -> torch.Tensor:
    """softmax(q K^T * scale) V for one query: q [heads, dim] fp32, keys/values [kv_heads, capacity, dim] fp32
    caches of which the first `length` positions count; heads share KV heads in consecutive groups."""
    heads, dim = q.shape
    kv = keys.shape[0]
    lib = get_lib()
    if lib is None:
        qg = q.view(kv, heads // kv, dim)
        att = torch.softmax(torch.matmul(qg, keys[:, :length].transpose(1, 2)) * scale, dim=-1)
        return torch.matmul(att, values[:, :length]).reshape(heads, dim)
    q = q.contiguous()
    out = torch.empty(heads, dim)
    p = scratch_matrix(1, length, torch.float32, "attn")
    lib.lbq_attn1(q.data_ptr(), keys.data_ptr(), values.data_ptr(), heads, kv, keys.shape[1], length, dim, scale,
                  out.data_ptr(), p.data_ptr())
    return out


class FusedLayer:
    """A Llama-style decoder layer run for one bf16 token in one C call (csrc lbq_layer): RMSNorm, fused q/k/v,
    RoPE, the KV-cache write, attention, o_proj, RMSNorm, fused gate/up, SiLU and down_proj, with the same bf16
    rounding after each op as the per-op path. `build` returns None where the layer does not qualify."""

    def __init__(self, lib: object, parts: list[FusedLinears], norms: tuple[torch.Tensor, torch.Tensor], eps: float,
                 shape: tuple[int, int, int], inter: int, scale: float, cap: int) -> None:
        qkv, o, gu, down = parts
        self.lib, self.parts, self.norms, self.eps, self.scale, self.cap = lib, parts, norms, eps, scale, cap
        self.heads, self.kv_heads, self.head_dim = shape
        hidden = qkv.k
        self.dims = torch.tensor([hidden, inter, qkv.glen, qkv.groups, down.glen, down.groups], dtype=torch.int64)
        self.mode, self.bits = qkv.mode, qkv.bits
        n_q, n_kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        halves = hidden + n_q + 2 * n_kv + hidden + 3 * inter + hidden + inter
        nbytes = 2 * halves + 4 * (2 * n_q + cap) + 4 * max(hidden, inter) + 8 * max(qkv.groups, down.groups) + 64
        self.scratch = torch.empty(nbytes, dtype=torch.int8)

    @classmethod
    def build(cls, o_proj: torch.nn.Module, down_proj: torch.nn.Module, norms: tuple[torch.nn.Module, torch.nn.Module],
              qkv: FusedLinears | None, gate_up: FusedLinears | None, shape: tuple[int, int, int], scale: float,
              cap: int) -> FusedLayer | None:
        """The fused layer for bf16 decode, or None (fp32, other shapes, kernels that differ). The caller passes
        only SiLU layers without q/k norms: o_proj, down_proj and the norms before attention and before the MLP."""
        if qkv is None or gate_up is None or qkv.dtype != torch.bfloat16:
            return None
        o = FusedLinears.build([o_proj], torch.bfloat16)
        down = FusedLinears.build([down_proj], torch.bfloat16)
        parts = [qkv, o, gate_up, down]
        if o is None or down is None or len({(p.mode, p.bits) for p in parts}) != 1:
            return None
        heads, kv_heads, head_dim = shape
        n1, n2 = norms
        hidden, inter = qkv.k, down_proj.in_features
        if heads * head_dim != hidden or o.k != hidden or down.k != inter or gate_up.sizes != [inter, inter] \
                or head_dim % 2 or any(n.weight.dtype != torch.bfloat16 for n in (n1, n2)):
            return None
        eps = [norm_eps(n) for n in (n1, n2)]
        if eps[0] != eps[1]:
            return None
        return cls(get_lib(), parts, (n1.weight.detach(), n2.weight.detach()), float(eps[0]), shape, inter, scale,
                   cap)

    def __call__(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, keys: torch.Tensor,
                 values: torch.Tensor, pos: int) -> None:
        """Update h [1, hidden] bf16 (contiguous) in place; keys/values: this layer's fp32 caches [kv, cap, dim]."""
        qkv, o, gu, down = self.parts
        self.lib.lbq_layer(h.data_ptr(), self.dims.data_ptr(), self.norms[0].data_ptr(), self.norms[1].data_ptr(),
                           self.eps, qkv.desc_ptr, o.desc_ptr, gu.desc_ptr, down.desc_ptr, self.mode, self.bits,
                           cos.data_ptr(), sin.data_ptr(), keys.data_ptr(), values.data_ptr(), self.cap, pos,
                           self.heads, self.kv_heads, self.head_dim, self.scale, self.scratch.data_ptr(),
                           torch.get_num_threads())
