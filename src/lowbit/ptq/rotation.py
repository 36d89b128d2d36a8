"""Hadamard rotation of a decoder's residual stream (QuaRot: Ashkboos et al., "QuaRot: Outlier-Free 4-Bit
Inference in Rotated LLMs", NeurIPS 2024).

The full-precision function is unchanged: RMSNorm scales are fused into the linear layers that read them,
the residual stream is rotated by a random orthogonal Hadamard matrix Q (embeddings E Q, readers W Q,
writers Q^T W, LM head W Q; RMSNorm commutes with Q once its scale is 1), each value head is rotated by a
Hadamard matrix (folded into v_proj's rows and o_proj's columns), and the input of every down projection
is rotated online by a fast Walsh-Hadamard transform whose inverse is folded into the down projection's
weight. Outlier channels are spread over all channels, so 4-bit activations and weights lose far less.

Models whose residual stream cannot be rotated (post-LayerNorm encoders such as BERT, whose LayerNorm
subtracts the mean and so does not commute with Q) get the online form everywhere instead (mode "online"):
the input of every linear layer of every block is rotated by the Walsh-Hadamard transform H at run time and
H^T is folded into the layer's weight, W x = (W H)(H^T x). It costs one O(n log n) transform per linear
layer and preserves the full-precision function of any architecture.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from lowbit.errors import LowbitError
from lowbit.models import Family, block_linears
from lowbit.models.families import Layout
from lowbit.quantizers.activation import set_transform
from lowbit.quantizers.hadamard import factor, fwht, hadamard_matrix, random_hadamard

MODES = ("auto", "residual", "online")


def check_mode(mode: str) -> str:
    """The rotation mode, or a clear error naming the known ones."""
    if mode not in MODES:
        raise LowbitError(f"unknown rotate mode {mode!r}; choose one of {', '.join(MODES)}")
    return mode


def residual_obstacle(model: nn.Module, family: Family) -> str | None:
    """Why the residual-stream rotation does not apply to `model` (None where it does)."""
    if family.kind != "causal":
        return (f"it needs a pre-norm decoder; {family.name} is an encoder with post-LayerNorm, which does not "
                "commute with a rotation")
    lay = family.layout
    if lay is None or not family.residual_rotation or lay.value_output is None or lay.online is None \
            or family.final_norm is None:
        extra = f" (norms {', '.join(lay.extra_norms)} on the residual branches)" if lay and lay.extra_norms else ""
        return f"{family.name} blocks are not Llama-style pre-norm blocks{extra}"
    for block in family.blocks(model):
        mods = dict(block.named_modules())
        missing = [n for n in (*lay.readers, *lay.writers, *(n for n, _ in lay.norms)) if n not in mods]
        if missing or any(n in mods for n in lay.extra_norms):
            return f"{family.name} blocks differ from Llama-style ones ({', '.join(missing) or 'extra norms'})"
    return None


def _check(model: nn.Module, family: Family) -> Layout:
    """The family's block layout, or a clear error where the residual rotation does not apply."""
    why = residual_obstacle(model, family)
    if why is not None:
        raise LowbitError(f"the residual rotation does not apply: {why}; use rotate mode online (the default for "
                          "such models)")
    cfg = model.config
    factor(cfg.hidden_size)
    factor(cfg.intermediate_size)  # clear errors for sizes without a known Hadamard matrix
    assert family.layout is not None
    return family.layout


def untie_head(model: nn.Module) -> int:
    """Give the LM head its own copy of the input embedding (a rotation changes them differently); returns the
    extra bytes at 16 bits a value (a bf16 / fp16 checkpoint). The config then says the embeddings are not tied."""
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    head.weight = nn.Parameter(emb.weight.detach().clone(), requires_grad=emb.weight.requires_grad)
    model.config.tie_word_embeddings = False
    text = getattr(model.config, "get_text_config", None)
    if text is not None:
        text().tie_word_embeddings = False
    extra = head.weight.numel() * 2
    print(f"lowbit: note: rotation unties the LM head from the input embedding (the rotated copies differ): "
          f"{head.weight.shape[0]} x {head.weight.shape[1]} more values, +{extra / 1e6:.1f} MB in a 16-bit "
          "checkpoint", file=sys.stderr, flush=True)
    return extra


def _reset_norm(norm: nn.Module, family: Family) -> None:
    with torch.no_grad():
        norm.weight.fill_(family.identity_norm_weight())


def _set(p: torch.Tensor, v: torch.Tensor) -> None:
    with torch.no_grad():
        p.copy_(v.to(p.dtype))


def rotate_inputs(model: nn.Module, family: Family, prefix: str) -> None:
    """Online rotation of every block linear layer's input (H^T folded into its weight)."""
    for i, block in enumerate(family.blocks(model)):
        for name, lin in block_linears(block).items():
            factor(lin.in_features)  # a clear error for sizes without a known Hadamard matrix
            _set(lin.weight, fwht(lin.weight.double()))  # W M; the online x -> x M restores x W^T
            set_transform(model, f"{prefix}.{i}.{name}", hadamard=True)


def rotate_model(model: nn.Module, family: Family, seed: int = 0, prefix: str = "model.layers",
                 mode: str = "auto") -> str:
    """Rotate the model in place (full-precision function preserved); returns the mode used.

    mode "residual": QuaRot's rotation of the residual stream (pre-norm decoders); "online": the input of
    every block linear layer rotated at run time (any architecture); "auto": residual where it applies, online
    elsewhere (encoders; decoders with norms on the residual branches, such as Gemma-2 and Gemma 3). A tied LM
    head is untied first (the rotated embedding E Q and head W diag(norm) Q differ).
    """
    why = residual_obstacle(model, family)
    if check_mode(mode) == "online" or (mode == "auto" and why is not None):
        if mode == "auto" and family.kind == "causal":
            print(f"lowbit: note: rotating every linear layer's input online: {why}", file=sys.stderr, flush=True)
        rotate_inputs(model, family, prefix)
        return "online"
    lay = _check(model, family)
    final_norm = model.get_submodule(family.final_norm)
    if family.tied(model) and not bool((family.norm_scale(final_norm) == 1).all()):
        untie_head(model)  # (with a final norm of ones, E Q serves as both: they stay tied)
    cfg = model.config
    d = cfg.hidden_size
    head_dim = getattr(cfg, "head_dim", None) or d // cfg.num_attention_heads
    Q = random_hadamard(d, seed).double()
    Hh = hadamard_matrix(head_dim).double()
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    if not family.tied(model):  # a tied head becomes E Q with the embedding below
        _set(head.weight, head.weight.double() * family.norm_scale(final_norm)[None, :] @ Q)
    _reset_norm(final_norm, family)
    _set(emb.weight, emb.weight.double() @ Q)
    for i, block in enumerate(family.blocks(model)):
        mods = dict(block.named_modules())
        for norm_name, readers in lay.norms:
            scale = family.norm_scale(mods[norm_name])
            for r in readers:
                _set(mods[r].weight, mods[r].weight.double() * scale[None, :] @ Q)
            _reset_norm(mods[norm_name], family)
        for w in lay.writers:
            lin = mods[w]
            W = lin.weight.double()
            if w == lay.online:
                W = fwht(W)  # W M: the online transform x -> x M restores x W^T
            _set(lin.weight, Q.T @ W)
            if lin.bias is not None:
                _set(lin.bias, lin.bias.double() @ Q)
        v_name, o_name = lay.value_output
        v, o = mods[v_name], mods[o_name]
        nv, no = v.out_features // head_dim, o.in_features // head_dim
        _set(v.weight, (Hh.T @ v.weight.double().reshape(nv, head_dim, -1)).reshape(v.weight.shape))
        if v.bias is not None:
            _set(v.bias, (v.bias.double().reshape(nv, head_dim) @ Hh).reshape(-1))
        _set(o.weight, (o.weight.double().reshape(-1, no, head_dim) @ Hh).reshape(o.weight.shape))
        set_transform(model, f"{prefix}.{i}.{lay.online}", hadamard=True)
    return "residual"
