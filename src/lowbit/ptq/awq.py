"""AWQ (Lin et al., "AWQ: Activation-aware Weight Quantization for LLM Compression and Acceleration", MLSys 2024).

Per group of linear layers reading one tensor: search s = mean|x|^alpha (alpha on a grid, s normalised by
sqrt(max s * min s)) minimising the error of the group's outputs when the scaled weights are quantized;
fold s exactly into the producer. Then, per linear layer, search a clipping ratio per output row and weight
group minimising the output error, and clamp the weights to it. The inner method (RTN, or GPTQ) quantizes.
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.formats import dequantize, fit_scale_zero, quantize
from lowbit.ptq.config import AWQConfig
from lowbit.ptq.scaling import fold, input_stats, scale_groups
from lowbit.quantizers import QuantizedWeight, WeightSpec, quantize_weight


def _fake_quant(w: torch.Tensor, spec: WeightSpec) -> torch.Tensor:
    return quantize_weight(w, spec).dequantize()


def search_scale(x: torch.Tensor, x_mean: torch.Tensor, weights: list[torch.Tensor], spec: WeightSpec,
                 n_grid: int) -> torch.Tensor:
    """The per-channel scale minimising ||x W^T - x (Q(W s) / s)^T||^2 summed over the consumers."""
    ref = [x @ w.float().T for w in weights]
    best, best_s = float("inf"), torch.ones_like(x_mean)
    for i in range(n_grid):
        s = x_mean.clamp_min(1e-4).pow(i / n_grid)
        s = s / (s.max() * s.min()).sqrt()
        err = sum(((x @ (_fake_quant(w.float() * s, spec) / s).T - r) ** 2).mean().item()
                  for w, r in zip(weights, ref, strict=True))
        if err < best:
            best, best_s = err, s
    return best_s


def search_clip(w: torch.Tensor, x: torch.Tensor, spec: WeightSpec, grid: int, max_shrink: float) -> torch.Tensor:
    """Per (row, group) clipping ratio minimising the output error of that group's slice; returns w clamped."""
    out, inp = w.shape
    gs = inp if spec.group_size <= 0 else spec.group_size
    wg = w.float().reshape(out, inp // gs, gs)
    xg = x.float().T.reshape(inp // gs, gs, -1)  # [groups, gs, tokens]
    ref = torch.einsum("ogk,gkt->ogt", wg, xg)
    best_err = torch.full((out, inp // gs), float("inf"))
    best_r = torch.ones(out, inp // gs)
    for i in range(grid):
        r = 1 - max_shrink * i / grid
        s, z = fit_scale_zero(wg, spec.bits, spec.symmetric, clip=r)
        s = s.to(torch.float16).float()
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


def awq_block(block: nn.Module, config: AWQConfig, inputs: object) -> dict[str, QuantizedWeight]:
    """Pipeline handler: scale search and fold per group, clipping search per layer, then the inner quantizer."""
    from lowbit.models import block_linears
    from lowbit.ptq.pipeline import HANDLERS

    spec = config.weight
    mods = dict(block.named_modules())
    for group in scale_groups(block):
        st = input_stats(block, inputs, [group.consumers[0]], config.sample_tokens)[group.consumers[0]]
        s = search_scale(st.sample, st.absmean, [mods[c].weight.data for c in group.consumers], spec, config.n_grid)
        fold(block, group, s)
    if config.clip:
        linears = block_linears(block)
        names = [n for n in linears if not n.endswith(("q_proj", "k_proj", "query", "key", "qkv_proj"))]
        stats = input_stats(block, inputs, names, config.sample_tokens)  # AWQ leaves q/k unclipped
        for n in names:
            lin = linears[n]
            lin.weight.data = search_clip(lin.weight.data, stats[n].sample, spec, config.clip_grid, config.max_shrink)
    return HANDLERS[type(config.inner)](block, config.inner, inputs)
