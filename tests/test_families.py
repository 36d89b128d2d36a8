"""The family adapters reproduce the architecture tables lowbit had before they moved into models/families/, and
adding a family is one registration."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
import transformers as tf
from conftest import COMMON, FAMILIES

from lowbit.errors import LowbitError
from lowbit.models import load_model
from lowbit.models.families import (
    FAMILIES as REGISTERED,
)
from lowbit.models.families import (
    block_linears,
    family_for,
    family_of_model,
    register,
    supported_types,
    unregister,
)
from lowbit.models.load import build_from_config, meta_buildable, rebuild_rotary
from lowbit.ptq.scaling import ScaleGroup, fold, scale_groups

# ---- the tables as they were (lowbit 08610d8), for comparison ----
OLD_CANDIDATES = (
    ("input_layernorm", "norm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    ("input_layernorm", "norm", ("self_attn.qkv_proj",)),
    ("post_attention_layernorm", "norm", ("mlp.gate_proj", "mlp.up_proj")),
    ("pre_feedforward_layernorm", "norm", ("mlp.gate_proj", "mlp.up_proj")),
    ("post_attention_layernorm", "norm", ("mlp.gate_up_proj",)),
    ("self_attn.v_proj", "linear", ("self_attn.o_proj",)),
    ("mlp.up_proj", "linear", ("mlp.down_proj",)),
    ("attention.self.value", "linear", ("attention.output.dense",)),
)
OLD_READERS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj")
OLD_WRITERS = ("self_attn.o_proj", "mlp.down_proj")
OLD_NORMS = {"input_layernorm": OLD_READERS[:3], "post_attention_layernorm": OLD_READERS[3:]}
OLD_UNCLIPPED = ("q_proj", "k_proj", "query", "key", "qkv_proj")
OLD_LEAN = ("llama", "mistral", "qwen2", "qwen3")
OLD_LAYER = {
    "input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
OLD_TOP = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}


def old_scale_groups(block):
    mods = dict(block.named_modules())
    out, taken = [], set()
    for prod, kind, cons in OLD_CANDIDATES:
        if prod not in mods or not all(c in mods for c in cons) or taken & set(cons):
            continue
        if kind == "norm" and prod == "post_attention_layernorm" and "pre_feedforward_layernorm" in mods:
            continue
        if kind == "linear" and (not isinstance(mods[prod], torch.nn.Linear)
                                 or mods[prod].out_features != mods[cons[0]].in_features):
            continue
        out.append((prod, kind, cons, "Gemma" in type(mods[prod]).__name__))
        taken |= set(cons)
    return out


def old_rotation_ok(model, family) -> bool:
    if family.kind != "causal":
        return False
    for block in family.blocks(model):
        mods = dict(block.named_modules())
        if any(n not in mods for n in (*OLD_READERS, *OLD_WRITERS, *OLD_NORMS)) or "pre_feedforward_layernorm" in mods:
            return False
    return True  # tied embeddings were refused before; rotation unties them now


def old_gguf_name(hf_name):
    if hf_name in OLD_TOP:
        return OLD_TOP[hf_name]
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+?)(\.weight|\.bias)?", hf_name)
    if m:
        idx, rest, suffix = m.group(1), m.group(2), m.group(3) or ""
        if rest + suffix in OLD_LAYER:
            return f"blk.{idx}.{OLD_LAYER[rest + suffix]}"
        if rest in OLD_LAYER:
            return f"blk.{idx}.{OLD_LAYER[rest]}{suffix}"
    return None


def _gemma2():
    torch.manual_seed(0)
    cfg = tf.Gemma2Config(**COMMON, vocab_size=512, num_key_value_heads=2, head_dim=16)
    return tf.AutoModelForCausalLM.from_config(cfg).eval()


@pytest.fixture(scope="module")
def models(tiny_models):
    out = {f: load_model(tiny_models[f]) for f in FAMILIES}
    return {f: (m.model, m.family) for f, m in out.items()} | {"gemma2": (_gemma2(), family_for("gemma2"))}


def test_registry_holds_every_family_once():
    assert [f.name for f in REGISTERED] == FAMILIES
    assert len(supported_types()) == len(set(supported_types()))
    assert family_for("gemma2").name == "gemma" and family_for("roberta").name == "bert"


@pytest.mark.parametrize("name", [*FAMILIES, "gemma2"])
def test_scale_groups_are_the_old_ones(models, name):
    model, fam = models[name]
    for block in fam.blocks(model):
        old = old_scale_groups(block)
        for new in (scale_groups(block, fam), scale_groups(block)):
            assert [(g.producer, g.kind, g.consumers, g.offset == 1.0) for g in new] == old
            assert all(g.offset == (1.0 if gemma else 0.0) for g, (*_, gemma) in zip(new, old, strict=True))


def test_fold_with_an_offset_is_the_old_gemma_fold(models):
    model, fam = models["gemma"]
    block = fam.blocks(model)[0]
    group = scale_groups(block, fam)[0]
    assert group == ScaleGroup("input_layernorm", "norm", group.consumers, 1.0)
    w = block.input_layernorm.weight.detach().clone()
    s = torch.rand(w.numel()) + 0.5
    fold(block, group, s)
    assert torch.equal(block.input_layernorm.weight, ((1 + w.float()) / s - 1).to(w.dtype))


@pytest.mark.parametrize("name", [*FAMILIES, "gemma2"])
def test_rotation_tables_and_decisions_are_the_old_ones(models, name):
    from lowbit.ptq.rotation import _check

    model, fam = models[name]
    if fam.residual_rotation:
        lay = fam.layout
        assert lay.readers == OLD_READERS and lay.writers == OLD_WRITERS and dict(lay.norms) == OLD_NORMS
        assert lay.value_output == ("self_attn.v_proj", "self_attn.o_proj") and lay.online == "mlp.down_proj"
        assert fam.final_norm == "model.norm" and model.get_submodule(fam.final_norm) is model.model.norm
    norm = fam.blocks(model)[0].get_submodule(fam.layout.norms[0][0]) if fam.layout.norms else None
    if norm is not None:  # the (1 + weight) norms are Gemma's
        assert (fam.norm_offset == 1.0) == ("Gemma" in type(norm).__name__)
    try:
        _check(model, fam)
        ok = True
    except LowbitError:
        ok = False
    assert ok == old_rotation_ok(model, fam)


@pytest.mark.parametrize("name", [*FAMILIES, "gemma2"])
def test_unclipped_attention_and_bias_knowledge(models, name):
    model, fam = models[name]
    block = fam.blocks(model)[0]
    names = list(block_linears(block))
    assert [n for n in names if n.endswith(fam.unclipped())] == [n for n in names if n.endswith(OLD_UNCLIPPED)]
    if fam.kind == "causal":
        assert fam.attention(block) is block.self_attn
        q = block_linears(block)[fam.layout.readers[0]]
        assert (q.bias is not None) == fam.layout.attn_bias
        assert all(n in dict(block.named_modules()) for n in fam.layout.qk_norms)
        assert hasattr(block.self_attn, "q_norm") == bool(fam.layout.qk_norms)


@pytest.mark.parametrize("name", FAMILIES)
def test_meta_build_and_rotary_rebuild_are_the_old_ones(tiny_models, name):
    fam = family_for(name)
    model = build_from_config(tiny_models[name], fam.kind, torch.float32, "meta")
    old = all("Rotary" in type(m).__name__ for m in model.modules() if m._non_persistent_buffers_set)
    assert meta_buildable(model) == fam.meta_buildable(model) == old
    if old:
        model.to_empty(device="cpu")
        rebuild_rotary(model)
        ref = load_model(tiny_models[name]).model
        for (n, b), (n2, b2) in zip(model.model.rotary_emb.named_buffers(), ref.model.rotary_emb.named_buffers(),
                                    strict=True):
            assert n == n2 and torch.equal(b, b2)


@pytest.mark.parametrize("name", [*FAMILIES, "gemma2"])
def test_lean_and_gguf_support_are_the_old_ones(models, name):
    from lowbit.export.gguf_writer import gguf_name
    from lowbit.models.lean import unsupported

    model, fam = models[name]
    assert (fam.decode is not None) == (model.config.model_type in OLD_LEAN)
    if model.config.model_type in OLD_LEAN:
        assert unsupported(model) is None
    else:
        assert unsupported(model) == f"model type {model.config.model_type!r} is not one of {', '.join(OLD_LEAN)}"
    assert (fam.gguf is not None) == (fam.name in ("llama", "mistral"))
    if fam.gguf is not None:
        assert fam.gguf.arch == "llama"
        for n, _ in model.named_parameters():
            assert gguf_name(n, fam.gguf) == gguf_name(n) == old_gguf_name(n)


def test_registering_a_family_is_one_line(models):
    """A new model_type reusing Llama's adapter: rotation, scale groups, KV hooks and the lean decoder all follow."""
    from lowbit.models.lean import LeanDecoder
    from lowbit.ptq.rotation import rotate_model

    llama, _ = models["llama"]
    model = tf.LlamaForCausalLM(llama.config).eval()
    model.load_state_dict(llama.state_dict())
    model.config.model_type = "llama-fork"
    assert family_of_model(model) is None
    fam = register(dataclasses.replace(family_for("llama"), name="llama-fork", model_types=("llama-fork",)))
    try:
        assert family_for("llama-fork") is fam and "llama-fork" in supported_types()
        with pytest.raises(ValueError, match="already belong"):
            register(dataclasses.replace(fam, name="again"))
        block = fam.blocks(model)[0]
        assert scale_groups(block) == scale_groups(block, family_for("llama"))  # found through the block's config
        assert len(scale_groups(block)) == 3  # grouped-query attention: no v -> o
        ids = torch.tensor([[5, 9, 31, 7]])
        with torch.no_grad():
            ref = model(input_ids=ids).logits[0, -1]
            assert rotate_model(model, fam) == "residual"
            assert torch.allclose(model(input_ids=ids).logits[0, -1], ref, atol=1e-3)
            assert torch.allclose(LeanDecoder(model, 8).step(ids[0].tolist()), ref, atol=1e-3)
    finally:
        unregister(fam)
    assert family_for("llama-fork") is None


@pytest.mark.parametrize("name", FAMILIES)
def test_head_and_tied_embeddings(tiny_models, name):
    loaded = load_model(tiny_models[name])
    fam, model = loaded.family, loaded.model
    if fam.kind == "encoder":
        assert fam.head is None and not fam.ties_head(loaded.config)
        return
    params = dict(model.named_parameters(remove_duplicate=False))
    assert params[fam.head] is model.get_output_embeddings().weight
    assert fam.ties_head(loaded.config) == fam.tied(model) == bool(loaded.config.get("tie_word_embeddings", False))
