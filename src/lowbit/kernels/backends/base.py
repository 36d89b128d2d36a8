"""The interface every PackedLinear compute backend implements, and the PyTorch reference backend ("torch")."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

if TYPE_CHECKING:
    from lowbit.kernels.packed import PackedLinear

PREFILL_ROWS = 8  # above this many rows the kernels are compute-bound: dequantize and use a float matmul
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class Backend:
    """The kernel state of one PackedLinear, built by `choose_backend` on the first forward.

    A backend computes `forward(layer, x)` from the layer's packed buffers (and whatever it derived from them);
    if it moves the codes out of `layer.qweight` it must give them back through `codes` and `release`."""

    name: ClassVar[str] = ""
    padded_input: ClassVar[bool] = True  # takes x [..., layer.kernel_k] (a short last group padded with zeros)

    def forward(self, layer: PackedLinear, x: torch.Tensor) -> torch.Tensor:
        """y = x W^T + b for activations x [..., in_features]."""
        raise NotImplementedError

    def codes(self, layer: PackedLinear) -> torch.Tensor | None:
        """The codes [out, in] if this backend holds them outside `layer.qweight`, else None."""
        return None

    def release(self, layer: PackedLinear) -> None:
        """Restore the layer's canonical packed rows in `qweight` before this state is dropped."""

    def get(self, key: str, default: Any = None) -> Any:
        """Dict-style read of an attribute (`backend.get("q4bf16")`), for callers of the old dict state."""
        return getattr(self, key, default)

    def values(self) -> list[Any]:
        """The state this backend holds (tensors among them), dict-style."""
        return list(vars(self).values())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class ReferenceBackend(Backend):
    """"torch": dequantize to the activation dtype, then a float matmul; correct everywhere."""

    name = "torch"
    padded_input = False  # works on x [..., in_features]

    def forward(self, layer: PackedLinear, x: torch.Tensor) -> torch.Tensor:
        bias = None if layer.bias is None else layer.bias.to(x.dtype)
        return nn.functional.linear(x, layer.dequantized_weight(x.dtype), bias)
