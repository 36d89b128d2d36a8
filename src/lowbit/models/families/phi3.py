"""Phi-3: a Llama-like decoder with fused qkv_proj and gate_up_proj (so no per-head rotation, no v -> o fold)."""

from __future__ import annotations

from lowbit.models.families.base import DECODER_BLOCKS, Candidate, Family, Layout

PHI3 = Family(
    "phi3", ("phi3",), "causal", DECODER_BLOCKS,
    layout=Layout(norms=(("input_layernorm", ("self_attn.qkv_proj",)),
                         ("post_attention_layernorm", ("mlp.gate_up_proj",))),
                  writers=("self_attn.o_proj", "mlp.down_proj"), online="mlp.down_proj", unclipped=("qkv_proj",)),
    candidates=(Candidate("input_layernorm", "norm", ("self_attn.qkv_proj",)),
                Candidate("post_attention_layernorm", "norm", ("mlp.gate_up_proj",))),
    final_norm="model.norm", rotary=("model.rotary_emb",), head="lm_head.weight",
)
