"""Activation clipping ratios chosen on calibration data: for each linear layer whose input is quantized per token
(W4A4, W4A8), the clip c in a grid that minimises the layer's output error ||W Q_c(x) - W x||^2 on its
calibration inputs, where Q_c scales each token by c * max|x| (QuaRot fixes c = 0.9; a search per layer is
cheaper than learning it, as OmniQuant does, and never worse than c = 1 on the calibration data).
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.models import BlockInputs, block_linears
from lowbit.quantizers.activation import InputTransform, fake_quant_tokens, transform_of
from lowbit.quantizers.hadamard import fwht

CLIP_GRID = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5)
MAX_TOKENS = 4096  # calibration tokens per layer kept for the search
EVERY = 8  # of which every 8th token of each batch, so that the sample spans the calibration windows


def output_error(weight: torch.Tensor, x: torch.Tensor, t: InputTransform, clip: float) -> float:
    """||W Q_clip(x) - W x||^2 over the sampled tokens x (x before the transform's Hadamard, if any)."""
    if t.hadamard:
        x = fwht(x)
    return float((fake_quant_tokens(x, t.bits, clip) - x).matmul(weight.t()).pow(2).sum())


def best_clip(weight: torch.Tensor, x: torch.Tensor, t: InputTransform, grid: tuple[float, ...] = CLIP_GRID
              ) -> float:
    """The grid value of least output error (the first one on ties, so 1.0 unless clipping helps)."""
    errors = [output_error(weight, x, t, c) for c in grid]
    return grid[min(range(len(grid)), key=errors.__getitem__)]


def calibrate_clips(block: nn.Module, inputs: BlockInputs, max_tokens: int = MAX_TOKENS) -> dict[str, float]:
    """Set the clip of every quantized-input linear layer of the block from its calibration inputs; returns them."""
    linears = {n: m for n, m in block_linears(block).items()
               if (t := transform_of(m)) is not None and t.bits < 16 and t.enabled}
    if not linears:
        return {}
    samples: dict[str, list[torch.Tensor]] = {n: [] for n in linears}
    kept = dict.fromkeys(linears, 0)

    def grab(name: str, x: torch.Tensor) -> None:
        if kept[name] < max_tokens:
            rows = x.detach().reshape(-1, x.shape[-1])[::EVERY][: max_tokens - kept[name]].float()
            samples[name].append(rows)
            kept[name] += rows.shape[0]

    # Prepended, so the raw input is seen before the layer's own transform (Hadamard, quantizer) rewrites it.
    hooks = [m.register_forward_pre_hook(lambda _m, a, n=n: grab(n, a[0]), prepend=True) for n, m in linears.items()]
    try:
        inputs.run(block)
    finally:
        for h in hooks:
            h.remove()
    chosen = {}
    for name, lin in linears.items():
        t = transform_of(lin)
        assert t is not None
        t.clip = best_clip(lin.weight.detach().float(), torch.cat(samples[name]), t)
        chosen[name] = t.clip
    return chosen
