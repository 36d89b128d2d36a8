"""The "c-int8" backend: the C kernels with activations rounded to int8 per group for decode (integer dot products:
AVX-512 VNNI, AVX2 vpmaddubsw, or portable C)."""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING

import torch

from lowbit.kernels.backends.base import PREFILL_ROWS
from lowbit.kernels.backends.c import CBackend
from lowbit.kernels.lib import has_int8, ptr, ptr_or_none, scratch_ptr

if TYPE_CHECKING:
    from lowbit.kernels.packed import PackedLinear


class CInt8Backend(CBackend):
    """Decode (up to PREFILL_ROWS rows) through lbq_linear_i8; prefill and other dtypes as "c"."""

    name = "c-int8"

    def __init__(self, layer: PackedLinear, lib: ctypes.CDLL) -> None:
        super().__init__(layer, lib)
        self._args: tuple | None = None

    @staticmethod
    def fits_int8(layer: PackedLinear, lib: ctypes.CDLL) -> bool:
        """Whether the int8-activation kernel takes this layout (else "c" is used)."""
        spec, k = layer.spec, layer.kernel_k
        groups = layer.scales.shape[1]
        gbytes = (k if groups == 1 else k // groups) * spec.bits // 8
        row = k * spec.bits // 8  # whole 64-byte chunks, or groups of 16/32 bytes and a 32-byte tail
        return (spec.bits in (2, 4, 8) and k % 8 == 0 and has_int8(lib)
                and ((gbytes % 64 == 0 and row % 64 == 0) or (gbytes in (16, 32) and row % 32 == 0)))

    def forward(self, layer: PackedLinear, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // layer.kernel_k
        if rows <= PREFILL_ROWS:
            return self._int8(layer, x.reshape(rows, layer.kernel_k)).reshape(*x.shape[:-1], layer.out_features)
        return super().forward(layer, x)

    def _int8(self, layer: PackedLinear, x2: torch.Tensor) -> torch.Tensor:
        """Decode through the int8-activation kernel; bf16 and fp32 activations are read and written as they are."""
        args = self._args
        if args is None:  # everything but the activations, fixed once prepared
            s, qw = self.scales, layer.qweight
            k, groups = layer.kernel_k, s.shape[1]
            bias = self.bias32(layer)
            args = self._args = (k, ptr(qw), layer.out_features, qw.shape[1], layer.spec.bits, k // groups, groups,
                                 ptr(s), ptr_or_none(self.zeros), self.per_row, None if bias is None else ptr(bias))
        rows = x2.shape[0]
        xin = x2 if x2.dtype in (torch.bfloat16, torch.float32) else x2.float()
        xin = xin.contiguous()
        k, groups = layer.kernel_k, args[6]
        base = scratch_ptr(rows * (k + 8 * groups), "i8")  # xq, then xs and xsum
        y = torch.empty(rows, layer.out_features, dtype=xin.dtype)
        is_bf16 = int(xin.dtype == torch.bfloat16)
        self.lib.lbq_linear_i8(ptr(xin), is_bf16, rows, *args, ptr(y), is_bf16, base, base + rows * k,
                               base + rows * (k + 4 * groups), torch.get_num_threads())
        return y if y.dtype == x2.dtype else y.to(x2.dtype)
