"""PackedLinear: a linear layer whose weight stays bit-packed in memory (2-8 bits, group-wise scales)."""

from __future__ import annotations

import torch
from torch import nn

from lowbit.formats import pack, unpack
from lowbit.quantizers import QuantizedWeight, WeightSpec, dequantize_weight


class PackedLinear(nn.Module):
    """y = x W^T + b with W held as packed codes (uint8 words), fp16 scales and packed zero points.

    The reference forward dequantizes to the activation dtype and calls a float matmul; faster kernels
    plug in behind the same buffers.
    """

    def __init__(self, in_features: int, out_features: int, spec: WeightSpec, bias: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features, self.spec = in_features, out_features, spec
        groups = 1 if spec.group_size <= 0 else spec.groups(in_features)
        rows = 1 if spec.group_size == -1 else out_features
        nbytes = (in_features + 7) // 8 * spec.bits
        self.register_buffer("qweight", torch.zeros(out_features, nbytes, dtype=torch.uint8))
        self.register_buffer("scales", torch.zeros(rows, groups, dtype=torch.float16))
        if not spec.symmetric:
            self.register_buffer("qzeros", torch.zeros(rows, (groups + 7) // 8 * spec.bits, dtype=torch.uint8))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @classmethod
    def from_quantized(cls, q: QuantizedWeight, bias: torch.Tensor | None = None) -> PackedLinear:
        """Pack a QuantizedWeight (and optional bias) into a new module."""
        out, inp = q.codes.shape
        m = cls(inp, out, q.spec, bias is not None)
        m.qweight.copy_(pack(q.codes, q.spec.bits))
        m.scales.copy_(q.scales.to(torch.float16))
        if not q.spec.symmetric:
            m.qzeros.copy_(pack(q.zeros.round().to(torch.uint8), q.spec.bits))
        if bias is not None:
            m.bias.data.copy_(bias)
        return m

    def zeros(self) -> torch.Tensor:
        """Zero points [rows, groups] as floats."""
        if self.spec.symmetric:
            return torch.full(self.scales.shape, float(1 << (self.spec.bits - 1)))
        return unpack(self.qzeros, self.spec.bits, self.scales.shape[1]).float()

    def codes(self) -> torch.Tensor:
        """Unpacked integer codes [out, in] (uint8)."""
        return unpack(self.qweight, self.spec.bits, self.in_features)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight the packed buffers represent."""
        return dequantize_weight(self.codes(), self.scales.float(), self.zeros(), torch.float32).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reference forward: dequantize, then a float matmul in x's dtype."""
        return nn.functional.linear(x, self.dequantized_weight(x.dtype), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.spec.describe()}"

    def storage_bits(self) -> int:
        """Bits of packed weight, scales and zeros (the bias excluded)."""
        n = self.qweight.numel() * 8 + self.scales.numel() * 16
        return n + (self.qzeros.numel() * 8 if not self.spec.symmetric else 0)
