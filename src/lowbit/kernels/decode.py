"""Small C helpers for batch-1 decode (RMSNorm, one-query attention), with PyTorch fallbacks that compute the same."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from lowbit.kernels.qlinear import _get_lib, _scratch_matrix


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' RMSNorm: normalise in fp32, round to x's dtype, times the weight (bf16 or fp32, contiguous)."""
    lib = _get_lib() if x.dtype == weight.dtype and x.dtype in (torch.bfloat16, torch.float32) else None
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
    lib = _get_lib()
    if lib is None:
        qg = q.view(kv, heads // kv, dim)
        att = torch.softmax(torch.matmul(qg, keys[:, :length].transpose(1, 2)) * scale, dim=-1)
        return torch.matmul(att, values[:, :length]).reshape(heads, dim)
    q = q.contiguous()
    out = torch.empty(heads, dim)
    p = _scratch_matrix(1, length, torch.float32, "attn")
    lib.lbq_attn1(q.data_ptr(), keys.data_ptr(), values.data_ptr(), heads, kv, keys.shape[1], length, dim, scale,
                  out.data_ptr(), p.data_ptr())
    return out
