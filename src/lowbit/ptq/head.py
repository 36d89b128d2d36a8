"""Quantize the LM head and the input embedding (round to nearest), after any method, on the final weights.

A tied model keeps one table: the packed embedding (lowbit.kernels.embedding.PackedEmbedding) is set at both the
input embedding's path and the head's, so that lookups gather its rows and the head runs the packed kernels on
the same codes, and the checkpoint stores them once. An untied model (or one a rotation untied) gets the
embedding and the head quantized as two tensors of the same format.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from lowbit.errors import LowbitError
from lowbit.kernels.embedding import PackedEmbedding
from lowbit.kernels.qlinear import PackedLinear
from lowbit.models.families import Family
from lowbit.quantizers import WeightSpec, quantize_weight


def _path(model: nn.Module, module: nn.Module) -> str:
    return next(n for n, m in model.named_modules(remove_duplicate=False) if m is module)


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def _packed_embedding(emb: nn.Embedding, spec: WeightSpec) -> PackedEmbedding:
    scale = getattr(emb, "embed_scale", None)  # Gemma: multiplied after the lookup
    return PackedEmbedding.from_table(quantize_weight(emb.weight.detach().float(), spec),
                                      None if scale is None else float(scale), emb.weight.dtype)


def quantize_head(model: nn.Module, family: Family, spec: WeightSpec) -> dict:
    """Round the LM head and the input embedding to nearest in `spec` (tied: one packed table at both paths);
    returns what was done (module names, tied, format, values and packed bytes) for the checkpoint's metadata."""
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    if not isinstance(emb, nn.Embedding) or not isinstance(head, nn.Linear):
        raise LowbitError(f"--head-bits quantizes an nn.Embedding input embedding and an nn.Linear LM head; this "
                          f"{family.name} model has {type(emb).__name__} and {type(head).__name__} (already packed?)")
    emb_path, head_path = _path(model, emb), _path(model, head)
    tied = family.tied(model)
    with torch.no_grad():
        table = _packed_embedding(emb, spec)
        _set(model, emb_path, table)
        if tied:
            _set(model, head_path, table)
            packed = [cast(PackedLinear, table)]
        else:
            b = head.bias.detach() if head.bias is not None else None
            packed = [table, PackedLinear.from_quantized(quantize_weight(head.weight.detach().float(), spec), b)]
            _set(model, head_path, packed[1])
    return {"embedding": emb_path, "head": head_path, "tied": tied, "format": spec.describe(),
            "values": sum(m.in_features * m.out_features for m in packed),
            "packed_bytes": sum(m.storage_bits() for m in packed) // 8}
