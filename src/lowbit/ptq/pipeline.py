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
from lowbit.ptq.awq import awq_block
from lowbit.ptq.cbq import cbq_quantize
from lowbit.ptq.config import AWQConfig, CBQConfig, GPTQConfig, RTNConfig, SmoothQuantConfig
from lowbit.ptq.gptq import HessianAccumulator, gptq_quantize
from lowbit.ptq.smoothquant import smoothquant_block
from lowbit.quantizers import QuantizedWeight, quantize_weight


@dataclass
class QuantResult:
    """What quantize() produced: quantized weights by full module name, and how it went."""

    weights: dict[str, QuantizedWeight]
    seconds: float
    calib_bytes: int
    report: dict | None = None  # method-specific details (CBQ: losses and time per window)


def _rtn_block(block: nn.Module, config: RTNConfig, inputs: object) -> dict[str, QuantizedWeight]:
    return {name: quantize_weight(lin.weight.data, config.weight) for name, lin in block_linears(block).items()}


def _hessians(linears: dict[str, nn.Linear], block: nn.Module, inputs: object) -> dict[str, list[str] | object]:
    """Input Hessians over one pass of the calibration data through the block, one per distinct input.

    Returns {"stages": groups of layer names that read the same tensor (q/k/v, gate/up), in order, "acc":
    the accumulator of each group's first layer}; a shared input is folded into its Hessian once.
    """
    leader: dict[str, str] = {}
    acc: dict[str, HessianAccumulator] = {}
    current: list[tuple[torch.Tensor, str]] = []  # this batch's inputs (kept alive, compared by identity)

    def hook(name: str, x: torch.Tensor) -> None:
        if name == order[0]:
            current.clear()
        for t, owner in current:
            if t is x:
                leader.setdefault(name, leader[owner])
                return
        current.append((x, name))
        leader.setdefault(name, name)
        acc.setdefault(name, HessianAccumulator(x.shape[-1])).add(x.detach())

    order = list(linears)
    hooks = [lin.register_forward_hook(lambda _m, a, _o, n=name: hook(n, a[0])) for name, lin in linears.items()]
    try:
        inputs.run(block)  # type: ignore[attr-defined]
    finally:
        for h in hooks:
            h.remove()
        current.clear()
    stages: dict[str, list[str]] = {}
    for name in order:
        stages.setdefault(leader[name], []).append(name)
    return {"stages": list(stages.values()), "acc": acc}


def _gptq_block(block: nn.Module, config: GPTQConfig, inputs: object) -> dict[str, QuantizedWeight]:
    linears = block_linears(block)
    first = _hessians(linears, block, inputs)
    acc = first["acc"]
    out: dict[str, QuantizedWeight] = {}
    # Layers fed the same input (q/k/v, gate/up) have the same Hessian: one GPTQ sweep serves them all.
    for i, names in enumerate(first["stages"]):
        if config.true_sequential and i > 0:  # inputs as produced by the already-quantized earlier stages
            acc = _hessians({n: linears[n] for n in names}, block, inputs)["acc"]
        W = torch.cat([linears[n].weight.data for n in names])
        q = gptq_quantize(W, acc[names[0]].H, config.weight, config.damp, config.act_order, config.block_size)
        for n, qn in zip(names, q.split([linears[n].out_features for n in names]), strict=True):
            linears[n].weight.data = qn.dequantize(linears[n].weight.dtype)
            out[n] = qn
    return out


HANDLERS: dict[type, Callable] = {RTNConfig: _rtn_block, GPTQConfig: _gptq_block,
                                  SmoothQuantConfig: smoothquant_block, AWQConfig: awq_block}
RUNNERS: dict[type, Callable] = {CBQConfig: cbq_quantize}  # methods that calibrate several blocks at once


def quantize(
    model: nn.Module, family: Family, config: RTNConfig | GPTQConfig, calib_tokens: torch.Tensor | None = None,
    batch_size: int = 16, progress: bool = True,
    on_block: Callable[[dict[str, QuantizedWeight]], None] | None = None,
    before_block: Callable[[int, nn.Module], bool] | None = None,
    after_block: Callable[[int, nn.Module], None] | None = None,
) -> QuantResult:
    """Quantize every linear layer inside the model's blocks in place (weights become their dequantized values).

    With `on_block`, each finished block's weights are handed to it (and not kept in the result). Streaming
    uses `before_block(i, block)` to load a block's weights (returning True when the block was already
    quantized, e.g. on resume: it is then only run to advance the calibration inputs) and
    `after_block(i, block)` to write it out and free it.
    """
    handler = HANDLERS.get(type(config))
    if handler is None and type(config) not in RUNNERS:
        raise TypeError(f"no handler for {type(config).__name__}")
    t0 = time.perf_counter()
    blocks = family.blocks(model)
    for block in blocks:  # validate every layer before any work (group size must divide, weights finite)
        for lin in block_linears(block).values():
            config.weight.groups(lin.in_features)
    if type(config) in RUNNERS:
        if calib_tokens is None or calib_tokens.numel() == 0:
            raise ValueError(f"{config.method} needs calibration tokens")
        weights, nbytes, report = RUNNERS[type(config)](model, family, config, calib_tokens, progress, on_block,
                                                        family.blocks_prefix(model))
        return QuantResult(weights, time.perf_counter() - t0, nbytes, report)
    inputs = None
    calib_bytes = 0
    if config.needs_calibration:
        if calib_tokens is None or calib_tokens.numel() == 0:
            raise ValueError(f"{config.method} needs calibration tokens")
        inputs = capture_block_inputs(model, family, calib_tokens, batch_size)
        calib_bytes = inputs.nbytes()
    prefix = family.blocks_prefix(model)
    results: dict[str, QuantizedWeight] = {}
    bar = tqdm(list(enumerate(blocks)), desc=f"{config.method} {config.weight.describe()}", unit="block",
               disable=not progress)
    for i, block in bar:
        if before_block is not None and before_block(i, block):
            if inputs is not None and i + 1 < len(blocks):
                inputs.advance(block)
            if after_block is not None:
                after_block(i, block)
            continue
        qw = handler(block, config, inputs)
        linears = block_linears(block)
        done = {}
        for name, q in qw.items():
            lin = linears[name]
            lin.weight.data = q.dequantize(lin.weight.dtype)
            done[f"{prefix}.{i}.{name}"] = q
        if on_block is not None:  # e.g. pack the block now; its codes and float weights need not be kept
            on_block(done)
        else:
            results.update(done)
        if inputs is not None and i + 1 < len(blocks):
            inputs.advance(block)
        if after_block is not None:
            after_block(i, block)
    return QuantResult(results, time.perf_counter() - t0, calib_bytes)

