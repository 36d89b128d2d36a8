"""The "int4pack" backend: 4-bit weights with bf16 activations through PyTorch's CPU int4 kernel
(`aten._weight_int4pack_mm_for_cpu`); the codes are then held only in that kernel's layout."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from lowbit.formats import pack
from lowbit.kernels.backends.base import FLOAT_DTYPES, PREFILL_ROWS, Backend
from lowbit.kernels.lib import get_lib, ptr, scratch_matrix

if TYPE_CHECKING:
    from lowbit.kernels.packed import PackedLinear

INT4_GROUPS = (32, 64, 128, 256)
# torch's CPU int4 layouts, which follow the level torch's own kernels run at (ATEN_CPU_CAPABILITY): rows in
# blocks of `block`, per block and k block/2 bytes; byte j holds rows j and j + block/2 (low, high nibble), or
# rows 2j and 2j + 1 when interleaved. AVX-512: (64, False); AVX2: (32, False); default: (32, True).
LAYOUTS = ((64, False), (32, False), (32, True))
_layout: list[tuple[int, bool] | None] = []


def _unpack(w4: torch.Tensor, n: int, k: int, layout: tuple[int, bool]) -> torch.Tensor:
    block, inter = layout
    b = w4.reshape(n // block, k, block // 2)
    lo, hi = b & 15, b >> 4
    rows = torch.stack([lo, hi], dim=-1).flatten(-2) if inter else torch.cat([lo, hi], dim=-1)
    return rows.permute(0, 2, 1).reshape(n, k).contiguous()


def torch_int4_layout() -> tuple[int, bool] | None:
    """The (block, interleaved) layout of this PyTorch's `_convert_weight_to_int4pack_for_cpu`, found once by
    packing a probe; None when it is none of LAYOUTS."""
    if not _layout:
        probe = torch.randint(0, 16, (64, 32), generator=torch.Generator().manual_seed(0), dtype=torch.int32)
        w4 = torch.ops.aten._convert_weight_to_int4pack_for_cpu(probe, 1)
        fits = [lay for lay in LAYOUTS if w4.numel() * 2 == probe.numel()
                and torch.equal(_unpack(w4, 64, 32, lay), probe.to(torch.uint8))]
        _layout.append(fits[0] if fits else None)
    return _layout[0]


def int4pack_unpack(w4: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Codes [n, k] back from torch's CPU int4 layout (n % 64 == 0), whichever of LAYOUTS this PyTorch uses."""
    layout = torch_int4_layout()
    if layout is None:
        raise RuntimeError("unknown layout of torch's CPU int4 weights")
    return _unpack(w4, n, k, layout)


class Int4PackBackend(Backend):
    """Public state: `w4` (the codes in torch's layout), `sz` (its bf16 scale/zero pairs), `group`, and the
    float ranges `scales`, `zeros` repeated to that group size."""

    name = "int4pack"

    def __init__(self, w4: torch.Tensor, sz: torch.Tensor, group: int, scales: torch.Tensor,
                 zeros: torch.Tensor) -> None:
        self.w4, self.sz, self.group, self.scales, self.zeros = w4, sz, group, scales, zeros

    @classmethod
    def build(cls, layer: PackedLinear, act_dtype: torch.dtype) -> Int4PackBackend | None:
        """The int4 state for `layer`, or None where the layout, dtype or PyTorch build does not fit (nothing
        changed then). On success the codes move out of `layer.qweight` (see `release`)."""
        n, k, spec = layer.out_features, layer.kernel_k, layer.spec
        rows, groups = layer.scales.shape  # rows: out_features, or 1 for one range per tensor
        glen = k // groups
        # per-channel scales fit the int4 kernel by repeating them over groups of 128 (exactly the same weights)
        g4 = glen if glen in INT4_GROUPS else (128 if groups == 1 and k % 128 == 0 else 0)
        if not (spec.bits == 4 and act_dtype == torch.bfloat16 and n % 64 == 0 and g4 and k % g4 == 0
                and rows == n and hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")
                and torch_int4_layout() is not None):
            return None
        s, z = layer.scales.float(), layer.zeros().float()  # torch's kernel takes float ranges
        codes = layer.codes()
        w4 = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 1)
        if not torch.equal(int4pack_unpack(w4, n, k), codes):  # the layout we decode for prefill
            return None
        rep = g4 // glen if groups > 1 else k // g4
        s4 = s.repeat_interleave(rep, dim=1) if groups > 1 else s.expand(n, rep)
        z4 = z.repeat_interleave(rep, dim=1) if groups > 1 else z.expand(n, rep)
        sz = torch.stack([s4, (8 - z4) * s4], dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)
        backend = cls(w4, sz, g4, s4.contiguous(), z4.contiguous())
        layer.qweight = torch.empty(0, dtype=torch.uint8)  # the codes now live in w4 only
        return backend

    def codes(self, layer: PackedLinear) -> torch.Tensor:
        return int4pack_unpack(self.w4, layer.out_features, layer.kernel_k)

    def release(self, layer: PackedLinear) -> None:
        layer.qweight = pack(self.codes(layer), layer.spec.bits)

    def forward(self, layer: PackedLinear, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // layer.kernel_k
        bias = None if layer.bias is None else layer.bias.to(x.dtype)
        if x.dtype not in FLOAT_DTYPES:
            return nn.functional.linear(x, layer.dequantized_weight(x.dtype), bias)
        if rows > PREFILL_ROWS:
            return nn.functional.linear(x, self.dequant(layer, x.dtype), bias)
        x2 = x.reshape(rows, layer.kernel_k)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2.to(torch.bfloat16).contiguous(), self.w4, self.group,
                                                       self.sz)
        if bias is not None:
            y = y + bias
        return y.to(x.dtype).reshape(*x.shape[:-1], layer.out_features)

    def dequant(self, layer: PackedLinear, dtype: torch.dtype) -> torch.Tensor:
        """The bf16 weight in a scratch buffer through the C kernel (other dtypes through the reference)."""
        lib = get_lib()
        if lib is None or dtype != torch.bfloat16:
            return layer.dequantized_weight(dtype)
        n, k, s = layer.out_features, layer.kernel_k, self.scales
        out = scratch_matrix(n, k, dtype)
        lib.lbq_set_threads(torch.get_num_threads())
        block, inter = cast(tuple, torch_int4_layout())
        lib.lbq_dequant_int4pack_bf16(ptr(self.w4), n, k, self.group, s.shape[1], ptr(s), ptr(self.zeros), block,
                                      int(inter), ptr(out))
        return out
