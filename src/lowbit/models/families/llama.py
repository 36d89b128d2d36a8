"""Llama-like decoders: Llama, Mistral, Qwen2 (q/k/v biases) and Qwen3 (per-head q/k norms).

Pre-norm blocks: input_layernorm -> q/k/v -> o_proj, post_attention_layernorm -> gate/up -> down_proj, rotary
frequencies in model.rotary_emb, the final norm at model.norm. Llama and Mistral export to GGUF.
"""

from __future__ import annotations

from lowbit.models.families.base import DECODER_BLOCKS, Candidate, Decode, Family, GGUFNames, Layout

ATTN = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
MLP = ("mlp.gate_proj", "mlp.up_proj")


def llama_layout(attn_bias: bool = False, qk_norms: tuple[str, ...] = (),
                 extra_norms: tuple[str, ...] = ()) -> Layout:
    """The Llama block: two RMSNorms, separate q/k/v/o and gate/up/down."""
    return Layout(norms=(("input_layernorm", ATTN), ("post_attention_layernorm", MLP)),
                  writers=("self_attn.o_proj", "mlp.down_proj"), value_output=("self_attn.v_proj", "self_attn.o_proj"),
                  online="mlp.down_proj", qk_norms=qk_norms, extra_norms=extra_norms,
                  unclipped=("q_proj", "k_proj"), attn_bias=attn_bias)


CANDIDATES = (
    Candidate("input_layernorm", "norm", ATTN),
    Candidate("post_attention_layernorm", "norm", MLP),
    Candidate("self_attn.v_proj", "linear", ("self_attn.o_proj",)),  # only when every query head has its own
    Candidate("mlp.up_proj", "linear", ("mlp.down_proj",)),
)

LLAMA_GGUF = GGUFNames(
    arch="llama",
    layer=(("input_layernorm.weight", "attn_norm.weight"), ("post_attention_layernorm.weight", "ffn_norm.weight"),
           ("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"), ("self_attn.v_proj", "attn_v"),
           ("self_attn.o_proj", "attn_output"), ("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up"),
           ("mlp.down_proj", "ffn_down")),
    top=(("model.embed_tokens.weight", "token_embd.weight"), ("model.norm.weight", "output_norm.weight"),
         ("lm_head.weight", "output.weight")),
)


def llama_like(name: str, *, attn_bias: bool = False, qk_norm: bool = False, gguf: GGUFNames | None = None,
               sliding_window_default: bool = False) -> Family:
    """A Llama-like family (one per model_type)."""
    qk = ("self_attn.q_norm", "self_attn.k_norm") if qk_norm else ()
    return Family(name, (name,), "causal", DECODER_BLOCKS, layout=llama_layout(attn_bias, qk), candidates=CANDIDATES,
                  final_norm="model.norm", rotary=("model.rotary_emb",), head="lm_head.weight", residual_rotation=True,
                  gguf=gguf,
                  decode=Decode(qk_norm=("q_norm", "k_norm") if qk_norm else None,
                                sliding_window_default=sliding_window_default))


LLAMA = llama_like("llama", gguf=LLAMA_GGUF)
MISTRAL = llama_like("mistral", gguf=LLAMA_GGUF, sliding_window_default=True)
QWEN2 = llama_like("qwen2", attn_bias=True)
QWEN3 = llama_like("qwen3", qk_norm=True)
