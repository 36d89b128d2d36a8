"""GPTQ over one transformer block: one Hessian per distinct input, one sweep for the layers that share it."""

from __future__ import annotations

import torch
from torch import nn

from lowbit.models import BlockInputs, block_linears
from lowbit.ptq.act_clip import calibrate_clips
from lowbit.ptq.config import GPTQConfig
from lowbit.ptq.gptq import HessianAccumulator, gptq_quantize
from lowbit.ptq.registry import Weights, register_block


def block_hessians(linears: dict[str, nn.Linear], block: nn.Module,
                   inputs: BlockInputs) -> tuple[list[list[str]], dict[str, HessianAccumulator]]:
    """Input Hessians over one pass of the calibration data through the block, one per distinct input.

    Returns the groups of layer names that read the same tensor (q/k/v, gate/up), in order, and the accumulator
    of each group's first layer; a shared input is folded into its Hessian once.
    """
    leader: dict[str, str] = {}
    acc: dict[str, HessianAccumulator] = {}
    current: list[tuple[torch.Tensor, str]] = []  # this batch's inputs (kept alive, compared by identity)
    order = list(linears)

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

    hooks = [lin.register_forward_hook(lambda _m, a, _o, n=name: hook(n, a[0])) for name, lin in linears.items()]
    try:
        inputs.run(block)
    finally:
        for h in hooks:
            h.remove()
        current.clear()
    stages: dict[str, list[str]] = {}
    for name in order:
        stages.setdefault(leader[name], []).append(name)
    return list(stages.values()), acc


@register_block(GPTQConfig)
def gptq_block(block: nn.Module, config: GPTQConfig, inputs: BlockInputs | None) -> Weights:
    """GPTQ for every linear of the block on its calibration inputs (weights become their quantized values)."""
    if inputs is None:
        raise ValueError("gptq needs calibration inputs")
    calibrate_clips(block, inputs)  # activation clips (W4A4 / W4A8) first: the Hessians see the final inputs
    linears = block_linears(block)
    stages, acc = block_hessians(linears, block, inputs)
    out: Weights = {}
    # Layers fed the same input (q/k/v, gate/up) have the same Hessian: one GPTQ sweep serves them all.
    for i, names in enumerate(stages):
        if config.true_sequential and i > 0:  # inputs as produced by the already-quantized earlier stages
            acc = block_hessians({n: linears[n] for n in names}, block, inputs)[1]
        W = torch.cat([linears[n].weight.data for n in names])
        q = gptq_quantize(W, acc[names[0]].H, config.weight, config.damp, config.act_order, config.block_size)
        for n, qn in zip(names, q.split([linears[n].out_features for n in names]), strict=True):
            linears[n].weight.data = qn.dequantize(linears[n].weight.dtype)
            out[n] = qn
    return out
