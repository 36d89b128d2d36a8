"""CFP, coarse-to-fine pre-processing of outliers, from CBQ (Ding et al., "CBQ: Cross-Block Quantization for Large
Language Models", ICLR 2025).

Coarse: values above Q3 + 1.5 IQR are outlier candidates. Fine: the sorted candidates are split in two so
that the gap between the sets is large and the spread within them small (maximise gap - lambda * (var_low +
var_high), values relative to the coarse threshold); the upper set are the outliers. Weight outliers are
truncated to the threshold (as the start of the reconstruction); activation outlier channels are scaled
down to the threshold by a per-channel scale folded exactly into the layer that produces them.
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.models import BlockInputs
from lowbit.ptq.scaling import fold, input_stats, scale_groups

MAX_QUANTILE = 1 << 22  # torch.quantile needs a bounded input; larger tensors are subsampled for Q1/Q3


def outlier_threshold(values: torch.Tensor, lam: float = 1.0) -> float | None:
    """Threshold above which the (non-negative) values are outliers, or None if there are no candidates."""
    v = values.detach().float().flatten()
    ref = v if v.numel() <= MAX_QUANTILE else v[torch.randperm(v.numel(), generator=torch.Generator().manual_seed(0))
                                                [:MAX_QUANTILE]]
    q1, q3 = torch.quantile(ref, torch.tensor([0.25, 0.75])).tolist()
    coarse = q3 + 1.5 * (q3 - q1)
    cand = v[v > coarse].sort().values
    if cand.numel() == 0 or coarse <= 0:
        return None
    c = (cand / coarse).double()
    k = c.numel()
    # split j: low = c[:j], high = c[j:] (j = 0: all candidates are outliers, the gap is to the coarse threshold)
    csum, csq = torch.cumsum(c, 0), torch.cumsum(c * c, 0)
    j = torch.arange(k, dtype=torch.float64)
    n_low, n_high = j, k - j
    s_low = torch.where(j > 0, csum[(j - 1).clamp_min(0).long()], torch.zeros_like(j))
    q_low = torch.where(j > 0, csq[(j - 1).clamp_min(0).long()], torch.zeros_like(j))
    s_high, q_high = csum[-1] - s_low, csq[-1] - q_low
    var_low = torch.where(n_low > 0, q_low / n_low.clamp_min(1) - (s_low / n_low.clamp_min(1)) ** 2, 0 * j)
    var_high = q_high / n_high - (s_high / n_high) ** 2
    below = torch.cat([torch.ones(1, dtype=c.dtype), c[:-1]])  # largest value under the split
    score = (c - below) - lam * (var_low + var_high)
    best = int(torch.argmax(score))
    return float(below[best] * coarse)


def truncate_weight(w: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """The weight with its outliers (by magnitude) clamped to the CFP threshold."""
    thr = outlier_threshold(w.abs(), lam)
    return w if thr is None else w.clamp(-thr, thr)


def scale_activation_outliers(block: nn.Module, inputs: BlockInputs, lam: float = 1.0) -> dict[str, int]:
    """Scale outlier input channels of every foldable group down to the threshold (exact); count per group."""
    counts: dict[str, int] = {}
    for group in scale_groups(block, inputs.family):
        amax = input_stats(block, inputs, [group.consumers[0]])[group.consumers[0]].absmax
        thr = outlier_threshold(amax, lam)
        if thr is None:
            continue
        s = torch.where(amax > thr, amax / thr, torch.ones_like(amax))
        counts[group.producer] = int((amax > thr).sum())
        fold(block, group, s)
    return counts
