"""quantize(): apply a PTQ config to a loaded model, block by block, on calibration data.

Calibration is sequential (as in GPTQ and llm-compressor): block i+1 sees the outputs of the already
quantized block i, and only the current block's activations are kept in memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from lowbit.models import Family, block_linears, capture_block_inputs
from lowbit.ptq.config import GPTQConfig, RTNConfig
from lowbit.ptq.gptq import HessianAccumulator, gptq_quantize
from lowbit.quantizers import QuantizedWeight, quantize_weight


@dataclass
class QuantResult:
    """What quantize() produced: quantized weights by full module name, and how it went."""

    weights: dict[str, QuantizedWeight]
    seconds: float
    calib_bytes: int


def _rtn_block(block: nn.Module, config: RTNConfig, inputs: object) -> dict[str, QuantizedWeight]:
    return {name: quantize_weight(lin.weight.data, config.weight) for name, lin in block_linears(block).items()}


def _hessians(linears: dict[str, nn.Linear], block: nn.Module, inputs: object) -> dict[str, HessianAccumulator]:
    """Input Hessians of the given linear layers over one pass of the calibration data through the block."""
    acc = {name: HessianAccumulator(lin.in_features) for name, lin in linears.items()}
    hooks = [lin.register_forward_hook(lambda _m, a, _o, n=name: acc[n].add(a[0].detach()))
             for name, lin in linears.items()]
    try:
        inputs.run(block)  # type: ignore[attr-defined]
    finally:
        for h in hooks:
            h.remove()
    return acc


def _gptq_block(block: nn.Module, config: GPTQConfig, inputs: object) -> dict[str, QuantizedWeight]:
    linears = block_linears(block)
    acc = _hessians(linears, block, inputs)
    # Layers fed the same input (q/k/v, gate/up) have the same Hessian: one GPTQ sweep serves them all.
    stages = _shared_input_groups(acc)
    out: dict[str, QuantizedWeight] = {}
    for i, names in enumerate(stages):
        if config.true_sequential and i > 0:  # inputs as produced by the already-quantized earlier stages
            acc = _hessians({n: linears[n] for n in names}, block, inputs)
        W = torch.cat([linears[n].weight.data for n in names])
        q = gptq_quantize(W, acc[names[0]].H, config.weight, config.damp, config.act_order, config.block_size)
        for n, qn in zip(names, q.split([linears[n].out_features for n in names]), strict=True):
            linears[n].weight.data = qn.dequantize(linears[n].weight.dtype)
            out[n] = qn
    return out


def _shared_input_groups(acc: dict[str, HessianAccumulator]) -> list[list[str]]:
    groups: list[list[str]] = []
    for name, a in acc.items():
        for g in groups:
            if torch.equal(acc[g[0]].H, a.H):
                g.append(name)
                break
        else:
            groups.append([name])
    return groups


HANDLERS: dict[type, Callable] = {RTNConfig: _rtn_block, GPTQConfig: _gptq_block}


def quantize(
    model: nn.Module, family: Family, config: RTNConfig | GPTQConfig, calib_tokens: torch.Tensor | None = None,
    batch_size: int = 16, progress: bool = True,
) -> QuantResult:
    """Quantize every linear layer inside the model's blocks in place (weights become their dequantized values)."""
    handler = HANDLERS.get(type(config))
    if handler is None:
        raise TypeError(f"no handler for {type(config).__name__}")
    t0 = time.perf_counter()
    blocks = family.blocks(model)
    for block in blocks:  # validate every layer before any work (group size must divide, weights finite)
        for lin in block_linears(block).values():
            config.weight.groups(lin.in_features)
    inputs = None
    calib_bytes = 0
    if config.needs_calibration:
        if calib_tokens is None or calib_tokens.numel() == 0:
            raise ValueError(f"{config.method} needs calibration tokens")
        inputs = capture_block_inputs(model, family, calib_tokens, batch_size)
        calib_bytes = inputs.nbytes()
    prefix = _blocks_prefix(model, blocks)
    results: dict[str, QuantizedWeight] = {}
    bar = tqdm(list(enumerate(blocks)), desc=f"{config.method} {config.weight.describe()}", unit="block",
               disable=not progress)
    for i, block in bar:
        qw = handler(block, config, inputs)
        linears = block_linears(block)
        for name, q in qw.items():
            lin = linears[name]
            lin.weight.data = q.dequantize(lin.weight.dtype)
            results[f"{prefix}.{i}.{name}"] = q
        if inputs is not None and i + 1 < len(blocks):
            inputs.advance(block)
    return QuantResult(results, time.perf_counter() - t0, calib_bytes)


def _blocks_prefix(model: nn.Module, blocks: nn.ModuleList) -> str:
    for name, mod in model.named_modules():
        if mod is blocks:
            return name
    raise RuntimeError("blocks not found among the model's modules")
