"""Export to the compressed-tensors "pack-quantized" layout that vLLM and transformers load (W4A16, W8A16, ...).

Per quantized linear `<name>`: `weight_packed` (int32, 32 codes in `bits` words, code i of a row at bit i*bits,
stored as code - 2^(bits-1) + 2^(bits-1), i.e. our unsigned codes), `weight_scale` (fp16 [out, groups]),
`weight_shape` ([out, in]) and, for asymmetric formats, `weight_zero_point` (our unsigned zero points packed the
same way along the output dimension: [ceil(out*bits/32), groups]). Dequantized w = (q - z) * s exactly as in
lowbit, so the codes, scales and zero points are carried over bit for bit, never re-quantized. config.json
gains the `quantization_config` (quant_method compressed-tensors, one config group targeting Linear, the
float linears such as lm_head ignored).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from lowbit.console import note
from lowbit.errors import LowbitError
from lowbit.export.source import ExportSource
from lowbit.files import atomic_output, write_manifest
from lowbit.formats import pack
from lowbit.kernels.qlinear import PackedLinear
from lowbit.models.checkpoint import QUANT_FILE, copy_side_files, source_hashes
from lowbit.models.stream import write_safetensors
from lowbit.quantizers import WeightSpec, expand_groups

CT_FORMAT = "pack-quantized"


def _words(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned codes [rows, n] into int32 words [rows, ceil(n*bits/32)] (compressed-tensors' dense layout)."""
    n = codes.shape[-1]
    return pack(codes, bits, word="int32")[:, : (n * bits + 31) // 32].contiguous()


def strategy(spec: WeightSpec) -> str:
    """compressed-tensors' name for the granularity of `spec`."""
    if spec.group_size > 0:
        return "group"
    if spec.group_size == 0:
        return "channel"
    raise LowbitError("per-tensor weights cannot be exported to compressed-tensors' pack-quantized format; "
                      "quantize with a group size (e.g. --group-size 128) or per channel (--group-size 0)")


def written_group(spec: WeightSpec, in_features: int) -> int:
    """The group size a module of this width is written with: compressed-tensors needs groups that divide the
    row, so a short last group is written as groups of gcd(group, width), each repeating its group's scale
    (the same weights exactly)."""
    g = spec.group_size
    return g if g <= 0 or in_features % g == 0 else math.gcd(g, in_features)


def quantization_config(spec: WeightSpec, ignore: list[str], regrouped: dict[int, list[str]] | None = None) -> dict:
    """The `quantization_config` block of config.json for one weight spec applied to every targeted Linear;
    `regrouped` maps a smaller group size to the modules written with it (listed by name before the "Linear"
    group: exact names outrank it in compressed-tensors' matching, and converters take the first group)."""
    groups = {f"group_{i}": _scheme(replace(spec, group_size=g), sorted(names))  # first: readers that take the
              for i, (g, names) in enumerate(sorted((regrouped or {}).items()))}  # first group that matches
    groups[f"group_{len(groups)}"] = _scheme(spec, ["Linear"])
    return {
        "quant_method": "compressed-tensors", "format": CT_FORMAT, "quantization_status": "compressed",
        "config_groups": groups,
        "ignore": sorted(ignore), "kv_cache_scheme": None, "global_compression_ratio": None,
        "sparsity_config": {}, "transform_config": {},
    }


def _scheme(spec: WeightSpec, targets: list[str]) -> dict:
    weights = {
        "num_bits": spec.bits, "type": "int", "symmetric": spec.symmetric, "strategy": strategy(spec),
        "group_size": spec.group_size if spec.group_size > 0 else None, "dynamic": False,
        "observer": "mse" if spec.range == "mse" else "minmax", "actorder": None,
    }
    return {"targets": targets, "weights": weights, "input_activations": None, "output_activations": None,
            "format": CT_FORMAT}


def module_tensors(name: str, m: PackedLinear) -> dict[str, torch.Tensor]:
    """The compressed-tensors tensors of one packed linear (its bias excluded)."""
    bits = m.spec.bits
    rows = m.packed_rows() if hasattr(m, "packed_rows") else m.qweight  # canonical rows, whichever kernel holds them
    nbytes = rows.shape[1]  # our uint8 rows are the same LSB-first bit stream: regroup them as int32 words
    words = torch.nn.functional.pad(rows, (0, (-nbytes) % 4)).contiguous().view(torch.int32)
    out = {
        f"{name}.weight_packed": words[:, : (m.in_features * bits + 31) // 32].contiguous(),
        f"{name}.weight_scale": _regroup(m, m.scales.to(torch.float16)),
        f"{name}.weight_shape": torch.tensor([m.out_features, m.in_features], dtype=torch.int64),
    }
    if not m.spec.symmetric:
        z = _regroup(m, m.zeros().round().to(torch.uint8))  # [out, groups], unsigned like the codes
        out[f"{name}.weight_zero_point"] = _words(z.t().contiguous(), bits).t().contiguous()
    return out


def _regroup(m: PackedLinear, t: torch.Tensor) -> torch.Tensor:
    """Per-group values [rows, groups] of `m` at the group size they are written with."""
    g, glen = written_group(m.spec, m.in_features), m.spec.group_len(m.in_features)
    if g <= 0 or g == glen:
        return t.contiguous()
    return expand_groups(t, glen // g, m.in_features // g).contiguous()


def module_plan(name: str, m: nn.Module, spec: WeightSpec, dtype: torch.dtype) -> list[tuple[str, torch.dtype, tuple]]:
    """(name, dtype, shape) of every tensor `module_tensors` writes for the linear `m` in format `spec`, bias last."""
    out, inp, bits = m.out_features, m.in_features, spec.bits
    g = written_group(spec, inp)
    groups = inp // g if g > 0 else 1
    plan = [(f"{name}.weight_packed", torch.int32, (out, (inp * bits + 31) // 32)),
            (f"{name}.weight_scale", torch.float16, (out, groups)), (f"{name}.weight_shape", torch.int64, (2,))]
    if not spec.symmetric:
        plan.append((f"{name}.weight_zero_point", torch.int32, ((out * bits + 31) // 32, groups)))
    if m.bias is not None:
        plan.append((f"{name}.bias", dtype, (out,)))
    return plan


def export_compressed_tensors(src: ExportSource, out: Path, rtn_spec: WeightSpec) -> dict:
    """Write `src` as a compressed-tensors pack-quantized checkpoint in directory `out` (atomically, one layer
    in memory at a time)."""
    if src.family.kind != "causal":
        raise LowbitError(f"compressed-tensors export supports decoder LMs; {src.path} is a {src.family.name} encoder")
    if src.quantized:
        spec, rtn = src.spec, None
        packed = [n for n in src.linear_names() if src.is_packed(n)]
        if src.embeddings or len({src.model.get_submodule(n).spec for n in packed}) > 1:
            raise LowbitError(f"{src.path} has a packed input embedding and LM head (lowbit quantize --head-bits): "
                              "compressed-tensors holds float embeddings and one weight format here; export a "
                              "checkpoint quantized without --head-bits, or use --format gguf")
    else:
        note(f"{src.path} is not quantized: quantizing its block linears with RTN {rtn_spec.describe()} "
             "(give a lowbit checkpoint to carry GPTQ codes over instead)")
        spec, rtn, packed = rtn_spec, rtn_spec, src.block_linear_names
    strategy(spec)
    if spec.bits not in (4, 8):
        note(f"{spec.bits}-bit weights are valid compressed-tensors, but vLLM's kernels serve 4 and 8 bits only")
    packed_set = set(packed)
    floats = src.float_names(packed_set)
    dtype = src.storage_dtype
    plan = [(n, dtype if src.structure[n].is_floating_point() else src.index.dtype(n), src.shape(n)) for n in floats]
    for name in packed:
        plan += module_plan(name, src.model.get_submodule(name), spec, dtype)

    def tensors() -> Iterator[torch.Tensor]:
        for n in floats:
            yield src.tensor(n)
        for name in tqdm(packed, desc=f"compressed-tensors W{spec.bits}A16", unit="layer", disable=None):
            m = src.linear(name, rtn)
            yield from module_tensors(name, m).values()
            if m.bias is not None:
                yield m.bias.data.to(dtype).contiguous()

    ignore = [n for n in src.linear_names() if n not in packed_set]
    config = dict(src.config)
    regrouped: dict[int, list[str]] = {}
    for name in packed:
        g = written_group(spec, src.model.get_submodule(name).in_features)
        if g != spec.group_size:
            regrouped.setdefault(g, []).append(name)
    for g, names in regrouped.items():
        widths = sorted({src.model.get_submodule(n).in_features for n in names})
        note(f"{len(names)} modules are {'/'.join(map(str, widths))} wide, not a multiple of group {spec.group_size}:"
             f" written as groups of {g} (compressed-tensors needs groups that divide the row; each repeats its"
             " group's scale, so the weights are the same)")
    config["quantization_config"] = quantization_config(spec, ignore, regrouped)
    with atomic_output(out, directory=True) as tmp:
        copy_side_files(src.path, tmp, folders=False, exclude=(QUANT_FILE, "config.json"))
        write_safetensors(tmp / "model.safetensors", plan, tensors(), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        write_manifest(tmp, source_hashes(src.path))
    return {"out": str(out), "format": "compressed-tensors", "scheme": f"W{spec.bits}A16", "spec": spec.describe(),
            "modules": len(packed), "ignored": sorted(ignore), "carried_over": src.quantized,
            "bytes": (out / "model.safetensors").stat().st_size}
