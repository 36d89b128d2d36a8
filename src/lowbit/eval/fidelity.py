"""Output fidelity of encoders: mean cosine similarity of pooled embeddings to a reference model."""

from __future__ import annotations

import torch
from torch import nn

from lowbit.data.text import Tokenizer


def paragraphs(text: str, limit: int = 256) -> list[str]:
    """Non-empty paragraphs (blank-line separated) of a text, at most `limit`."""
    parts = [" ".join(p.split()) for p in text.split("\n\n")]
    return [p for p in parts if len(p) > 20][:limit]


def embed(
    model: nn.Module, tokenizer: Tokenizer, texts: list[str], max_len: int = 128, batch: int = 32
) -> torch.Tensor:
    """Mean-pooled last hidden states [n, hidden] (the sentence-transformers pooling of MiniLM)."""
    out = []
    with torch.no_grad():
        for s in range(0, len(texts), batch):
            enc = tokenizer(texts[s:s + batch], padding=True, truncation=True, max_length=max_len,
                            return_tensors="pt")
            h = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
            out.append((h * m).sum(1) / m.sum(1).clamp_min(1))
    return torch.cat(out).float()


def cosine_to_reference(model: nn.Module, reference: nn.Module, tokenizer: Tokenizer, text: str) -> float:
    """Mean cosine similarity between the two models' pooled embeddings of the text's paragraphs."""
    texts = paragraphs(text)
    if not texts:
        raise ValueError("no paragraphs of text to embed")
    a, b = embed(model, tokenizer, texts), embed(reference, tokenizer, texts)
    return nn.functional.cosine_similarity(a, b, dim=-1).mean().item()
