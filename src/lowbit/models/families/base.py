"""The family adapter: everything lowbit knows about one architecture, as one frozen object.

Other modules ask the family (block path, which linears read which norm, the norm offset, rotary buffers,
scale-fold candidates, GGUF names, how the lean decoder walks it) instead of testing class or module names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from torch import nn


@dataclass(frozen=True)
class Candidate:
    """A possible scale-fold group: `consumers` read one tensor whose channels `producer` can rescale.

    kind "norm": the producer is a norm (its weight absorbs 1/s); "linear": a previous linear layer (its rows do).
    """

    producer: str
    kind: str
    consumers: tuple[str, ...]


@dataclass(frozen=True)
class Layout:
    """Module names inside one block: which linears read which norm and which write the residual stream."""

    norms: tuple[tuple[str, tuple[str, ...]], ...]  # (norm, the linear layers reading it), in block order
    writers: tuple[str, ...]  # linear layers writing the residual stream
    attention: str | None = "self_attn"  # the attention module (KV-cache quantization hooks it)
    value_output: tuple[str, str] | None = None  # (v, o) when value heads are separate linears (per-head rotation)
    online: str | None = None  # the writer whose input the residual rotation rotates online (down projection)
    qk_norms: tuple[str, ...] = ()  # per-head RMSNorms of queries and keys (Qwen3)
    extra_norms: tuple[str, ...] = ()  # norms the residual rotation cannot handle (Gemma-2's around the MLP)
    unclipped: tuple[str, ...] = ()  # name endings of the layers AWQ leaves unclipped (queries and keys)
    attn_bias: bool = False  # whether q/k/v carry biases (Qwen2)

    @property
    def readers(self) -> tuple[str, ...]:
        """Every linear layer that reads a norm's output, in block order."""
        return tuple(r for _, rs in self.norms for r in rs)


@dataclass(frozen=True)
class GGUFNames:
    """llama.cpp's architecture name and tensor names for a family (Hugging Face name -> GGUF name)."""

    arch: str
    layer: tuple[tuple[str, str], ...]  # inside a block: "self_attn.q_proj" -> "attn_q", ...
    top: tuple[tuple[str, str], ...]  # outside the blocks: "model.norm.weight" -> "output_norm.weight", ...
    blocks: str = "model.layers"

    @property
    def layer_map(self) -> dict[str, str]:
        return dict(self.layer)

    @property
    def top_map(self) -> dict[str, str]:
        return dict(self.top)


@dataclass(frozen=True)
class LayerParts:
    """The modules of one decoder layer as the lean decode path uses them (q_norm/k_norm None when absent)."""

    layer: nn.Module
    attn: nn.Module
    q: nn.Module
    k: nn.Module
    v: nn.Module
    o: nn.Module
    q_norm: nn.Module | None
    k_norm: nn.Module | None
    mlp: nn.Module
    gate: nn.Module
    up: nn.Module
    down: nn.Module
    norm1: nn.Module  # before attention
    norm2: nn.Module  # before the MLP
    act: str  # the MLP's activation (config hidden_act)


@dataclass(frozen=True)
class Decode:
    """How models/lean.py runs a family: the module paths it reads (Llama-like decoders only)."""

    embed: str = "model.embed_tokens"
    layers: str = "model.layers"
    rotary: str = "model.rotary_emb"
    norm: str = "model.norm"
    head: str = "lm_head"
    attn: str = "self_attn"
    qkvo: tuple[str, str, str, str] = ("q_proj", "k_proj", "v_proj", "o_proj")
    qk_norm: tuple[str, str] | None = None  # per-head norms inside the attention (Qwen3)
    mlp: str = "mlp"
    gate_up_down: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")
    layer_norms: tuple[str, str] = ("input_layernorm", "post_attention_layernorm")
    sliding_window_default: bool = False  # use_sliding_window when the config does not say (Mistral: on)

    def parts(self, layer: nn.Module, act: str) -> LayerParts:
        """The modules of one decoder layer."""
        a, m = getattr(layer, self.attn), getattr(layer, self.mlp)
        qn, kn = (getattr(a, n) for n in self.qk_norm) if self.qk_norm else (None, None)
        q, k, v, o = (getattr(a, n) for n in self.qkvo)
        g, u, d = (getattr(m, n) for n in self.gate_up_down)
        n1, n2 = (getattr(layer, n) for n in self.layer_norms)
        return LayerParts(layer, a, q, k, v, o, qn, kn, m, g, u, d, n1, n2, act)


def get_path(obj: object, path: str) -> object | None:
    """The attribute at a dotted path, or None where any step is missing."""
    for attr in path.split("."):
        obj = getattr(obj, attr, None)
        if obj is None:
            return None
    return obj


@dataclass(frozen=True)
class Family:
    """One architecture family: the config `model_type`s it covers and what lowbit knows about its layout."""

    name: str
    model_types: tuple[str, ...]
    kind: str  # "causal" (decoder LM, perplexity) or "encoder" (embeddings, cosine)
    blocks_path: tuple[str, ...]  # candidate attribute paths to the nn.ModuleList of blocks
    layout: Layout | None = None
    candidates: tuple[Candidate, ...] = ()  # scale-fold candidates, in order (absent ones are skipped)
    norm_offset: float = 0.0  # the norm multiplies by (offset + weight): Gemma's RMSNorm has 1
    final_norm: str | None = None  # path of the norm before the LM head
    rotary: tuple[str, ...] = ()  # paths of the modules holding computed rotary buffers
    head: str | None = None  # the LM head's weight (decoders: lm_head.weight), absent from tied checkpoints
    residual_rotation: bool = False  # whether QuaRot's residual-stream rotation applies (pre-norm, separate q/k/v)
    gguf: GGUFNames | None = None  # None: no GGUF export
    decode: Decode | None = None  # None: the lean decoder does not run this family

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        """The model's transformer blocks, in order."""
        for path in self.blocks_path:
            obj = get_path(model, path)
            if isinstance(obj, nn.ModuleList):
                return obj
        raise AttributeError(f"no transformer blocks found in {type(model).__name__} at {self.blocks_path}")

    def blocks_prefix(self, model: nn.Module) -> str:
        """Module name of the model's list of blocks (e.g. model.layers)."""
        blocks = self.blocks(model)
        for name, mod in model.named_modules():
            if mod is blocks:
                return name
        raise RuntimeError("blocks not found among the model's modules")

    def attention(self, block: nn.Module) -> nn.Module | None:
        """The block's attention module (None if the family has no such layout or the block lacks it)."""
        if self.layout is None or self.layout.attention is None:
            return None
        attn = get_path(block, self.layout.attention)
        return attn if isinstance(attn, nn.Module) else None

    def unclipped(self) -> tuple[str, ...]:
        """Name endings of the linear layers AWQ's clipping search leaves alone (queries and keys)."""
        return self.layout.unclipped if self.layout else ()

    def norm_scale(self, norm: nn.Module) -> torch.Tensor:
        """The per-channel factor a norm multiplies by (float64): offset + weight."""
        w = cast(torch.Tensor, norm.weight).detach().double()
        return w + self.norm_offset if self.norm_offset else w

    def identity_norm_weight(self) -> float:
        """The weight value that makes a norm multiply by one."""
        return 1.0 - self.norm_offset

    def tied(self, model: nn.Module) -> bool:
        """Whether the LM head is missing or shares the input embedding's weight."""
        head, emb = model.get_output_embeddings(), model.get_input_embeddings()
        if head is None or head is emb:  # (a packed embedding serving as the head is one module at both paths)
            return True
        return getattr(head, "weight", None) is getattr(emb, "weight", False)

    def ties_head(self, config: dict) -> bool:
        """Whether a config.json (as a dict) ties the LM head to the input embedding (no head tensor stored)."""
        return self.head is not None and bool(config.get("tie_word_embeddings", False))

    def rotary_modules(self, model: nn.Module) -> list[nn.Module]:
        """The modules holding computed (non-persistent) rotary buffers."""
        return [m for m in (get_path(model, p) for p in self.rotary) if isinstance(m, nn.Module)]

    def meta_buildable(self, model: nn.Module) -> bool:
        """Whether every computed non-persistent buffer of a model built on the meta device can be rebuilt
        (only rotary frequencies can; BERT's position ids and Gemma's embedding scale cannot)."""
        rotary = {id(m) for m in self.rotary_modules(model)}
        return all(id(m) in rotary for m in model.modules() if m._non_persistent_buffers_set)

    def rebuild_rotary(self, model: nn.Module) -> None:
        """Recompute the rotary frequency buffers (not in checkpoints) from the config."""
        for mod in self.rotary_modules(model):
            if mod._non_persistent_buffers_set:
                fresh = type(mod)(config=model.config)
                for k, v in fresh.named_buffers(recurse=False):
                    mod._buffers[k] = v


DECODER_BLOCKS = ("model.layers",)

# The scale-fold candidates by naming convention, for blocks of no known family (every family's, in an order
# where Gemma-2's pre-feedforward norm is tried before the post-attention norm, which sits on its residual branch)
GENERIC_CANDIDATES: tuple[Candidate, ...] = (
    Candidate("input_layernorm", "norm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    Candidate("input_layernorm", "norm", ("self_attn.qkv_proj",)),
    Candidate("pre_feedforward_layernorm", "norm", ("mlp.gate_proj", "mlp.up_proj")),
    Candidate("post_attention_layernorm", "norm", ("mlp.gate_proj", "mlp.up_proj")),
    Candidate("post_attention_layernorm", "norm", ("mlp.gate_up_proj",)),
    Candidate("self_attn.v_proj", "linear", ("self_attn.o_proj",)),
    Candidate("mlp.up_proj", "linear", ("mlp.down_proj",)),
    Candidate("attention.self.value", "linear", ("attention.output.dense",)),
)
GENERIC = Family("generic", (), "causal", DECODER_BLOCKS, candidates=GENERIC_CANDIDATES,
                 layout=Layout((), (), unclipped=("q_proj", "k_proj", "query", "key", "qkv_proj")))
