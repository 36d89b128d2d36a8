"""Text generation with a KV cache (greedy or sampled), timing prefill and decode separately."""

from __future__ import annotations

import inspect
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import nn

from lowbit.data.text import Tokenizer
from lowbit.errors import LowbitError
from lowbit.models.lean import LeanDecoder, unsupported


@dataclass
class Generation:
    """What generate() produced and how fast: tokens per second for the prompt (prefill) and for decoding."""

    text: str
    prompt_tokens: int
    new_tokens: int
    prefill_seconds: float
    decode_seconds: float
    token_ids: list[int] = field(default_factory=list)
    engine: str = "transformers"

    @property
    def prefill_tokens_per_s(self) -> float:
        """Prompt tokens processed per second."""
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds > 0 else float("nan")

    @property
    def decode_tokens_per_s(self) -> float:
        """New tokens per second after the first (each a batch-1 forward with the cache)."""
        n = self.new_tokens - 1  # the first new token comes out of the prefill
        return n / self.decode_seconds if n > 0 and self.decode_seconds > 0 else float("nan")

    def as_dict(self) -> dict:
        """JSON-friendly summary."""
        return {"text": self.text, "prompt_tokens": self.prompt_tokens, "new_tokens": self.new_tokens,
                "prefill_seconds": self.prefill_seconds, "decode_seconds": self.decode_seconds,
                "prefill_tokens_per_s": self.prefill_tokens_per_s, "decode_tokens_per_s": self.decode_tokens_per_s,
                "engine": self.engine}


@torch.inference_mode()
def warm_up(model: nn.Module) -> None:
    """One short forward, so that kernels are built and weights converted before anything is timed."""
    model(input_ids=torch.zeros(1, 2, dtype=torch.long), use_cache=False)


def _pick(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, gen: torch.Generator) -> int:
    """Next token id from last-position logits [vocab]: argmax at temperature 0, else top-k / top-p sampling."""
    if temperature <= 0:
        return int(logits.argmax())
    logits = logits.float() / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, -1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > top_p  # keep the smallest set whose mass reaches top_p
        sorted_p[drop] = 0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
    return int(torch.multinomial(probs / probs.sum(), 1, generator=gen))


@torch.inference_mode()
def generate(
    model: nn.Module, tokenizer: Tokenizer, prompt: str | list[int], max_new_tokens: int = 64,
    temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0, stop_at_eos: bool = True,
    engine: str = "auto",
) -> Generation:
    """Continue `prompt` (text or token ids) by up to `max_new_tokens` tokens with a KV cache.

    engine: "lean" (lowbit's own forward, models.lean; Llama, Mistral, Qwen2, Qwen3), "transformers" (the
    model's forward with a DynamicCache), or "auto": lean where it applies, else transformers.
    """
    if engine not in ("auto", "lean", "transformers"):
        raise LowbitError(f"unknown engine {engine!r}; use auto, lean or transformers")
    if max_new_tokens < 1:
        raise LowbitError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    if not 0 < top_p <= 1:
        raise LowbitError(f"--top-p must be in (0, 1], got {top_p}")
    if isinstance(prompt, str):
        ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    else:
        ids = list(prompt)
    if not ids:
        raise LowbitError("the prompt is empty; give at least one token of text")
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and len(ids) + max_new_tokens > limit:
        raise LowbitError(f"prompt ({len(ids)} tokens) + --max-new-tokens {max_new_tokens} exceeds the model's "
                          f"context of {limit} tokens; shorten the prompt or ask for fewer tokens")
    eos = getattr(tokenizer, "eos_token_id", None) if stop_at_eos else None
    gen = torch.Generator().manual_seed(seed)
    why = unsupported(model)
    if engine == "lean" and why:
        raise LowbitError(f"the lean engine cannot run this model ({why}); use --engine transformers")
    if engine == "auto" and why:
        print(f"lowbit: note: the lean engine does not run this model ({why}); using transformers' forward",
              file=sys.stderr, flush=True)
    step = _lean_step(model, len(ids) + max_new_tokens) if engine != "transformers" and not why else _hf_step(model)
    t0 = time.perf_counter()
    nxt = _pick(step(ids), temperature, top_k, top_p, gen)
    t1 = time.perf_counter()
    new = [nxt]
    while len(new) < max_new_tokens and nxt != eos:
        nxt = _pick(step([nxt]), temperature, top_k, top_p, gen)
        new.append(nxt)
    t2 = time.perf_counter()
    text = cast(str, tokenizer.decode(new, skip_special_tokens=True))  # one id list decodes to one string
    name = "transformers" if engine == "transformers" or why else "lean"
    return Generation(text, len(ids), len(new), t1 - t0, t2 - t1, new, name)


def _lean_step(model: nn.Module, max_len: int) -> Callable[[list[int]], torch.Tensor]:
    """Last-position logits of the next ids, through lowbit's lean forward and static cache."""
    return LeanDecoder(model, max_len).step


def _hf_step(model: nn.Module) -> Callable[[list[int]], torch.Tensor]:
    """Last-position logits of the next ids, through the model's own forward and a DynamicCache."""
    from transformers import DynamicCache

    # transformers >= 5.2x names the argument `cache` (and deprecates `past_key_values`)
    key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    kw = {key: DynamicCache(), "use_cache": True}
    return lambda ids: model(input_ids=torch.tensor([ids]), **kw).logits[0, -1]
