"""FusedLinears: several PackedLinear layers that read the same input row, run as one C call (lbq_multi)."""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from lowbit.kernels.backends import CBackend
from lowbit.kernels.lib import ptr, ptr_or_none, scratch_ptr
from lowbit.kernels.packed import PackedLinear


class FusedLinears:
    """PackedLinear layers that read the same input (q/k/v, gate/up) run as one kernel call for one row: the
    activation is quantized or permuted once. `build` returns None where they do not qualify."""

    def __init__(self, layers: list[PackedLinear], mode: int, dtype: torch.dtype) -> None:
        self.layers, self.mode, self.dtype = layers, mode, dtype
        self.sizes = [m.out_features for m in layers]
        kerns = [_c_state(m) for m in layers]
        first = layers[0]
        self.k, self.groups, self.bits = first.kernel_k, kerns[0].scales.shape[1], first.spec.bits
        rows, off = [], 0
        for m, kern in zip(layers, kerns, strict=True):
            b = kern.bias32(m)
            rows.append([ptr(m.qweight), m.out_features, m.qweight.shape[1], ptr(kern.scales),
                         ptr_or_none(kern.zeros) or 0, kern.per_row, 0 if b is None else ptr(b), off])
            off += m.out_features
        self.desc = torch.tensor(rows, dtype=torch.int64)
        self.desc_ptr, self.n, self.glen = ptr(self.desc), len(layers), self.k // self.groups
        self.bf = int(dtype == torch.bfloat16)
        self.total = off
        self.lib = kerns[0].lib

    @classmethod
    def build(cls, layers: list[nn.Module], dtype: torch.dtype) -> FusedLinears | None:
        """Fuse `layers` for activations of `dtype` if they are all prepared alike; else None."""
        packed = [m for m in layers if isinstance(m, PackedLinear)]
        if len(packed) != len(layers):
            return None
        if any(m._forward_pre_hooks or m._forward_hooks for m in packed):
            return None
        for m in packed:
            if m.kernel is None:
                m.prepare(dtype)
        first = packed[0]
        if first.backend() not in ("c", "c-int8") or any(m.backend() != first.backend() for m in packed):
            return None
        kerns = [_c_state(m) for m in packed]
        groups = kerns[0].scales.shape[1]
        same = all(m.kernel_k == first.kernel_k and m.spec == first.spec and kern.scales.shape[1] == groups
                   for m, kern in zip(packed, kerns, strict=True))
        if not same or dtype not in (torch.bfloat16, torch.float32):
            return None
        if first.backend() == "c-int8":
            return cls(packed, 0, dtype)
        if first.backend() == "c" and all(kern.q4bf16 for kern in kerns) and dtype == torch.bfloat16:
            return cls(packed, 1, dtype)
        return None

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The layers' outputs for one input row x [1, in_features] (or [in_features])."""
        x = x.reshape(1, -1)
        if x.shape[1] != self.k:  # a short last group: the kernels read whole groups of zero-padded input
            x = torch.nn.functional.pad(x, (0, self.k - x.shape[1]))
        x = x.contiguous()
        if x.dtype != self.dtype:
            x = x.to(self.dtype)
        y = torch.empty(1, self.total, dtype=self.dtype)
        scratch = scratch_ptr(4 * self.k + 8 * self.groups, "multi")
        self.lib.lbq_multi(self.desc_ptr, self.n, x.data_ptr(), self.bf, self.k, self.bits, self.glen, self.groups,
                           self.mode, y.data_ptr(), self.bf, scratch, torch.get_num_threads())
        return y.split(self.sizes, dim=1)


def _c_state(m: PackedLinear) -> CBackend:
    """The C-kernel state of a layer prepared as "c" or "c-int8" (CInt8Backend is a CBackend)."""
    return cast(CBackend, m.kernel)
