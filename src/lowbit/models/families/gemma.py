"""Gemma and Gemma-2: Llama-like blocks whose RMSNorm multiplies by (1 + weight), with tied embeddings and a
computed embedding scale (so they are not built on the meta device). Gemma-2 adds norms around the MLP: its
post_attention_layernorm sits on the residual branch, and the MLP reads pre_feedforward_layernorm."""

from __future__ import annotations

from lowbit.models.families.base import DECODER_BLOCKS, Candidate, Family
from lowbit.models.families.llama import ATTN, MLP, llama_layout

GEMMA = Family(
    "gemma", ("gemma", "gemma2"), "causal", DECODER_BLOCKS,
    layout=llama_layout(extra_norms=("pre_feedforward_layernorm", "post_feedforward_layernorm")),
    candidates=(Candidate("input_layernorm", "norm", ATTN),
                Candidate("pre_feedforward_layernorm", "norm", MLP),  # Gemma-2 (taken first: see the docstring)
                Candidate("post_attention_layernorm", "norm", MLP),  # Gemma
                Candidate("self_attn.v_proj", "linear", ("self_attn.o_proj",)),
                Candidate("mlp.up_proj", "linear", ("mlp.down_proj",))),
    norm_offset=1.0, final_norm="model.norm", rotary=("model.rotary_emb",), head="lm_head.weight",
    residual_rotation=True,
)
