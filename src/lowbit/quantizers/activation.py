"""Simulated per-token dynamic integer activations, and the input transforms installed on linear layers.

Every linear layer inside the blocks can get an `InputTransform`: an optional online Hadamard transform
(QuaRot's rotation before the down projection) followed by symmetric per-token fake quantization of its
input (8 or 4 bits; scale = clip * max|x_token| / (2^(b-1) - 1), computed at run time). The transforms are
forward pre-hooks, so they work on nn.Linear and PackedLinear alike; the model keeps a registry of them by
module name (`model.lowbit_inputs`) so that they can be re-installed on replaced modules, saved in
lowbit_quant.json and restored at load.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol, cast

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from lowbit.errors import LowbitError
from lowbit.formats import signed_range
from lowbit.quantizers.hadamard import fwht
from lowbit.quantizers.ste import round_ste

__all__ = [
    "ACT_BITS",
    "InputTransform",
    "check_act_bits",
    "fake_quant_tokens",
    "fp_activations",
    "from_json",
    "install",
    "quantize_activations",
    "registry",
    "round_ste",
    "set_transform",
    "to_json",
    "transform_of",
]

ACT_BITS = (4, 8, 16)


def check_act_bits(bits: int) -> int:
    """Validate an activation bit width (16 = activations left in floating point)."""
    if bits not in ACT_BITS:
        raise LowbitError(f"activation bits must be one of {', '.join(map(str, ACT_BITS))} (16 = not quantized), "
                          f"got {bits!r}")
    return bits


def fake_quant_tokens(x: torch.Tensor, bits: int, clip: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Symmetric per-token (last dim) dynamic quantize-dequantize; differentiable (STE) in x and clip."""
    lo, hi = signed_range(bits)
    scale = (x.detach().abs().amax(dim=-1, keepdim=True) * clip / hi).clamp_min(1e-8)
    return torch.clamp(round_ste(x / scale), lo, hi) * scale


@dataclass
class InputTransform:
    """What happens to a linear layer's input: online Hadamard, then per-token fake quantization."""

    bits: int = 16
    hadamard: bool = False
    clip: float = 1.0
    enabled: bool = field(default=True, compare=False)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The transformed input."""
        if self.hadamard:
            x = fwht(x)
        if self.bits < 16 and self.enabled:
            x = fake_quant_tokens(x, self.bits, self.clip)
        return x

    def __call__(self, _module: nn.Module, args: tuple) -> tuple:
        return (self.apply(args[0]), *args[1:])

    def to_json(self) -> dict:
        """Plain dict for lowbit_quant.json."""
        return {"bits": self.bits, "hadamard": self.hadamard, "clip": round(float(self.clip), 6)}


class _WithRegistry(Protocol):
    """A model carrying its input transforms (a plain attribute on the nn.Module, set by `registry`)."""

    lowbit_inputs: dict[str, InputTransform]


class _WithTransform(Protocol):
    """A module with an installed input transform (plain attributes on the nn.Module, set by `install`)."""

    _lowbit_input: InputTransform
    _lowbit_input_hook: RemovableHandle


def registry(model: nn.Module) -> dict[str, InputTransform]:
    """The model's input transforms by module name (created empty on first use)."""
    reg: dict[str, InputTransform] | None = getattr(model, "lowbit_inputs", None)
    if reg is None:
        reg = {}
        cast(_WithRegistry, model).lowbit_inputs = reg  # nn.Module's stubs only type Tensor/Module attributes
    return reg


def install(model: nn.Module, names: list[str] | None = None) -> None:
    """(Re)register the registered transforms as pre-hooks on the current modules of those names (all by default)."""
    reg = registry(model)
    for name in names if names is not None else list(reg):
        if name not in reg:
            continue
        mod = model.get_submodule(name)
        old = getattr(mod, "_lowbit_input_hook", None)
        if old is not None:
            old.remove()
        slots = cast(_WithTransform, mod)  # nn.Module's stubs only type Tensor/Module attributes
        slots._lowbit_input = reg[name]
        slots._lowbit_input_hook = mod.register_forward_pre_hook(reg[name])


def set_transform(model: nn.Module, name: str, bits: int | None = None, hadamard: bool | None = None,
                  clip: float | None = None) -> InputTransform:
    """Create or update the transform of one module (and install it)."""
    reg = registry(model)
    t = reg.setdefault(name, InputTransform())
    if bits is not None:
        t.bits = check_act_bits(bits)
    if hadamard is not None:
        t.hadamard = hadamard
    if clip is not None:
        t.clip = float(clip)
    install(model, [name])
    return t


def quantize_activations(model: nn.Module, names: list[str], bits: int) -> None:
    """Per-token dynamic fake quantization of the inputs of the named linear layers."""
    check_act_bits(bits)
    if bits < 16:
        for name in names:
            set_transform(model, name, bits=bits)


def to_json(model: nn.Module) -> dict[str, dict]:
    """The registry as JSON-ready dicts for lowbit_quant.json (only transforms that do something)."""
    return {n: t.to_json() for n, t in sorted(registry(model).items()) if t.bits < 16 or t.hadamard}


def from_json(model: nn.Module, saved: dict[str, dict]) -> None:
    """Install transforms saved by to_json() (used when a checkpoint is loaded)."""
    for name, d in saved.items():
        try:
            model.get_submodule(name)
        except AttributeError as e:
            raise LowbitError(f"the checkpoint names an input transform on {name!r}, which the model lacks") from e
        set_transform(model, name, bits=int(d.get("bits", 16)), hadamard=bool(d.get("hadamard", False)),
                      clip=float(d.get("clip", 1.0)))


@contextmanager
def fp_activations(*modules: nn.Module) -> Iterator[None]:
    """Switch activation and KV-cache quantization off inside models or blocks (Hadamard transforms stay)."""
    ts = [getattr(m, a) for module in modules for m in module.modules() for a in ("_lowbit_input", "_lowbit_kv")
          if getattr(m, a, None) is not None]
    before = [t.enabled for t in ts]
    for t in ts:
        t.enabled = False
    try:
        yield
    finally:
        for t, b in zip(ts, before, strict=True):
            t.enabled = b


def transform_of(module: nn.Module) -> InputTransform | None:
    """The input transform installed on a module, if any."""
    return getattr(module, "_lowbit_input", None)
