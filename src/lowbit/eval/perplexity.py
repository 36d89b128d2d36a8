"""Perplexity of a causal LM over a token stream with a sliding window, and its next-token divergence from a
reference model on the same windows (llama.cpp's `--kl-divergence` statistics)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import nn
from tqdm.auto import tqdm


def windows(n: int, window: int, stride: int) -> Iterator[tuple[int, int, int]]:
    """(begin, end, new) of each window over n tokens: windows of `window` tokens advance by `stride`, and the
    last `new` positions of each are the targets no earlier window scored (every token after the first once)."""
    if window < 2 or stride <= 0 or stride > window:
        raise ValueError(f"need window >= 2 and stride in 1..window ({window}), got window {window} stride {stride}")
    prev_end = 0
    step = min(stride, window - 1)  # windows overlap by at least one token so no target is skipped
    for begin in range(0, max(n - 1, 1), step):
        end = min(begin + window, n)
        yield begin, end, end - max(prev_end, begin + 1)
        prev_end = end
        if end == n:
            return


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(input_ids=x[None], use_cache=False).logits[0, :-1].float()


def _with_bos(ids: torch.Tensor, bos: int | None) -> torch.Tensor:
    return torch.cat([torch.tensor([bos]), ids]) if bos is not None else ids


def perplexity(
    model: nn.Module, ids: torch.Tensor, window: int = 512, stride: int = 256, bos: int | None = None,
    progress: bool = True,
) -> float:
    """exp(mean NLL) of every token after the first, each predicted with at least window - stride tokens of context.

    Windows of `window` tokens advance by `stride`; only the tokens new to a window are scored (the usual
    Hugging Face recipe). `bos` is prepended to the stream if given.
    """
    ids = _with_bos(ids, bos)
    nll, count = 0.0, 0
    spans = list(windows(ids.numel(), window, stride))
    with torch.no_grad():
        for begin, end, new in tqdm(spans, desc="perplexity", unit="win", disable=not progress, leave=False):
            logits = _logits(model, ids[begin:end])
            nll += nn.functional.cross_entropy(logits[-new:], ids[begin + 1:end][-new:], reduction="sum").item()
            count += new
    return math.exp(nll / count)


def divergence(
    model: nn.Module, reference: nn.Module | None, ids: torch.Tensor, window: int = 512, stride: int = 256,
    bos: int | None = None, progress: bool = True, cache: list[torch.Tensor] | None = None,
) -> dict:
    """Perplexity of both models and KL(reference || model) of the next-token distributions on the scored
    positions of `perplexity`'s windows: mean and 99th percentile, top-1 agreement and mean logit cosine.

    `cache`, a list kept by the caller, holds the reference's logits of each window: filled by the first call,
    reused by later calls with the same ids and windows (the reference then runs once for many models).
    """
    ids = _with_bos(ids, bos)
    spans = list(windows(ids.numel(), window, stride))
    nll, ref_nll, klds, same, cos = 0.0, 0.0, [], 0, 0.0
    with torch.no_grad():
        for i, (begin, end, new) in enumerate(tqdm(spans, desc="divergence", unit="win", disable=not progress,
                                                   leave=False)):
            x, target = ids[begin:end], ids[begin + 1:end][-new:]
            a = _logits(model, x)[-new:]
            if cache is not None and i < len(cache):
                b = cache[i]
            else:
                if reference is None:
                    raise ValueError("divergence needs a reference model unless its cache holds every window")
                b = _logits(reference, x)[-new:]
                if cache is not None:
                    cache.append(b)
            if a.shape != b.shape:
                raise ValueError(f"the model has {a.shape[-1]} logits but the reference {b.shape[-1]}")
            la, lb = a.log_softmax(-1), b.log_softmax(-1)
            nll -= la.gather(1, target[:, None]).sum().item()
            ref_nll -= lb.gather(1, target[:, None]).sum().item()
            klds.append((lb.exp() * (lb - la)).sum(-1).clamp_min(0))
            same += int((a.argmax(-1) == b.argmax(-1)).sum())
            cos += nn.functional.cosine_similarity(a, b, dim=-1).sum().item()
    kld = torch.cat(klds).double()
    n = kld.numel()
    return {"perplexity": math.exp(nll / n), "reference_perplexity": math.exp(ref_nll / n),
            "kld_mean": kld.mean().item(), "kld_p99": torch.quantile(kld, 0.99).item(),
            "top1_agreement": same / n, "cosine_to_reference": cos / n, "scored_tokens": n}
