"""PackedLinear: a linear layer whose weight stays bit-packed in memory (2-8 bits, group-wise scales).

Four ways to compute (lowbit.kernels.backends), picked on the first forward by `choose_backend` (`backend()`
says which, `LOWBIT_QLINEAR=...` or `set_kernel` forces one):
- "c" (default): our C kernel (csrc/qgemv.c, built on first use for the CPU level in use: AVX-512, AVX2 or
  portable C, see lowbit.kernels.lib) reads the packed rows directly: a group-wise GEMV for decode (2-8 bits,
  SIMD for 2/3/4/8, fp32 arithmetic) and a vectorised dequantize (to bf16 or fp32) for prefill.
- "c-int8" (opt-in): the C kernel with activations rounded to int8 per group for decode (2/4/8 bits, integer
  dot products: AVX-512 VNNI, AVX2 vpmaddubsw, or C; as llama.cpp does with its Q8 activations); not exact
  (about 0.2-0.5% relative error per output), faster. Falls back to "c" where the layout does not fit.
- "int4pack" (opt-in): 4-bit weights with bf16 activations use PyTorch's CPU int4 kernel
  (`aten._weight_int4pack_mm_for_cpu`); the codes are then held only in that kernel's layout.
- "torch": the reference, correct everywhere: dequantize to the activation dtype, then a float matmul.
Batches above `PREFILL_ROWS` rows dequantize once into a reused scratch buffer and run a float matmul
(bf16 goes to oneDNN's AMX path).
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.kernels.backends import PREFILL_ROWS
from lowbit.kernels.fused import FusedLinears
from lowbit.kernels.lib import FLAGS, GEMV_SOURCE, get_lib, ptr
from lowbit.kernels.packed import PackedLinear

__all__ = ["KERNELS", "PREFILL_ROWS", "FusedLinears", "PackedLinear", "dense_linear", "set_kernel"]

_SOURCE = GEMV_SOURCE  # compiles on its own (tests build it alone with _FLAGS)
_FLAGS = FLAGS


def dense_linear(x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """layer(x); for a plain bf16 nn.Linear at a few rows through our bf16 GEMV (exact products, fp32 sums),
    which is several times faster than PyTorch's at batch 1 here. Hooks on `layer` are honoured; a packed head
    (PackedLinear, or a tied PackedEmbedding) runs its own kernels."""
    if not isinstance(layer, nn.Linear):
        return layer(x)
    w = layer.weight
    rows = x.numel() // w.shape[1]
    fits = (w.dtype == torch.bfloat16 and x.dtype == torch.bfloat16 and rows <= PREFILL_ROWS and w.shape[1] % 32 == 0
            and not layer._forward_pre_hooks and not layer._forward_hooks)
    lib = get_lib() if fits else None
    if lib is None or not lib.lbq_has_bf16() or not w.is_contiguous():
        return layer(x)
    x2 = x.reshape(rows, w.shape[1]).contiguous()
    y = torch.empty(rows, w.shape[0], dtype=torch.bfloat16)
    b = None if layer.bias is None else layer.bias.detach().float()
    lib.lbq_set_threads(torch.get_num_threads())
    lib.lbq_gemv_bf16(ptr(x2), rows, w.shape[1], ptr(w), w.shape[0], None if b is None else ptr(b), ptr(y), 1)
    return y.reshape(*x.shape[:-1], w.shape[0])


KERNELS = ("auto", "c", "c-int8", "int4pack", "torch")


def set_kernel(model: nn.Module, name: str) -> int:
    """Make every PackedLinear in `model` use kernel `name` (see KERNELS) from its next forward; returns how many."""
    if name not in KERNELS:
        raise ValueError(f"unknown kernel {name!r}; choose one of {', '.join(KERNELS)}")
    mods = [m for m in model.modules() if isinstance(m, PackedLinear)]
    for m in mods:
        m.release()
        m.kernel_choice = name
    return len(mods)
