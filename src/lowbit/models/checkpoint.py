"""lowbit's own checkpoint format, and loading it: a Hugging Face directory whose block linears stay packed.

Layout: config.json and tokenizer files copied from the source; model.safetensors (or shards written by a
streaming run) with every tensor of the model except the quantized weights, which are replaced by
`<name>.qweight` (packed codes, uint8, LSB-first bit stream per row), `<name>.scales` (fp16 [out, groups]) and,
for asymmetric formats, `<name>.qzeros` (packed codes [out, ceil(groups/8)*bits]); lowbit_quant.json says how
each was quantized and which run-time transforms (activation quantizers, online Hadamard, KV cache) apply.

lowbit_quant.json: `modules` lists every packed module; `bits`, `group_size`, `symmetric` and `range` give the
format of each one that `module_specs` does not name (version 1 files have no `module_specs`: one format for
all). Version 2 adds, where needed, `module_specs` ({module: {"bits", "group_size", "symmetric", "range"}}, the
modules of another format, e.g. an 8-bit LM head beside 4-bit blocks) and `embeddings` ({module: [aliases]}:
packed input embeddings, [vocab, hidden] tables stored like a head's weight [out, in]; `aliases` are the other
module paths the same module serves, e.g. ["lm_head"] for tied embeddings, whose codes are stored once, under
the embedding's name). `bits_per_weight` is the storage of every packed module over their weight count.
Writing lives in lowbit.export.checkpoint and lowbit.ptq.streaming; both build their files from the pieces here.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch
from torch import nn

from lowbit.errors import LowbitError
from lowbit.files import copy_file, hash_files, read_json
from lowbit.kernels.embedding import PackedEmbedding
from lowbit.kernels.qlinear import PackedLinear
from lowbit.quantizers import QuantizedWeight, WeightSpec, kv
from lowbit.quantizers import activation as act
from lowbit.quantizers.weight import RANGES

QUANT_FILE = "lowbit_quant.json"
FORMAT_VERSION = 2  # version 1 (one format, no packed embeddings) is still written when it suffices
# The only side files copied into outputs: what transformers and sentence-transformers read beside the weights.
SIDE_FILES = frozenset((
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
    "special_tokens_map.json", "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt", "spiece.model",
    "sentencepiece.bpe.model", "chat_template.jinja", "chat_template.json", "preprocessor_config.json",
    "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
))


def storage_dtype(config: dict) -> torch.dtype:
    """The float dtype a config.json says the model's tensors are stored in (float32 if it says nothing)."""
    name = config.get("torch_dtype") or config.get("dtype") or "float32"
    return {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(str(name), torch.float32)


def quant_config(specs: dict[str, WeightSpec], bits_per_weight: float, meta: dict,
                 embeddings: dict[str, list[str]] | None = None) -> dict:
    """The contents of lowbit_quant.json for packed modules of the given formats (by name), plus run metadata:
    the most common format at the top level, the others in `module_specs` (see the module docstring)."""
    top = Counter(specs.values()).most_common(1)[0][0]
    others = {n: spec_json(s) for n, s in sorted(specs.items()) if s != top}
    extra: dict = {"module_specs": others} if others else {}
    if embeddings:
        extra["embeddings"] = {n: sorted(a) for n, a in sorted(embeddings.items())}
    return {"format": "lowbit", "version": 2 if extra else 1, **spec_json(top), "packing": "uint8-lsb-first",
            "modules": sorted(specs), **extra, "bits_per_weight": bits_per_weight, **meta}


def spec_json(spec: WeightSpec) -> dict:
    """A weight format as lowbit_quant.json records it."""
    return {"bits": spec.bits, "group_size": spec.group_size, "symmetric": spec.symmetric, "range": spec.range}


def packed_layout(model: nn.Module) -> tuple[dict[str, WeightSpec], dict[str, list[str]], float]:
    """The packed modules of a model (each once, by name) with their formats, its packed embeddings with the other
    paths each one serves (a tied LM head), and the bits per weight of them all."""
    packed = {n: m for n, m in model.named_modules() if isinstance(m, PackedLinear)}
    paths: dict[int, list[str]] = {}
    for n, m in model.named_modules(remove_duplicate=False):
        paths.setdefault(id(m), []).append(n)
    embeddings = {n: [a for a in paths[id(m)] if a != n] for n, m in packed.items() if isinstance(m, PackedEmbedding)}
    bits = sum(m.storage_bits() for m in packed.values())
    numel = sum(m.in_features * m.out_features for m in packed.values())
    return {n: m.spec for n, m in packed.items()}, embeddings, bits / max(numel, 1)


def copy_side_files(src: Path, dst: Path, folders: bool = True, exclude: tuple[str, ...] = ()) -> list[str]:
    """Copy the small files a model needs (config, tokenizer, generation config, chat template; none named in
    `exclude`) from a model directory, and with `folders` the sentence-transformers module folders that
    modules.json names (their JSON files only); returns the names copied.

    Nothing else is copied: no weights, no code (auto_map *.py files), no other folders (original/*.pth), and
    no link that points outside the model directory (lowbit.files.copy_file refuses those).
    """
    copied = []
    for f in sorted(src.iterdir()):
        if f.name in SIDE_FILES and f.name not in exclude and (f.is_file() or f.is_symlink()):
            copy_file(f, dst / f.name, src)
            copied.append(f.name)
    for d in module_folders(src) if folders else []:
        (dst / d).mkdir()
        for f in sorted((src / d).iterdir()):
            if f.suffix == ".json" and (f.is_file() or f.is_symlink()):
                copy_file(f, dst / d / f.name, src)
                copied.append(f"{d}/{f.name}")
    return copied


def source_hashes(src: Path) -> dict:
    """The sha256 of a source model's weight files and of the side files an output copies from it."""
    names = [f.name for f in sorted(src.glob("*.safetensors"))] + [
        f.name for f in src.iterdir() if f.name in SIDE_FILES and f.is_file()]
    return {"path": str(src), "files": hash_files(src, names)}


def module_folders(src: Path) -> list[str]:
    """The sentence-transformers module folders (pooling, normalization) that src/modules.json names."""
    f = src / "modules.json"
    mods = read_json(f, "restore it from the original model") if f.is_file() else []
    paths = [m.get("path") for m in mods if isinstance(m, dict)] if isinstance(mods, list) else []
    return [p for p in paths if isinstance(p, str) and p and Path(p).name == p and not p.startswith(".")
            and (src / p).is_dir() and not (src / p).is_symlink()]


def checkpoint_state(model: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """State dict to store: tied duplicates dropped, float tensors outside the packed parts cast to `dtype`."""
    seen: set[int] = set()
    out = {}
    for k, v in model.state_dict().items():
        if v.data_ptr() in seen and v.numel() > 0:
            continue
        seen.add(v.data_ptr())
        keep = k.endswith((".qweight", ".qzeros", ".scales")) or not v.is_floating_point()
        out[k] = (v if keep else v.to(dtype)).contiguous()
    return out


def replace_linears(model: nn.Module, weights: dict[str, QuantizedWeight]) -> None:
    """Swap the named nn.Linear modules (full names) for PackedLinear modules holding the packed weights; their
    input transforms (activation quantizers, online Hadamard) move to the new modules."""
    for name, q in weights.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        lin = getattr(parent, child)
        bias = lin.bias.data if getattr(lin, "bias", None) is not None else None
        setattr(parent, child, PackedLinear.from_quantized(q, bias))
    act.install(model, list(weights))


def install_packed(root: nn.Module, specs: dict[str, WeightSpec], dtype: torch.dtype | None = None,
                   embeddings: dict[str, list[str]] | None = None) -> None:
    """Swap the named linears (relative to `root`) for empty PackedLinear modules of their formats, and the
    named `embeddings` for empty PackedEmbedding modules, each also set at its alias paths (a tied head), to load
    into."""
    embeddings = embeddings or {}
    for name, spec in specs.items():
        parent, child, old = _module_at(root, name)
        if name in embeddings:
            if not isinstance(old, nn.Embedding):
                raise LowbitError(f"{QUANT_FILE} names {name}, a {type(old).__name__}, as a packed embedding; the "
                                  "checkpoint is damaged")
            scale = getattr(old, "embed_scale", None)  # Gemma's, multiplied after the lookup
            shell: PackedLinear = PackedEmbedding(old.num_embeddings, old.embedding_dim, spec,
                                                  None if scale is None else float(scale), old.weight.dtype)
            for alias in embeddings[name]:
                a_parent, a_child, lin = _module_at(root, alias)
                if not isinstance(lin, nn.Linear) or (lin.out_features, lin.in_features) != tuple(old.weight.shape):
                    raise LowbitError(f"{QUANT_FILE} ties {alias} to the embedding {name}, but it is not a linear "
                                      "layer of the embedding's shape; the checkpoint is damaged")
                setattr(a_parent, a_child, shell)
        elif not isinstance(old, nn.Linear):
            raise LowbitError(f"{QUANT_FILE} names {name}, a {type(old).__name__}, as a quantized linear layer; the "
                              "checkpoint is damaged")
        else:
            shell = PackedLinear(old.in_features, old.out_features, spec, old.bias is not None)
        setattr(parent, child, shell if dtype is None else shell.to(dtype))  # (Module.to works in place)


def _module_at(root: nn.Module, name: str) -> tuple[nn.Module, str, nn.Module]:
    """(parent, attribute name, module) of a module path, or a clear error for a damaged checkpoint."""
    parent_name, _, child = name.rpartition(".")
    try:
        parent = root.get_submodule(parent_name) if parent_name else root
        return parent, child, getattr(parent, child)
    except AttributeError:
        raise LowbitError(f"{QUANT_FILE} names the module {name}, which the model that config.json describes does "
                          "not have; the checkpoint is damaged or its config.json was changed") from None


def runtime_transforms(model: nn.Module) -> dict:
    """The run-time transforms installed on a model, as lowbit_quant.json stores them (empty when none)."""
    out: dict = {}
    transforms = act.to_json(model)
    if transforms:
        out["input_transforms"] = transforms
    kv_cache = kv.to_json(model)
    if kv_cache is not None:
        out["kv_cache"] = kv_cache
    return out


def restore_runtime_transforms(model: nn.Module, family: object, qcfg: dict) -> None:
    """Re-install the run-time transforms a checkpoint's lowbit_quant.json lists."""
    if qcfg.get("input_transforms"):
        act.from_json(model, qcfg["input_transforms"])
    if qcfg.get("kv_cache"):
        kv.from_json(model, family, qcfg["kv_cache"])


def read_quant_config(path: Path) -> dict | None:
    """The checkpoint's lowbit_quant.json, checked (`check_quant_config`); None for a full-precision directory."""
    f = path / QUANT_FILE
    if not f.is_file():
        return None
    cfg = read_json(f, "the checkpoint is damaged")
    if not isinstance(cfg, dict) or cfg.get("format") != "lowbit" or not _is_int(cfg.get("version", 0)) \
            or cfg.get("version", 0) > FORMAT_VERSION:
        raise LowbitError(f"{f} is not a lowbit v{FORMAT_VERSION} quantization config; upgrade lowbit")
    check_quant_config(cfg, f)
    return cfg


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_names(v: object) -> bool:
    return isinstance(v, list) and all(isinstance(m, str) and m for m in v) and len(set(v)) == len(v)


SPEC_KEYS = (("bits", "an integer 1-8", lambda v: _is_int(v) and 1 <= v <= 8),
             ("group_size", "an integer >= -1", lambda v: _is_int(v) and v >= -1),
             ("symmetric", "true or false", lambda v: isinstance(v, bool)),
             ("range", f"one of {', '.join(RANGES)}", lambda v: v in RANGES))


def _check(d: dict, where: str, checks: tuple, optional: tuple[str, ...] = ()) -> None:
    """Each (key, what is expected, test) of `checks` holds in `d` (keys in `optional` may be missing)."""
    for key, want, ok in checks:
        if (key in d or key not in optional) and not ok(d.get(key)):
            raise LowbitError(f"{where}{key} is {d.get(key, 'missing')!r}, {want} expected; the checkpoint is damaged")


def check_quant_config(cfg: dict, f: Path) -> None:
    """Refuse a lowbit_quant.json with missing keys, values of the wrong type or implausible metadata."""
    where = f"{f}: "
    _check(cfg, where, SPEC_KEYS + (("modules", "a list of module names", _is_names),), optional=("range",))
    modules = set(cfg["modules"])
    _check(cfg, where, (
        ("act_bits", "16, 8 or 4", lambda v: v in (4, 8, 16) and _is_int(v)),
        ("module_specs", "an object {module: format} of listed modules",
         lambda v: isinstance(v, dict) and set(v) <= modules and all(isinstance(x, dict) for x in v.values())),
        ("embeddings", "an object {module: [aliases]} of listed modules",
         lambda v: isinstance(v, dict) and set(v) <= modules and all(map(_is_names, v.values()))),
    ), optional=("act_bits", "module_specs", "embeddings"))
    for name, d in cfg.get("module_specs", {}).items():
        _check(d, f"{where}module_specs[{name!r}].", SPEC_KEYS, optional=("range",))
    aliases = [a for names in cfg.get("embeddings", {}).values() for a in names]
    if len(set(aliases)) != len(aliases) or set(aliases) & modules:
        raise LowbitError(f"{where}embeddings ties {aliases} to packed embeddings, but a module is named twice or is "
                          "packed itself; the checkpoint is damaged")
    bits = [s.bits for s in module_specs(cfg).values()] or [cfg["bits"]]
    lo, hi = min(bits), max(bits) + 40
    _check(cfg, where, (("bits_per_weight", f"a number between {lo} (the bits) and {hi}", lambda v: isinstance(
        v, int | float) and not isinstance(v, bool) and lo <= v <= hi),), optional=("bits_per_weight",))
    for key in ("input_transforms", "kv_cache"):
        if cfg.get(key) is not None and not isinstance(cfg[key], dict | list):
            raise LowbitError(f"{where}{key} is {cfg[key]!r}, a JSON object expected; the checkpoint is damaged")


def spec_of(qcfg: dict) -> WeightSpec:
    """The weight format a lowbit_quant.json gives at its top level (that of every module not in module_specs)."""
    return WeightSpec(qcfg["bits"], qcfg["group_size"], qcfg["symmetric"])


def module_specs(qcfg: dict) -> dict[str, WeightSpec]:
    """The weight format of every packed module a lowbit_quant.json lists."""
    top, own = spec_of(qcfg), qcfg.get("module_specs", {})
    return {n: WeightSpec(own[n]["bits"], own[n]["group_size"], own[n]["symmetric"]) if n in own else top
            for n in qcfg["modules"]}


def load(path: str | Path, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Restore a runnable model from a lowbit checkpoint (or a plain full-precision directory)."""
    return load_with_tokenizer(path, dtype).model


def load_with_tokenizer(path: str | Path, dtype: torch.dtype = torch.float32):  # -> lowbit.models.Loaded
    """Load a checkpoint or full-precision directory with its tokenizer and family (see lowbit.models.Loaded)."""
    from lowbit.models.load import (
        Loaded,
        build_from_config,
        check_weight_files,
        family_of,
        load_model,
        load_tokenizer,
        load_weights,
        read_config,
        resolve_source,
    )

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
    on_meta = fam.meta_buildable(model)
    if not on_meta:
        model = build_from_config(p, fam.kind, dtype)
    install_packed(model, module_specs(qcfg), dtype, qcfg.get("embeddings"))
    if on_meta:
        model.to_empty(device="cpu")
        fam.rebuild_rotary(model)
    for m in model.modules():  # packed buffers keep their own dtypes
        if isinstance(m, PackedLinear):
            m.scales = m.scales.to(torch.float16)
    load_weights(model, fam, files)  # read tensor by tensor and checked, like full-precision loading
    restore_runtime_transforms(model, fam, qcfg)
    model.eval()
    return Loaded(model, load_tokenizer(p), fam, p, config)
