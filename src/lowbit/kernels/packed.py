"""PackedLinear: the packed storage of a low-bit linear layer (codes, fp16 scales, zero points, bias), which
dispatches its forward to a compute backend (lowbit.kernels.backends; overview in lowbit.kernels.qlinear)."""

from __future__ import annotations

import os
from typing import cast

import torch
from torch import nn

from lowbit.formats import pack, packed_numel, symmetric_zero, unpack
from lowbit.kernels.backends import Backend, choose_backend
from lowbit.quantizers import QuantizedWeight, WeightSpec, dequantize_weight


class PackedLinear(nn.Module):
    """y = x W^T + b with W held as packed codes (uint8 words), fp16 scales and packed zero points.

    The module holds the storage (buffers, state dict, views of the weight); the compute is its backend's
    (`kernel`, a lowbit.kernels.backends.Backend built on the first forward)."""

    qweight: torch.Tensor  # [out, packed_numel(kernel_k, bits)] uint8 codes (empty while "int4pack" holds them)
    scales: torch.Tensor  # [rows, groups] fp16
    qzeros: torch.Tensor  # [rows, packed_numel(groups, bits)] uint8 zero codes (asymmetric specs only)
    bias: nn.Parameter | None

    def __init__(self, in_features: int, out_features: int, spec: WeightSpec, bias: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features, self.spec = in_features, out_features, spec
        groups = spec.groups(in_features)
        rows = 1 if spec.group_size == -1 else out_features
        # a short last group is padded to a whole one in storage (codes of zero weight), and the input with zeros
        self.register_buffer("qweight", torch.zeros(out_features, packed_numel(spec.padded(in_features), spec.bits),
                                                    dtype=torch.uint8))
        self.register_buffer("scales", torch.zeros(rows, groups, dtype=torch.float16))
        if not spec.symmetric:
            self.register_buffer("qzeros", torch.zeros(rows, packed_numel(groups, spec.bits), dtype=torch.uint8))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self._kernel: Backend | None = None  # backend state, built on the first forward
        self.kernel_choice: str | None = None  # set_kernel(); None: $LOWBIT_QLINEAR or auto

    @classmethod
    def from_quantized(cls, q: QuantizedWeight, bias: torch.Tensor | None = None) -> PackedLinear:
        """Pack a QuantizedWeight (and optional bias) into a new module."""
        out, inp = q.codes.shape
        m = cls(inp, out, q.spec, bias is not None)
        codes, pad = q.codes, m.kernel_k - inp
        if pad:  # the padding of the short last group: its zero point (weight 0)
            codes = torch.cat([codes, q.zeros[:, -1:].round().to(codes.dtype).expand(out, pad)], 1)
        m.qweight.copy_(pack(codes, q.spec.bits))
        m.scales.copy_(q.scales.to(torch.float16))
        if not q.spec.symmetric:
            m.qzeros.copy_(pack(q.zeros.round().to(torch.uint8), q.spec.bits))
        if m.bias is not None and bias is not None:
            m.bias.data.copy_(bias)
        return m

    # ------------------------------------------------------------------ views of the stored weight

    @property
    def kernel_k(self) -> int:
        """The row width the backends see: in_features rounded up to whole groups (the codes' stored row)."""
        return self.spec.padded(self.in_features)

    def zeros(self) -> torch.Tensor:
        """Zero points [rows, groups] as floats."""
        if self.spec.symmetric:
            return torch.full(self.scales.shape, float(symmetric_zero(self.spec.bits)))
        return unpack(self.qzeros, self.spec.bits, self.scales.shape[1]).float()

    def codes(self) -> torch.Tensor:
        """Unpacked integer codes [out, in] (uint8), whichever layout holds them (the padding dropped)."""
        held = None if self._kernel is None else self._kernel.codes(self)
        codes = unpack(self.qweight, self.spec.bits, self.kernel_k) if held is None else held
        return codes if self.kernel_k == self.in_features else codes[:, : self.in_features].contiguous()

    def packed_rows(self) -> torch.Tensor:
        """The packed codes [out, packed_numel(kernel_k, bits)] in the canonical row layout (what `qweight` holds
        on disk, a short last group padded), whichever backend holds them; for exporters. The backend is kept."""
        held = None if self._kernel is None else self._kernel.codes(self)
        return self.qweight if held is None else pack(held, self.spec.bits)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight the packed buffers represent."""
        glen = self.spec.group_len(self.in_features)
        return dequantize_weight(self.codes(), self.scales.float(), self.zeros(), torch.float32, glen).to(dtype)

    def storage_bits(self) -> int:
        """Bits of packed weight, scales and zeros (the bias excluded)."""
        n = self.out_features * packed_numel(self.kernel_k, self.spec.bits) * 8 + self.scales.numel() * 16
        return n + (self.qzeros.numel() * 8 if not self.spec.symmetric else 0)

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self._kernel is not None and self._kernel.codes(self) is not None:  # canonical layout on disk
            destination[prefix + "qweight"] = self.packed_rows()

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object, **kw: object) -> None:
        self.release()
        super()._load_from_state_dict(state_dict, prefix, *args, **kw)

    # ------------------------------------------------------------------ kernels

    @property
    def kernel(self) -> Backend | None:
        """The active backend state, or None before the first forward."""
        return self._kernel

    def backend(self) -> str | None:
        """The active kernel ('c', 'c-int8', 'int4pack' or 'torch'), or None before the first forward."""
        return None if self._kernel is None else self._kernel.name

    def release(self) -> None:
        """Drop the kernel state (restoring the packed row layout): the next forward prepares it again."""
        if self._kernel is not None:
            self._kernel.release(self)
        self._kernel = None

    def prepare(self, act_dtype: torch.dtype) -> str:
        """Choose and build the kernel for activations of `act_dtype`; returns its name."""
        want = (getattr(self, "kernel_choice", None) or os.environ.get("LOWBIT_QLINEAR", "auto")).lower()
        self._kernel = choose_backend(self, act_dtype, want)
        return self._kernel.name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """y = x W^T + b through the prepared kernel (decode) or a dequantized float matmul (prefill)."""
        kern = self._kernel
        if kern is None:
            self.prepare(x.dtype)
            kern = cast(Backend, self._kernel)
        if kern.padded_input and self.kernel_k != self.in_features:
            x = nn.functional.pad(x, (0, self.kernel_k - self.in_features))
        return kern.forward(self, x)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.spec.describe()}"
