"""The "c" backend: our C kernels read the packed rows directly (group-wise GEMV, exact 4-bit bf16 GEMV,
vectorised dequantize for prefill)."""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING

import torch
from torch import nn

from lowbit.formats import unpack
from lowbit.kernels.backends.base import FLOAT_DTYPES, PREFILL_ROWS, Backend
from lowbit.kernels.lib import has_q4bf16, ptr, ptr_or_none, scratch_matrix, scratch_ptr

if TYPE_CHECKING:
    from lowbit.kernels.packed import PackedLinear


class CBackend(Backend):
    """Public state (read by FusedLinears): `lib`, `scales` (the stored fp16 [rows, groups]), `zeros` (uint8 zero
    codes, None when symmetric), `per_row` (1, or 0 for one range per tensor), `q4bf16` (the exact 4-bit bf16
    kernel applies) and `bias32()`."""

    name = "c"

    def __init__(self, layer: PackedLinear, lib: ctypes.CDLL) -> None:
        spec, k = layer.spec, layer.kernel_k
        rows, groups = layer.scales.shape
        glen = k // groups
        # the C kernels read the stored fp16 scales and uint8 zero codes (None: symmetric), no float copies
        self.lib = lib
        self.scales = layer.scales.to(torch.float16).contiguous()
        self.zeros = None if spec.symmetric else unpack(layer.qzeros, spec.bits, groups).contiguous()
        self.per_row = int(rows == layer.out_features)
        # 4-bit with bf16 activations: exact products (vdpbf16ps, or FMA of the widened values), fusable
        self.q4bf16 = bool(spec.bits == 4 and k % 128 == 0 and (k if groups == 1 else glen) % 128 == 0
                           and has_q4bf16(lib))
        self._bias32: torch.Tensor | None = None
        self._bias32_done = False

    @staticmethod
    def fits(layer: PackedLinear) -> bool:
        """Whether the C kernels take this layout (groups of a multiple of 8 codes, or one group per row)."""
        groups = layer.scales.shape[1]
        return (layer.kernel_k // groups) % 8 == 0 or groups == 1

    def bias32(self, layer: PackedLinear) -> torch.Tensor | None:
        """The bias as fp32, cached with the kernel state."""
        if not self._bias32_done:
            self._bias32 = None if layer.bias is None else layer.bias.detach().float().contiguous()
            self._bias32_done = True
        return self._bias32

    def forward(self, layer: PackedLinear, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // layer.kernel_k
        if x.dtype not in FLOAT_DTYPES:
            bias = None if layer.bias is None else layer.bias.to(x.dtype)
            return nn.functional.linear(x, layer.dequantized_weight(x.dtype), bias)
        if rows > PREFILL_ROWS:
            bias = None if layer.bias is None else layer.bias.to(x.dtype)
            return nn.functional.linear(x, self.dequant(layer, x.dtype), bias)
        x2 = x.reshape(rows, layer.kernel_k)
        if self.q4bf16 and x.dtype == torch.bfloat16:
            return self._q4_bf16(layer, x2).reshape(*x.shape[:-1], layer.out_features)
        return self._gemm(layer, x2).to(x.dtype).reshape(*x.shape[:-1], layer.out_features)

    def dequant(self, layer: PackedLinear, dtype: torch.dtype) -> torch.Tensor:
        """The float weight in a scratch buffer (bf16 or fp32; other dtypes through the reference)."""
        if dtype not in (torch.bfloat16, torch.float32):
            return layer.dequantized_weight(dtype)
        n, k, s, qw = layer.out_features, layer.kernel_k, self.scales, layer.qweight
        out = scratch_matrix(n, k, dtype)
        self.lib.lbq_set_threads(torch.get_num_threads())
        glen = k if s.shape[1] == 1 else k // s.shape[1]
        self.lib.lbq_dequant(ptr(qw), n, k, qw.shape[1], layer.spec.bits, glen, s.shape[1], ptr(s),
                             ptr_or_none(self.zeros), self.per_row, int(dtype == torch.bfloat16), ptr(out))
        return out

    def _gemm(self, layer: PackedLinear, x2: torch.Tensor) -> torch.Tensor:
        k, s, z = layer.kernel_k, self.scales, self.zeros
        groups = s.shape[1]
        k8 = (k + 7) // 8 * 8
        xf = x2.float()
        if k8 != k:
            xf = nn.functional.pad(xf, (0, k8 - k))
        xf = xf.contiguous()
        glen = k8 if groups == 1 else k // groups
        y = torch.empty(xf.shape[0], layer.out_features)
        xsum = torch.empty(xf.shape[0], groups)
        bias = None if layer.bias is None else layer.bias.detach().float().contiguous()
        lib, qw = self.lib, layer.qweight
        lib.lbq_set_threads(torch.get_num_threads())
        lib.lbq_gemm(ptr(xf), xf.shape[0], k8, ptr(qw), layer.out_features, qw.shape[1], layer.spec.bits, glen,
                     groups, ptr(s), ptr_or_none(z), self.per_row, None if bias is None else ptr(bias), ptr(xsum),
                     ptr(y))
        return y

    def _q4_bf16(self, layer: PackedLinear, x2: torch.Tensor) -> torch.Tensor:
        """Exact 4-bit decode for bf16 activations (csrc lbq_gemv_q4_bf16)."""
        k, rows, s, qw = layer.kernel_k, x2.shape[0], self.scales, layer.qweight
        groups = s.shape[1]
        bias = self.bias32(layer)
        xin = x2.contiguous()
        base = scratch_ptr(rows * (4 * k + 4 * groups), "q4")  # prepared x (bf16 or fp32), then sums
        y = torch.empty(rows, layer.out_features, dtype=torch.bfloat16)
        self.lib.lbq_gemv_q4_bf16(ptr(xin), rows, k, ptr(qw), layer.out_features, qw.shape[1], k // groups, groups,
                                  ptr(s), ptr_or_none(self.zeros), self.per_row, None if bias is None else ptr(bias),
                                  ptr(y), 1, base, base + rows * 4 * k, torch.get_num_threads())
        return y
