"""Quantize a model's block linears into GGML types on calibration data (GPTQ in the grid, or importance-weighted
round to nearest as llama.cpp with an imatrix), block by block with sequential calibration."""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from lowbit.errors import LowbitError
from lowbit.models import Family, block_linears, capture_block_inputs
from lowbit.ptq.gptq_block import block_hessians
from lowbit.ptq.gptq_ggml import gptq_ggml, rtn_ggml

METHODS = ("gptq", "rtn")


def quantize_ggml(model: nn.Module, family: Family, types: dict[str, str], calib_tokens: torch.Tensor,
                  method: str = "gptq", batch_size: int = 16, progress: bool = True, damp: float = 0.01,
                  act_order: bool = True) -> tuple[dict[str, np.ndarray], dict[str, torch.Tensor], float]:
    """GGML bytes of every block linear in `types` (module name -> GGML type), the importance (diag of the
    Hessian) of each, and the seconds taken; the weights become their decoded values in place, so that later
    blocks calibrate on the quantized ones."""
    if method not in METHODS:
        raise LowbitError(f"unknown GGUF method {method!r}; choose one of {', '.join(METHODS)}")
    t0 = time.perf_counter()
    blocks = family.blocks(model)
    prefix = family.blocks_prefix(model)
    inputs = capture_block_inputs(model, family, calib_tokens, batch_size)
    out: dict[str, np.ndarray] = {}
    importance: dict[str, torch.Tensor] = {}
    for i, block in enumerate(tqdm(blocks, desc=f"GGUF {method}", unit="block", disable=not progress)):
        linears = block_linears(block)
        stages, acc = block_hessians(linears, block, inputs)
        for names in stages:
            H = acc[names[0]].H
            for n in names:
                full = f"{prefix}.{i}.{n}"
                if full not in types:
                    continue
                lin = linears[n]
                W = lin.weight.data.float()
                if method == "gptq":
                    data, decoded = gptq_ggml(W, H, types[full], damp, act_order)
                else:
                    data, decoded = rtn_ggml(W, torch.diag(H), types[full])
                lin.weight.data = decoded.to(lin.weight.dtype)
                out[full], importance[full] = data, torch.diag(H).clone()
        if i + 1 < len(blocks):
            inputs.advance(block)
    return out, importance, time.perf_counter() - t0
