"""Bit-packed binary inference layers (XNOR-Net style, Rastegari et al. 2016) made by ``convert``.

Weights are stored as signs, 64 per int64 word (32x smaller than float32); inputs are binarized
and packed on the fly, and outputs come from XNOR/popcount: y = (K - 2 popcount(a ^ w)) * scale
+ bias.  Outputs equal the fake-quantized layer's float simulation bit for bit; zero padding
of convolutions (which contributes 0, not +-1) is corrected exactly with a per-position integer
term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels.binary import binary_linear, binary_matmul, num_words, pack_bits, unpack_bits
from .modules import QuantConv1d, QuantConv2d, QuantLinear

__all__ = ["PackedBinaryConv1d", "PackedBinaryConv2d", "PackedBinaryLinear"]


def _frozen_scale(
    q: QuantLinear | QuantConv1d | QuantConv2d, n: int
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The simulated layer's output scale as an [n] float32 vector, and the LSQ activation step."""
    a_step = None
    a_scale = None
    if q.act_quant.estimator == "lsq":
        a_scale = q.act_quant.step.detach()
        a_step = a_scale.to(torch.float32).clone()
    scale = q.output_scale(a_scale)
    if scale is None:
        return None, a_step
    scale = scale.detach().to(torch.float32)
    return (scale.expand(n) if scale.dim() == 0 else scale.reshape(n)).contiguous().clone(), a_step


def _check_binary(q: nn.Module) -> None:
    if not getattr(q, "is_binary", False):
        raise ValueError(
            f"{type(q).__name__} is not binary in both weights and activations "
            f"(weights: {q.weight_quant.extra_repr()}; activations: {q.act_quant.extra_repr()}); "
            "only 1-bit layers (BiPer stage 2, not stage 1) can be bit-packed"
        )


class PackedBinaryLinear(nn.Module):
    """Linear layer with bit-packed +-1 weights and XNOR/popcount matmul (inference only)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.register_buffer("weight_packed", torch.zeros(out_features, num_words(in_features), dtype=torch.int64))
        self.register_buffer("scale", None)
        self.register_buffer("bias", None)
        self.register_buffer("act_step", None)  # LSQ activation step: inputs are divided by it first

    @classmethod
    def from_quant(cls, q: QuantLinear) -> PackedBinaryLinear:
        """Pack a trained binary ``QuantLinear``."""
        _check_binary(q)
        m = cls(q.in_features, q.out_features)
        with torch.no_grad():
            m.weight_packed = pack_bits(q.weight_quant.codes(q.weight.detach()).float())
            m.scale, m.act_step = _frozen_scale(q, q.out_features)
            m.bias = None if q.bias is None else q.bias.detach().to(torch.float32).clone()
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"PackedBinaryLinear expects {self.in_features} input features in the last dim, "
                f"got shape {tuple(x.shape)}"
            )
        if self.act_step is not None:
            x = x / self.act_step
        return binary_linear(x, self.weight_packed, self.in_features, self.scale, self.bias)

    def weight_bytes(self) -> int:
        """Bytes of the packed weights."""
        return self.weight_packed.numel() * 8

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class _PackedBinaryConvNd(nn.Module):
    """Binary convolution through im2col + packed XNOR/popcount GEMM, computed as 2-D."""

    _nd = 2

    def __init__(self, q: QuantConv1d | QuantConv2d) -> None:
        super().__init__()
        _check_binary(q)
        self.in_channels, self.out_channels, self.groups = q.in_channels, q.out_channels, q.groups
        self.kernel_size = tuple(q.kernel_size)
        self.stride, self.dilation = tuple(q.stride), tuple(q.dilation)
        # explicit (left, right, top, bottom) padding as nn.Conv stores it; covers padding='same'
        self.pad = tuple(int(p) for p in q._reversed_padding_repeated_twice)
        self.padding_mode = q.padding_mode
        with torch.no_grad():
            wb = q.weight_quant.codes(q.weight.detach()).float()
        self.k_group = wb[0].numel()  # (C_in / groups) * prod(kernel)
        wb2 = wb.reshape(self.groups, self.out_channels // self.groups, self.k_group)
        self.register_buffer("weight_packed", pack_bits(wb2))
        scale, act_step = _frozen_scale(q, self.out_channels)
        self.register_buffer("scale", scale)
        self.register_buffer("act_step", act_step)
        self.register_buffer("bias", None if q.bias is None else q.bias.detach().to(torch.float32).clone())
        self._corr_cache: dict[tuple[int, ...], torch.Tensor] = {}

    def _as2d(self, t: tuple[int, ...]) -> tuple[int, int]:
        return (1, t[0]) if self._nd == 1 else (t[0], t[1])

    def _correction(self, spatial: tuple[int, ...]) -> torch.Tensor:
        """Integer contribution of zero-padding taps that the +1-padded bits add, per [C_out, L]."""
        key = tuple(spatial)
        if key not in self._corr_cache:
            ind = F.pad(torch.zeros(1, self.in_channels, *spatial), self.pad, value=1.0)
            conv = F.conv1d if self._nd == 1 else F.conv2d
            wb = unpack_bits(self.weight_packed, self.k_group)  # [groups, C_out / groups, K]
            wb = wb.reshape(self.out_channels, self.in_channels // self.groups, *self.kernel_size)
            corr = conv(ind, wb, None, self.stride, 0, self.dilation, self.groups)
            self._corr_cache[key] = corr.reshape(self.out_channels, -1).to(torch.int32)
        return self._corr_cache[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nd = self._nd
        unbatched = x.dim() == nd + 1
        if unbatched:
            x = x.unsqueeze(0)
        if x.dim() != nd + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects input [batch, {self.in_channels}, *spatial({nd})], "
                f"got shape {tuple(x.shape)}"
            )
        x = x.to(torch.float32)
        if self.act_step is not None:
            x = x / self.act_step
        spatial = tuple(x.shape[2:])
        needs_corr = any(self.pad) and self.padding_mode == "zeros"
        if any(self.pad):
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            x = F.pad(x, self.pad, mode=mode) if mode != "constant" else F.pad(x, self.pad, value=0.0)
        b = x.shape[0]
        x4 = x.unsqueeze(2) if nd == 1 else x
        ks, st, dl = self._as2d(self.kernel_size), self._as2d(self.stride), self._as2d(self.dilation)
        out_sp = [(x4.shape[2 + i] - dl[i] * (ks[i] - 1) - 1) // st[i] + 1 for i in range(2)]
        if min(out_sp) <= 0:
            raise ValueError(f"input spatial size {spatial} is smaller than the kernel {self.kernel_size}")
        cols = F.unfold(x4, ks, dilation=dl, stride=st)  # [B, C_in * prod(k), L]
        n_l = cols.shape[-1]
        ys = []
        for g in range(self.groups):
            cg = cols[:, g * self.k_group : (g + 1) * self.k_group, :].transpose(1, 2).reshape(-1, self.k_group)
            if not needs_corr and self.groups == 1:
                ys.append(binary_linear(cg, self.weight_packed[g], self.k_group, self.scale, self.bias))
                break
            ys.append(binary_matmul(pack_bits(cg), self.weight_packed[g], self.k_group))
        y = ys[0] if len(ys) == 1 else torch.cat(ys, dim=1)  # [B * L, C_out]
        y = y.reshape(b, n_l, self.out_channels).transpose(1, 2)  # [B, C_out, L]
        if y.dtype == torch.int32:
            if needs_corr:
                y = y - self._correction(spatial)
            y = y.to(torch.float32)
            if self.scale is not None:
                y = y * self.scale.reshape(1, -1, 1)
            if self.bias is not None:
                y = y + self.bias.reshape(1, -1, 1)
        y = y.reshape(b, self.out_channels, *(out_sp[1:] if nd == 1 else out_sp))
        return y.squeeze(0) if unbatched else y

    def weight_bytes(self) -> int:
        """Bytes of the packed weights."""
        return self.weight_packed.numel() * 8

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"pad={self.pad}, dilation={self.dilation}, groups={self.groups}, bias={self.bias is not None}"
        )


class PackedBinaryConv1d(_PackedBinaryConvNd):
    """Conv1d with bit-packed +-1 weights, im2col + XNOR/popcount (inference only)."""

    _nd = 1

    @classmethod
    def from_quant(cls, q: QuantConv1d) -> PackedBinaryConv1d:
        """Pack a trained binary ``QuantConv1d``."""
        return cls(q)


class PackedBinaryConv2d(_PackedBinaryConvNd):
    """Conv2d with bit-packed +-1 weights, im2col + XNOR/popcount (inference only)."""

    _nd = 2

    @classmethod
    def from_quant(cls, q: QuantConv2d) -> PackedBinaryConv2d:
        """Pack a trained binary ``QuantConv2d``."""
        return cls(q)
