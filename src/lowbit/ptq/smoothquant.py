"""SmoothQuant (Xiao et al., "SmoothQuant: Accurate and Efficient Post-Training Quantization for LLMs", ICML 2023).

Activation outliers live in a few input channels; a per-channel scale s_j = max|X_j|^alpha / max|W_j|^(1-alpha)
divides them out of the activations and multiplies them into the weights, folded exactly into the producer
(norm, or previous linear layer). Then the block's weights are quantized by the inner method (RTN or GPTQ).
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.models import BlockInputs
from lowbit.ptq.config import SmoothQuantConfig
from lowbit.ptq.registry import Weights, block_handler, register_block
from lowbit.ptq.scaling import fold, input_stats, scale_groups


def smooth_scales(x_absmax: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """s_j = max|X_j|^alpha / max_k |W_kj|^(1 - alpha) over the consumers' columns, clamped away from 0."""
    w_max = torch.stack([w.detach().abs().amax(0).float() for w in weights]).amax(0)
    s = x_absmax.float().clamp_min(1e-5).pow(alpha) / w_max.clamp_min(1e-5).pow(1 - alpha)
    return s.clamp(1e-4, 1e4)


def smooth_block(block: nn.Module, inputs: BlockInputs, alpha: float) -> None:
    """Fold SmoothQuant scales into every exactly foldable group of the block (in place)."""
    mods = dict(block.named_modules())
    for group in scale_groups(block, inputs.family):
        stats = input_stats(block, inputs, [group.consumers[0]])[group.consumers[0]]
        s = smooth_scales(stats.absmax, [mods[c].weight for c in group.consumers], alpha)
        fold(block, group, s)


@register_block(SmoothQuantConfig)
def smoothquant_block(block: nn.Module, config: SmoothQuantConfig, inputs: BlockInputs) -> Weights:
    """Smooth, then quantize the block with the inner method."""
    smooth_block(block, inputs, config.alpha)
    return block_handler(config.inner)(block, config.inner, inputs)
