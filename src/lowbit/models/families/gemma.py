"""Gemma, Gemma-2 and Gemma 3 (text): Llama-like blocks whose RMSNorm multiplies by (1 + weight), with tied
embeddings and a computed embedding scale (so they are not built on the meta device). Gemma-2 and Gemma 3 add norms
around the MLP: post_attention_layernorm sits on the attention's residual branch, and the MLP reads
pre_feedforward_layernorm."""

from __future__ import annotations

from lowbit.models.families.base import DECODER_BLOCKS, Candidate, Family, Layout
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

# Gemma 3 (text): Gemma-2's four norms per block (post_attention_layernorm and post_feedforward_layernorm normalise
# each branch's output before the residual add), per-head q/k RMSNorms (1 + w as well), the embedding scaled by
# sqrt(hidden), sliding-window and global attention layers (their own rotary bases), head_dim 256, GELU-tanh MLP.
# The post-branch norms do not commute with a rotation of the residual stream, so rotation runs online.
GEMMA3 = Family(
    "gemma3_text", ("gemma3_text",), "causal", DECODER_BLOCKS,
    layout=Layout(norms=(("input_layernorm", ATTN), ("pre_feedforward_layernorm", MLP)),
                  writers=("self_attn.o_proj", "mlp.down_proj"), value_output=("self_attn.v_proj", "self_attn.o_proj"),
                  online="mlp.down_proj", qk_norms=("self_attn.q_norm", "self_attn.k_norm"),
                  extra_norms=("post_attention_layernorm", "post_feedforward_layernorm"),
                  unclipped=("q_proj", "k_proj")),
    candidates=(Candidate("input_layernorm", "norm", ATTN),
                Candidate("pre_feedforward_layernorm", "norm", MLP),
                Candidate("self_attn.v_proj", "linear", ("self_attn.o_proj",)),
                Candidate("mlp.up_proj", "linear", ("mlp.down_proj",))),
    norm_offset=1.0, final_norm="model.norm", rotary=("model.rotary_emb",), head="lm_head.weight",
)
