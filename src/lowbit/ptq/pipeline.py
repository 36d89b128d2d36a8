"""quantize(): apply any PTQ config to a loaded model, block by block, on calibration data.

The config's handler comes from lowbit.ptq.registry. Block handlers run inside sequential calibration (as in
GPTQ and llm-compressor): block i+1 sees the outputs of the already quantized block i, and only the current
block's activations are kept in memory. Whole-model handlers (CBQ, recipes) take over after validation.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from lowbit.console import note
from lowbit.errors import LowbitError
from lowbit.models import Family, block_linears, capture_block_inputs
from lowbit.ptq.config import MethodConfig
from lowbit.ptq.registry import (
    QuantResult,
    RunOptions,
    Weights,
    block_handler,
    handled,
    model_handler,
)
from lowbit.ptq.rtn import rtn_block as _rtn_block  # noqa: F401 (its old home was here)


def quantize(
    model: nn.Module, family: Family, config: MethodConfig, calib_tokens: torch.Tensor | None = None,
    batch_size: int = 16, progress: bool = True,
    on_block: Callable[[Weights], None] | None = None,
    before_block: Callable[[int, nn.Module], bool] | None = None,
    after_block: Callable[[int, nn.Module], None] | None = None,
) -> QuantResult:
    """Quantize every linear layer inside the model's blocks in place (weights become their dequantized values).

    `config` is any registered config: RTNConfig, GPTQConfig, AWQConfig, SmoothQuantConfig, CBQConfig or a
    RecipeConfig (rotation, activation and KV-cache quantization around one of them). With `on_block`, each
    finished block's weights are handed to it (and not kept in the result). Streaming uses
    `before_block(i, block)` to load a block's weights (returning True when the block was already quantized,
    e.g. on resume: it is then only run to advance the calibration inputs) and `after_block(i, block)` to write
    it out and free it.
    """
    if not handled(config):
        raise TypeError(f"no handler for {type(config).__name__}")
    blocks = family.blocks(model)
    spec = config.weight
    widths = {lin.in_features for block in blocks for lin in block_linears(block).values()}
    if spec.group_size > min(widths, default=spec.group_size):
        raise LowbitError(f"group size {spec.group_size} is larger than the narrowest layer ({min(widths)} inputs); "
                          f"choose at most {min(widths)}, or 0 for per-channel ranges")
    short = sorted(w for w in widths if spec.group_size > 0 and w % spec.group_size)
    if short:
        note(f"group size {spec.group_size} does not divide the widths {', '.join(map(str, short))}: the last group "
             f"of each row is shorter ({', '.join(str(w % spec.group_size) for w in short)} columns)")
    if config.needs_calibration and (calib_tokens is None or calib_tokens.numel() == 0):
        raise ValueError(f"{config.method} needs calibration tokens")
    return apply(model, family, config, calib_tokens, RunOptions(batch_size, progress, on_block, before_block,
                                                                 after_block))


def apply(model: nn.Module, family: Family, config: MethodConfig, calib_tokens: torch.Tensor | None,
          options: RunOptions) -> QuantResult:
    """Run a validated config's handler: its whole-model handler, or its block handler inside `sequential`."""
    run = model_handler(config)
    if run is not None:
        return run(model, family, config, calib_tokens, options)
    return sequential(model, family, config, calib_tokens, options)


def sequential(model: nn.Module, family: Family, config: MethodConfig, calib_tokens: torch.Tensor | None,
               options: RunOptions) -> QuantResult:
    """Apply a block handler to each block in turn, calibration inputs carried through the quantized blocks."""
    handler = block_handler(config)
    t0 = time.perf_counter()
    blocks = family.blocks(model)
    inputs = None
    calib_bytes = 0
    if config.needs_calibration:
        assert calib_tokens is not None
        inputs = capture_block_inputs(model, family, calib_tokens, options.batch_size)
        calib_bytes = inputs.nbytes()
    prefix = family.blocks_prefix(model)
    results: Weights = {}
    bar = tqdm(list(enumerate(blocks)), desc=f"{config.method} {config.weight.describe()}",
               unit="block", disable=not options.progress)
    for i, block in bar:
        if options.before_block is not None and options.before_block(i, block):
            if inputs is not None and i + 1 < len(blocks):
                inputs.advance(block)
            if options.after_block is not None:
                options.after_block(i, block)
            continue
        qw = handler(block, config, inputs)
        linears = block_linears(block)
        done = {}
        for name, q in qw.items():
            lin = linears[name]
            lin.weight.data = q.dequantize(lin.weight.dtype)
            done[f"{prefix}.{i}.{name}"] = q
        if options.on_block is not None:  # e.g. pack the block now; its codes and float weights need not be kept
            options.on_block(done)
        else:
            results.update(done)
        if inputs is not None and i + 1 < len(blocks):
            inputs.advance(block)
        if options.after_block is not None:
            options.after_block(i, block)
    return QuantResult(results, time.perf_counter() - t0, calib_bytes)
