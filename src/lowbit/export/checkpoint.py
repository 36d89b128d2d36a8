"""lowbit's checkpoint: a Hugging Face directory whose quantized linear weights are stored packed.

Layout: config.json and tokenizer files copied from the source; model.safetensors with every tensor of the
model except the quantized linear weights, which are replaced by `<name>.qweight` (packed codes, uint8,
LSB-first bit stream per row), `<name>.scales` (fp16 [out, groups]) and, for asymmetric formats,
`<name>.qzeros` (packed codes [out, ceil(groups/8)*bits]); lowbit_quant.json says how each was quantized.
Everything is written to a temporary directory beside the output, then renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from lowbit.errors import LowbitError
from lowbit.kernels.qlinear import PackedLinear
from lowbit.quantizers import QuantizedWeight, WeightSpec

QUANT_FILE = "lowbit_quant.json"
FORMAT_VERSION = 1
SKIP = (".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5", ".onnx")


def publish(tmp: Path, out: Path) -> None:
    """Rename a finished temporary file or directory to `out`, with the permissions a plain `open` or `mkdir`
    would have given it (mkstemp / mkdtemp make them private to the owner)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, (0o777 if tmp.is_dir() else 0o666) & ~umask)
    os.replace(tmp, out)


@contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """Yield a temporary directory that becomes `out` only if the block finishes without error."""
    if out.exists():
        raise LowbitError(f"{out} already exists; choose a new --out directory or remove the old one")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _storage_dtype(config: dict) -> torch.dtype:
    name = config.get("torch_dtype") or config.get("dtype") or "float32"
    return {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(str(name), torch.float32)


def replace_linears(model: nn.Module, weights: dict[str, QuantizedWeight]) -> None:
    """Swap the named nn.Linear modules for PackedLinear modules holding the packed weights."""
    for name, q in weights.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        lin = getattr(parent, child)
        bias = lin.bias.data if getattr(lin, "bias", None) is not None else None
        setattr(parent, child, PackedLinear.from_quantized(q, bias))


def install_packed(root: nn.Module, names: list[str], spec: WeightSpec, dtype: torch.dtype | None = None) -> None:
    """Swap the named linears (relative to `root`) for empty PackedLinear modules of `spec`, to load into."""
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = root.get_submodule(parent_name) if parent_name else root
        lin = getattr(parent, child)
        shell = PackedLinear(lin.in_features, lin.out_features, spec, lin.bias is not None)
        setattr(parent, child, shell if dtype is None else shell.to(dtype))


def _unique_state(model: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """State dict without tied duplicates; float tensors of non-packed parts cast to the storage dtype."""
    seen: set[int] = set()
    out = {}
    for k, v in model.state_dict().items():
        if v.data_ptr() in seen and v.numel() > 0:
            continue
        seen.add(v.data_ptr())
        keep = k.endswith((".qweight", ".qzeros", ".scales")) or not v.is_floating_point()
        out[k] = (v if keep else v.to(dtype)).contiguous()
    return out


def save_quantized(
    model: nn.Module, weights: dict[str, QuantizedWeight] | None, src: Path, out: Path, meta: dict
) -> dict:
    """Pack the quantized weights (if not packed already) and write the checkpoint atomically; returns its config."""
    from safetensors.torch import save_file

    config = json.loads((src / "config.json").read_text())
    if weights:
        replace_linears(model, weights)
    packed = {n: m for n, m in model.named_modules() if isinstance(m, PackedLinear)}
    specs = {m.spec for m in packed.values()}
    if len(specs) != 1:
        raise ValueError("one weight spec per checkpoint is supported")
    spec = specs.pop()
    bits = sum(m.storage_bits() for m in packed.values())
    numel = sum(m.in_features * m.out_features for m in packed.values())
    qcfg = {
        "format": "lowbit", "version": FORMAT_VERSION, "bits": spec.bits, "group_size": spec.group_size,
        "symmetric": spec.symmetric, "range": spec.range, "packing": "uint8-lsb-first", "modules": sorted(packed),
        "bits_per_weight": bits / numel, **meta,
    }
    with atomic_dir(out) as tmp:
        for f in src.iterdir():
            if f.is_file() and not f.name.endswith(SKIP) and not f.name.endswith(".index.json"):
                shutil.copy2(f, tmp / f.name)
        for d in src.iterdir():  # sentence-transformers side folders (pooling config) travel along
            if d.is_dir() and not d.name.startswith("."):
                shutil.copytree(d, tmp / d.name)
        save_file(_unique_state(model, _storage_dtype(config)), str(tmp / "model.safetensors"),
                  metadata={"format": "pt", "lowbit": "1"})
        (tmp / QUANT_FILE).write_text(json.dumps(qcfg, indent=2) + "\n")
    return qcfg


def read_quant_config(path: Path) -> dict | None:
    """The checkpoint's lowbit_quant.json, None for a full-precision directory."""
    f = path / QUANT_FILE
    if not f.is_file():
        return None
    try:
        cfg = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise LowbitError(f"{f} is not valid JSON ({e}); the checkpoint is damaged") from e
    if cfg.get("format") != "lowbit" or cfg.get("version", 0) > FORMAT_VERSION:
        raise LowbitError(f"{f} is not a lowbit v{FORMAT_VERSION} quantization config; upgrade lowbit")
    return cfg


def load(path: str | Path, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Restore a runnable model from a lowbit checkpoint (or a plain full-precision directory)."""
    return load_with_tokenizer(path, dtype).model


def load_with_tokenizer(path: str | Path, dtype: torch.dtype = torch.float32):  # -> Loaded
    """Load a checkpoint or full-precision directory with its tokenizer and family (see lowbit.models.Loaded)."""
    from lowbit.models.load import (
        Loaded,
        build_from_config,
        check_weight_files,
        family_of,
        load_model,
        load_tokenizer,
        read_config,
        rebuild_rotary,
        resolve_source,
    )
    from lowbit.models.stream import load_into

    p = resolve_source(path)
    qcfg = read_quant_config(p)
    if qcfg is None:
        return load_model(p, dtype)
    config = read_config(p)
    fam = family_of(config, p)
    files = check_weight_files(p)  # one file, or shards written by a streaming run
    # Built on the meta device (no memory for the float weights that packed modules replace), then given
    # storage; computed buffers (rotary frequencies) are rebuilt. Models with other computed buffers (BERT's
    # position ids, Gemma's embedding scale) are built normally.
    model = build_from_config(p, fam.kind, dtype, "meta")
    on_meta = all("Rotary" in type(m).__name__ for m in model.modules() if m._non_persistent_buffers_set)
    if not on_meta:
        model = build_from_config(p, fam.kind, dtype)
    spec = WeightSpec(qcfg["bits"], qcfg["group_size"], qcfg["symmetric"])
    install_packed(model, qcfg["modules"], spec, dtype)
    if on_meta:
        model.to_empty(device="cpu")
        rebuild_rotary(model)
    for m in model.modules():  # packed buffers keep their own dtypes
        if isinstance(m, PackedLinear):
            m.scales = m.scales.to(torch.float16)
    if not load_into(model, files):  # read tensor by tensor, like full-precision loading
        names = ", ".join(f.name for f in files)
        raise LowbitError(f"the weights ({names}) in {p} do not match config.json and {QUANT_FILE} (tensor names "
                          "or shapes differ); the checkpoint is damaged or was written by another tool")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    if qcfg.get("input_transforms"):  # activation quantizers and online Hadamard transforms (lowbit.ptq.recipe)
        from lowbit.quantizers.activation import restore

        restore(model, qcfg["input_transforms"])
    if qcfg.get("kv_cache"):  # simulated KV-cache quantization inside the attention layers
        from lowbit.quantizers.kv import restore as restore_kv

        restore_kv(model, fam, qcfg["kv_cache"])
    model.eval()
    return Loaded(model, load_tokenizer(p), fam, p, config)
