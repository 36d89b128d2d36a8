"""Perplexity of a causal LM over a token stream with a sliding window."""

from __future__ import annotations

import math

import torch
from torch import nn
from tqdm.auto import tqdm


def perplexity(
    model: nn.Module, ids: torch.Tensor, window: int = 512, stride: int = 256, bos: int | None = None,
    progress: bool = True,
) -> float:
    """exp(mean NLL) of every token after the first, each predicted with at least window - stride tokens of context.

    Windows of `window` tokens advance by `stride`; only the tokens new to a window are scored (the usual
    Hugging Face recipe). `bos` is prepended to the stream if given.
    """
    if window < 2 or stride <= 0 or stride > window:
        raise ValueError(f"need window >= 2 and stride in 1..window ({window}), got window {window} stride {stride}")
    if bos is not None:
        ids = torch.cat([torch.tensor([bos]), ids])
    n = ids.numel()
    nll, count, prev_end = 0.0, 0, 0
    step = min(stride, window - 1)  # windows overlap by at least one token so no target is skipped
    starts = list(range(0, max(n - 1, 1), max(step, 1)))
    with torch.no_grad():
        for begin in tqdm(starts, desc="perplexity", unit="win", disable=not progress, leave=False):
            end = min(begin + window, n)
            x = ids[begin:end][None]
            logits = model(input_ids=x, use_cache=False).logits[0, :-1].float()
            target = ids[begin + 1:end]
            new = end - max(prev_end, begin + 1)  # tokens not yet scored
            nll += nn.functional.cross_entropy(logits[-new:], target[-new:], reduction="sum").item()
            count += new
            prev_end = end
            if end == n:
                break
    return math.exp(nll / count)
