"""BERT-like encoders (BERT, RoBERTa, XLM-RoBERTa): post-LayerNorm blocks, so no residual rotation (online only)
and a single exact scale fold (value -> attention output)."""

from __future__ import annotations

from lowbit.models.families.base import Candidate, Family, Layout

BERT = Family(
    "bert", ("bert", "roberta", "xlm-roberta"), "encoder", ("encoder.layer", "bert.encoder.layer"),
    layout=Layout(norms=(), writers=("attention.output.dense", "output.dense"), attention=None,
                  unclipped=("query", "key"), attn_bias=True),
    candidates=(Candidate("attention.self.value", "linear", ("attention.output.dense",)),),
)
