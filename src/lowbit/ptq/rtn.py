"""Round-to-nearest with min-max (or MSE-searched) ranges: the baseline, no calibration data."""

from __future__ import annotations

from torch import nn

from lowbit.models import BlockInputs, block_linears
from lowbit.ptq.act_clip import calibrate_clips
from lowbit.ptq.config import RTNConfig
from lowbit.ptq.registry import Weights, register_block
from lowbit.quantizers import quantize_weight


@register_block(RTNConfig)
def rtn_block(block: nn.Module, config: RTNConfig, inputs: BlockInputs | None = None) -> Weights:
    """Every linear of the block rounded to nearest; calibration inputs, when given, set activation clips."""
    if inputs is not None:
        calibrate_clips(block, inputs)
    return {name: quantize_weight(lin.weight.data, config.weight) for name, lin in block_linears(block).items()}
