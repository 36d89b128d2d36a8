"""Write lowbit's checkpoint (the format is described in lowbit.models.checkpoint), atomically.

Loading moved to lowbit.models.checkpoint; `load`, `load_with_tokenizer` and `read_quant_config` are
re-exported here for code written against the old location.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from lowbit.files import atomic_output, save_safetensors, write_json, write_manifest
from lowbit.models.checkpoint import (
    QUANT_FILE,
    checkpoint_state,
    copy_side_files,
    load,
    load_with_tokenizer,
    packed_layout,
    quant_config,
    read_quant_config,
    replace_linears,
    runtime_transforms,
    source_hashes,
    storage_dtype,
)
from lowbit.quantizers import QuantizedWeight

__all__ = ["QUANT_FILE", "load", "load_with_tokenizer", "read_quant_config", "save_quantized"]


def save_quantized(
    model: nn.Module, weights: dict[str, QuantizedWeight] | None, src: Path, out: Path, meta: dict
) -> dict:
    """Pack the quantized weights (if not packed already) and write the checkpoint atomically; returns its config.

    Modules may have their own formats (an 8-bit head beside 4-bit blocks), and a packed input embedding is
    stored once however many paths it serves (tied embeddings). The model's run-time transforms (activation
    quantizers, online Hadamard, KV-cache quantization) are recorded beside `meta`, so that loading restores them.
    """
    config = json.loads((src / "config.json").read_text())
    if weights:
        replace_linears(model, weights)
    specs, embeddings, bits_per_weight = packed_layout(model)
    if not specs:
        raise ValueError("the model has no packed modules to save")
    qcfg = quant_config(specs, bits_per_weight, {**meta, **runtime_transforms(model)}, embeddings)
    with atomic_output(out, directory=True) as tmp:
        copy_side_files(src, tmp)
        if config.get("tie_word_embeddings") and not getattr(model.config, "tie_word_embeddings", True):
            write_json(tmp / "config.json", {**config, "tie_word_embeddings": False})  # untied by a rotation
        save_safetensors(checkpoint_state(model, storage_dtype(config)), tmp / "model.safetensors")
        (tmp / QUANT_FILE).write_text(json.dumps(qcfg, indent=2) + "\n")
        write_manifest(tmp, source_hashes(src), manifest_extra(meta))
    return qcfg


def manifest_extra(meta: dict) -> dict:
    """What a checkpoint's manifest records beside the file hashes: method and calibration (text hash, settings)."""
    return {"method": meta.get("method"), "calibration": meta.get("calibration")}
