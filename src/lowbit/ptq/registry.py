"""The PTQ registry: each config type bound to the function that applies it (torchao's `quantize_` pattern).

This module imports no method. A method module registers its handler with a decorator next to its code:
`@register_block(RTNConfig)` for methods that quantize one block at a time inside lowbit.ptq.pipeline's
sequential calibration, `@register_model(CBQConfig)` for methods that drive the whole model themselves
(several blocks at once, or model-level steps before an inner method). `lowbit.ptq` imports every method
module, so importing anything from lowbit.ptq fills the registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lowbit.models import BlockInputs, Family
from lowbit.ptq.config import MethodConfig
from lowbit.quantizers import QuantizedWeight

Weights = dict[str, QuantizedWeight]
BlockHook = Callable[[int, nn.Module], Any]


@dataclass
class QuantResult:
    """What quantize() produced: quantized weights by full module name, and how it went."""

    weights: Weights
    seconds: float
    calib_bytes: int
    report: dict | None = None  # method-specific details (CBQ: losses and time per window)


@dataclass(frozen=True)
class RunOptions:
    """How quantize() was asked to run: batch size, progress bar, and the streaming driver's per-block hooks."""

    batch_size: int = 16
    progress: bool = True
    on_block: Callable[[Weights], None] | None = None
    before_block: Callable[[int, nn.Module], bool] | None = None
    after_block: Callable[[int, nn.Module], None] | None = None


BlockHandler = Callable[[nn.Module, Any, BlockInputs | None], Weights]  # Any: the handler's own config type
ModelHandler = Callable[[nn.Module, Family, Any, torch.Tensor | None, RunOptions], QuantResult]

_BLOCK: dict[type, BlockHandler] = {}
_MODEL: dict[type, ModelHandler] = {}


def register_block(config_type: type) -> Callable[[BlockHandler], BlockHandler]:
    """Decorator: `fn(block, config, inputs) -> {name in block: QuantizedWeight}` applies `config_type`."""
    def deco(fn: BlockHandler) -> BlockHandler:
        _BLOCK[config_type] = fn
        return fn
    return deco


def register_model(config_type: type) -> Callable[[ModelHandler], ModelHandler]:
    """Decorator: `fn(model, family, config, calib_tokens, options) -> QuantResult` applies `config_type`."""
    def deco(fn: ModelHandler) -> ModelHandler:
        _MODEL[config_type] = fn
        return fn
    return deco


def block_handler(config: MethodConfig) -> BlockHandler:
    """The block handler of a config (TypeError if its type has none)."""
    fn = _BLOCK.get(type(config))
    if fn is None:
        raise TypeError(f"no block handler for {type(config).__name__}")
    return fn


def model_handler(config: MethodConfig) -> ModelHandler | None:
    """The whole-model handler of a config, or None when it is applied block by block."""
    return _MODEL.get(type(config))


def handled(config: object) -> bool:
    """Whether some handler applies this config."""
    return type(config) in _BLOCK or type(config) in _MODEL
