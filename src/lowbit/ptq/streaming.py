"""Quantize a model larger than memory: one block in memory at a time, each written out as it is done.

The model is built on the meta device (no memory); embeddings, final norm and head are read in full; each
block is read from the safetensors shards when its turn comes, quantized (with sequential calibration for
GPTQ), packed, written as its own shard and dropped. Peak memory is about one fp32 block, the embeddings
and head, and one block's calibration activations, whatever the number of blocks.

Everything goes to `.<out>.partial/` beside the output: every shard is written to a temporary file and
renamed, and `progress.json` lists the finished blocks, so a crash or Ctrl-C leaves only that folder and
`resume=True` continues from the last finished block (earlier blocks are re-read packed, to feed the
calibration data forward). The folder becomes `out` by one rename at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import torch
from torch import nn

from lowbit.errors import LowbitError, not_finite
from lowbit.files import check_output, save_safetensors, write_json, write_manifest
from lowbit.kernels.qlinear import PackedLinear
from lowbit.models import block_linears
from lowbit.models.checkpoint import (
    QUANT_FILE,
    checkpoint_state,
    copy_side_files,
    install_packed,
    quant_config,
    replace_linears,
    source_hashes,
    storage_dtype,
)
from lowbit.models.load import build_from_config, check_weight_files, family_of, read_config, rebuild_rotary
from lowbit.models.stream import TensorIndex
from lowbit.ptq.config import MethodConfig
from lowbit.ptq.pipeline import quantize
from lowbit.quantizers import WeightSpec

PROGRESS = "progress.json"


def _materialize_outside(model: nn.Module, blocks: nn.ModuleList, index: TensorIndex) -> None:
    """Read every tensor outside the blocks; rebuild computed buffers (rotary frequencies) on the CPU."""
    inside = {id(m) for m in blocks.modules()}
    for mname, mod in model.named_modules():
        if id(mod) in inside:
            continue
        for pname, _ in list(mod.named_parameters(recurse=False)):
            full = f"{mname}.{pname}" if mname else pname
            if full in index:
                mod._parameters[pname] = nn.Parameter(index.read(full).float(), requires_grad=False)
    rebuild_rotary(model)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers())
            if t.is_meta and not any(t is u for u in list(blocks.parameters()) + list(blocks.buffers()))]
    if left:
        raise LowbitError(f"streaming cannot place {', '.join(left[:4])} (not in the checkpoint); quantize this "
                          "model without --stream")


def _load_block(block: nn.Module, prefix: str, index: TensorIndex) -> None:
    block.to_empty(device="cpu")
    with torch.no_grad():
        for name, t in block.state_dict(keep_vars=True).items():
            full = prefix + name
            if full not in index:
                raise LowbitError(f"{full} is missing from the checkpoint's safetensors files")
            src = index.read(full)
            if tuple(src.shape) != tuple(t.shape):
                raise LowbitError(f"{full} has shape {tuple(src.shape)} in the checkpoint, {tuple(t.shape)} expected")
            if not torch.isfinite(src).all():
                raise not_finite(full)
            t.copy_(src)


def _load_packed_block(block: nn.Module, prefix: str, shard: Path, spec: WeightSpec) -> None:
    """Rebuild an already-quantized block (packed linears) from its shard, for resuming."""
    block.to_empty(device="cpu")
    install_packed(block, dict.fromkeys(block_linears(block), spec))
    index = TensorIndex([shard])
    with torch.no_grad():
        for name, t in block.state_dict(keep_vars=True).items():
            t.copy_(index.read(prefix + name))


def _free_block(block: nn.Module) -> None:
    for m in block.modules():
        if isinstance(m, PackedLinear):
            m.release()
    block.to("meta")


def run_fingerprint(src: Path, config: MethodConfig, calib_tokens: torch.Tensor | None, batch_size: int,
                    meta: dict | None) -> dict:
    """What a resumed run must share with the interrupted one, input by input: the source's files (sha256), the
    calibration text (sha256), the seed, and the settings (method config, windows, batch size)."""
    calib = dict((meta or {}).get("calibration") or {})
    tokens = None
    if calib_tokens is not None:
        tokens = hashlib.sha256(calib_tokens.contiguous().numpy().tobytes()).hexdigest()
    return {"source weights": source_hashes(src), "calibration text": calib.pop("text_sha256", None),
            "seed": calib.pop("seed", None),
            "settings": {"config": repr(config), "batch_size": batch_size, **calib,
                         "windows": None if calib_tokens is None else list(calib_tokens.shape)},
            "calibration windows": tokens}


def read_progress(partial: Path) -> dict:
    """The progress record of an unfinished streaming run, or a clear error when it is damaged."""
    try:
        state = json.loads((partial / PROGRESS).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LowbitError(f"{partial}/{PROGRESS} is missing or damaged ({type(e).__name__}); remove {partial} and "
                          "start again") from e
    if not isinstance(state, dict) or not isinstance(state.get("done"), dict):
        raise LowbitError(f"{partial}/{PROGRESS} is damaged; remove {partial} and start again")
    return state


def check_fingerprint(partial: Path, old: object, new: dict) -> None:
    """Refuse to resume when an input differs from the interrupted run's, naming the first that does."""
    if not isinstance(old, dict) or set(old) != set(new):
        raise LowbitError(f"{partial} was started by another lowbit version (no comparable fingerprint); remove it "
                          "and start again")
    for key in new:
        if old[key] != new[key]:
            raise LowbitError(f"{partial} was started with another {key}; resume with the same inputs and settings, "
                              "or remove it to start again")


def quantize_streaming(
    src: Path, out: Path, config: MethodConfig, calib_tokens: torch.Tensor | None, batch_size: int = 16,
    resume: bool = False, progress: bool = True, meta: dict | None = None,
) -> dict:
    """Quantize `src` block by block from disk into the sharded checkpoint `out` (see the module docstring)."""
    check_output(out, [src], "--out directory")
    partial = out.parent / f".{out.name}.partial"
    fingerprint = run_fingerprint(src, config, calib_tokens, batch_size, meta)
    if partial.exists():
        if not resume:
            raise LowbitError(f"{partial} holds an unfinished run; pass --resume to continue it or remove it")
        state = read_progress(partial)
        check_fingerprint(partial, state.get("fingerprint"), fingerprint)
    else:
        partial.mkdir(parents=True)
        state = {"fingerprint": fingerprint, "done": {}, "seconds": 0.0}
        write_json(partial / PROGRESS, state, indent=1)
    t0 = time.perf_counter()
    cfg = read_config(src)
    fam = family_of(cfg, src)
    index = TensorIndex(check_weight_files(src))
    model = build_from_config(src, fam.kind, torch.float32, "meta")
    blocks = fam.blocks(model)
    prefix = fam.blocks_prefix(model)
    n_shards = len(blocks) + 1
    dtype = storage_dtype(cfg)
    shard_name = "model-{:05d}-of-{:05d}.safetensors".format
    _materialize_outside(model, blocks, index)
    head = partial / shard_name(1, n_shards)
    if not head.exists():
        inside = {f"{prefix}.{k}" for k in blocks.state_dict(keep_vars=True)}
        save_safetensors({k: v for k, v in checkpoint_state(model, dtype).items() if k not in inside and not
                          v.is_meta}, head)
    spec = config.weight

    def before(i: int, block: nn.Module) -> bool:
        shard = partial / shard_name(i + 2, n_shards)
        if str(i) in state["done"] and shard.exists():
            _load_packed_block(block, f"{prefix}.{i}.", shard, spec)
            return True
        _load_block(block, f"{prefix}.{i}.", index)
        return False

    def after(i: int, block: nn.Module) -> None:
        if str(i) in state["done"]:  # resumed: already on disk
            _free_block(block)
            return
        packed = {f"{prefix}.{i}.{n}": m for n, m in block.named_modules() if isinstance(m, PackedLinear)}
        state_i = {f"{prefix}.{i}.{k}": v for k, v in checkpoint_state(block, dtype).items()}
        save_safetensors(state_i, partial / shard_name(i + 2, n_shards), replace=True)
        state["done"][str(i)] = {"modules": sorted(packed), "bits": sum(m.storage_bits() for m in packed.values()),
                                 "numel": sum(m.in_features * m.out_features for m in packed.values())}
        state["seconds"] = state.get("seconds", 0.0) + time.perf_counter() - t_block[0]
        write_json(partial / PROGRESS, state, indent=1)
        _free_block(block)
        t_block[0] = time.perf_counter()

    t_block = [time.perf_counter()]
    quantize(model, fam, config, calib_tokens, batch_size, progress,
             on_block=lambda done: replace_linears(model, done), before_block=before, after_block=after)
    done = state["done"]
    weight_map = {}
    for f in sorted(partial.glob("model-*.safetensors")):
        weight_map.update({k: f.name for k in TensorIndex([f]).where})
    write_json(partial / "model.safetensors.index.json", {"metadata": {"format": "lowbit"}, "weight_map": weight_map},
               indent=1)
    copy_side_files(src, partial, folders=False)
    qcfg = quant_config(dict.fromkeys([m for d in done.values() for m in d["modules"]], spec),
                        sum(d["bits"] for d in done.values()) / sum(d["numel"] for d in done.values()),
                        {"method": config.method, "streamed": True, "quantize_seconds": round(state["seconds"], 3),
                         **(meta or {})})
    (partial / QUANT_FILE).write_text(json.dumps(qcfg, indent=2) + "\n")
    (partial / PROGRESS).unlink()
    write_manifest(partial, fingerprint["source weights"], {"method": config.method,
                                                            "calibration": (meta or {}).get("calibration")})
    os.replace(partial, out)
    return {**qcfg, "total_seconds": time.perf_counter() - t0}
