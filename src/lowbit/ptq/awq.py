"""AWQ (Lin et al., "AWQ: Activation-aware Weight Quantization for LLM Compression and Acceleration", MLSys 2024).

Per group of linear layers reading one tensor: search s = mean|x|^alpha (alpha on a grid, s normalised by
sqrt(max s * min s)) minimising the error of the output of the module the group feeds when the scaled weights
are quantized (as llm-awq's `auto_scale`: the attention module for q/k/v, the MLP for gate/up, the layer itself
for up -> down and v -> o), over all calibration tokens; fold s exactly into the producer. Then, per linear
layer, search a clipping ratio per output row and weight group minimising that layer's output error on sampled
tokens, and clamp the weights to it. The inner method (RTN, or GPTQ) quantizes.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from lowbit.formats import dequantize, fit_scale_zero, quantize
from lowbit.models import BlockInputs, block_linears, block_output
from lowbit.models.families import block_family
from lowbit.ptq.config import AWQConfig
from lowbit.ptq.registry import Weights, block_handler, register_block
from lowbit.ptq.scaling import ScaleGroup, fold, input_stats, scale_groups
from lowbit.quantizers import WeightSpec, fp16_round, quantize_weight
from lowbit.quantizers.activation import fp_activations


def _fake_quant(w: torch.Tensor, spec: WeightSpec) -> torch.Tensor:
    return quantize_weight(w, spec).dequantize()


class _Stop(Exception):
    """Raised by a hook once the inspected module has produced its output (the rest of the block is skipped)."""


def inspected_module(group: ScaleGroup) -> str:
    """The module whose output AWQ's scale search compares: the consumers' parent (attention, MLP) for a norm
    producer, the consumer itself for a linear producer (up -> down, v -> o)."""
    if group.kind == "linear" or "." not in group.consumers[0]:
        return group.consumers[0]
    return group.consumers[0].rpartition(".")[0]


def module_calls(block: nn.Module, name: str, inputs: BlockInputs) -> list[tuple[tuple, dict, torch.Tensor]]:
    """(args, kwargs, output) of every call of one submodule over the calibration batches (fp activations)."""
    mod = block.get_submodule(name)
    calls: list = []

    def pre(_m: nn.Module, args: tuple, kwargs: dict) -> None:
        calls.append([args, dict(kwargs), None])

    def post(_m: nn.Module, _a: tuple, _k: dict, out: object) -> None:
        calls[-1][2] = block_output(out).detach().float()
        raise _Stop

    hooks = [mod.register_forward_pre_hook(pre, with_kwargs=True), mod.register_forward_hook(post, with_kwargs=True)]
    try:
        with torch.no_grad(), fp_activations(block):
            for h, a, k in zip(inputs.hidden, inputs.args, inputs.kwargs, strict=True):
                try:
                    block(h, *a, **k)
                except _Stop:
                    pass
    finally:
        for hk in hooks:
            hk.remove()
    return [tuple(c) for c in calls]


def search_scale(module: nn.Module, calls: list[tuple[tuple, dict, torch.Tensor]], x_mean: torch.Tensor,
                 layers: list[nn.Linear], spec: WeightSpec, n_grid: int) -> torch.Tensor:
    """The per-channel scale s = mean|x|^alpha (alpha in 0, 1/n, ..., (n-1)/n) minimising the mean squared error
    of `module`'s output over the recorded calls when each of `layers` holds Q(W s) / s; weights are restored."""
    saved = [lin.weight.data for lin in layers]
    total = sum(c[2].numel() for c in calls)
    best, best_s = float("inf"), torch.ones_like(x_mean)
    try:
        with torch.no_grad(), fp_activations(module):
            for i in range(n_grid):
                s = x_mean.float().clamp_min(1e-4).pow(i / n_grid)
                s = s / (s.max() * s.min()).sqrt()
                for lin, w in zip(layers, saved, strict=True):
                    lin.weight.data = (_fake_quant(w.float() * s, spec) / s).to(w.dtype)
                err = sum((block_output(module(*a, **k)).float() - ref).pow(2).sum().item()
                          for a, k, ref in calls) / total
                if err < best:
                    best, best_s = err, s
    finally:
        for lin, w in zip(layers, saved, strict=True):
            lin.weight.data = w
    return best_s


def search_clip(w: torch.Tensor, x: torch.Tensor, spec: WeightSpec, grid: int, max_shrink: float) -> torch.Tensor:
    """Per (row, group) clipping ratio minimising the output error of that group's slice; returns w clamped."""
    out, inp = w.shape
    gs = spec.group_len(inp)
    full = inp // gs * gs
    if full < inp:  # a short last group: searched on its own
        head = search_clip(w[:, :full], x[:, :full], spec, grid, max_shrink) if full else w[:, :0]
        tail = search_clip(w[:, full:], x[:, full:], replace(spec, group_size=0), grid, max_shrink)
        return torch.cat([head, tail], 1)
    wg = w.float().reshape(out, inp // gs, gs)
    xg = x.float().T.reshape(inp // gs, gs, -1)  # [groups, gs, tokens]
    ref = torch.einsum("ogk,gkt->ogt", wg, xg)
    best_err = torch.full((out, inp // gs), float("inf"))
    best_r = torch.ones(out, inp // gs)
    for i in range(grid):
        r = 1 - max_shrink * i / grid
        s, z = fit_scale_zero(wg, spec.bits, spec.symmetric, clip=r)
        s = fp16_round(s)
        q = dequantize(quantize(wg, s, z, spec.bits), s, z)
        err = (torch.einsum("ogk,gkt->ogt", q, xg) - ref).pow(2).mean(-1)
        better = err < best_err
        best_err, best_r = torch.where(better, err, best_err), torch.where(better, torch.full_like(best_r, r), best_r)
    r = best_r[..., None]
    if spec.symmetric:
        top = wg.abs().amax(-1, keepdim=True) * r
        lo, hi = -top, top
    else:
        lo = (wg.amin(-1, keepdim=True) * r).clamp(max=0)
        hi = (wg.amax(-1, keepdim=True) * r).clamp(min=0)
    return torch.maximum(torch.minimum(wg, hi), lo).reshape(out, inp).to(w.dtype)


@register_block(AWQConfig)
def awq_block(block: nn.Module, config: AWQConfig, inputs: BlockInputs) -> Weights:
    """Scale search and fold per group, clipping search per layer, then the inner quantizer."""
    spec = config.weight
    mods = dict(block.named_modules())
    for group in scale_groups(block, inputs.family):
        x_mean = input_stats(block, inputs, [group.consumers[0]])[group.consumers[0]].absmean
        name = inspected_module(group)
        s = search_scale(mods[name], module_calls(block, name, inputs), x_mean, [mods[c] for c in group.consumers],
                         spec, config.n_grid)
        fold(block, group, s)
    if config.clip:
        linears = block_linears(block)
        unclipped = block_family(block, inputs.family).unclipped()
        names = [n for n in linears if not n.endswith(unclipped)]
        stats = input_stats(block, inputs, names, config.sample_tokens)  # AWQ leaves q/k unclipped
        for n in names:
            lin = linears[n]
            lin.weight.data = search_clip(lin.weight.data, stats[n].sample, spec, config.clip_grid, config.max_shrink)
    return block_handler(config.inner)(block, config.inner, inputs)
