"""The jobs behind the CLI, as plain functions: quantize a model directory, evaluate one, inspect one."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch

from lowbit.data import calibration_windows, read_text, tokenize_text
from lowbit.data.text import check_calibration
from lowbit.errors import LowbitError
from lowbit.eval import cosine_to_reference, divergence, perplexity
from lowbit.export.checkpoint import save_quantized
from lowbit.files import check_output
from lowbit.memory import peak_rss_mb
from lowbit.models import load_model, resolve_source
from lowbit.models.checkpoint import load_with_tokenizer, read_quant_config, replace_linears
from lowbit.models.load import ASSETS, context_length, read_config
from lowbit.ptq import CalibConfig, GPTQConfig, RTNConfig, quantize, quantize_head
from lowbit.ptq.config import MethodConfig
from lowbit.ptq.recipe import EXAMPLES, STEPS, load_recipe
from lowbit.ptq.recipe import build as build_recipe
from lowbit.quantizers import WeightSpec


def make_config(
    method: str, bits: int, group_size: int, symmetric: bool = True, range: str = "minmax", act_bits: int = 16,
    options: dict | None = None, kv_bits: int = 16, recipe: str | Path | None = None, **gptq: object
) -> MethodConfig:
    """A method's (or recipe's, e.g. rotate+gptq) config from CLI-style arguments, with clear errors.

    A YAML `recipe` file's values win over the arguments; `gptq` options (damp, act_order, true_sequential)
    apply when the recipe has a gptq step, under the recipe's own gptq options.
    """
    rec = load_recipe(recipe) if recipe else {}
    method = str(rec.get("method", method))
    if not set(method.split("+")) & set(STEPS):
        raise LowbitError(f"unknown method {method!r}; choose one of: {EXAMPLES}")
    spec = WeightSpec(int(rec.get("bits", bits)), int(rec.get("group_size", group_size)),
                      bool(rec.get("symmetric", symmetric)), str(rec.get("range", range)))
    opts = dict(rec.get("options", options) or {})
    if gptq and "gptq" in method.split("+"):
        opts["gptq"] = {**gptq, **opts.get("gptq", {})}
    return build_recipe(method, spec, int(rec.get("act_bits", act_bits)), opts, int(rec.get("kv_bits", kv_bits)))


def quantize_dir(
    src: str | Path, out: str | Path, config: MethodConfig, calib: str | Path | None = None,
    calib_config: CalibConfig | None = None, progress: bool = True, stream: bool = False, resume: bool = False,
    head: WeightSpec | None = None,
) -> dict:
    """Load SRC, quantize it with `config` (sequential calibration for GPTQ) and write a checkpoint to OUT.

    With `stream`, the model is never loaded whole: blocks are read, quantized and written one at a time
    (see lowbit.ptq.streaming), and `resume` continues an interrupted streaming run. With `head`, the LM head and
    the input embedding are then rounded to nearest in that format (lowbit.ptq.quantize_head; tied ones stay one
    table); None keeps them in float.
    """
    out = Path(out)
    calib_config = calib_config or CalibConfig()
    t0 = time.perf_counter()
    src_path = resolve_source(src)
    check_output(out, [src_path], "--out directory")  # before any work: exists, inside the input, unwritable
    if config.needs_calibration:  # settings and text checked before the (slow) model load so bad input fails fast
        limit = context_length(read_config(src_path))
        check_calibration(calib_config.n_samples, calib_config.seq_len, limit, calib_config.batch_size)
        text = read_text(calib, "calibration") if calib is not None else _default_text("calib")
    if (stream or resume) and head is not None:
        raise LowbitError("--head-bits does not combine with --stream yet; drop --stream (or --head-bits)")
    if stream or resume:
        return _quantize_streaming(src_path, out, config, text if config.needs_calibration else None,
                                   calib_config, progress, resume, t0)
    loaded = load_model(src_path)
    tokens = None
    if config.needs_calibration:
        tokens = calibration_windows(loaded.tokenizer, text, calib_config.n_samples, calib_config.seq_len,
                                     calib_config.seed)
    # Each block is packed as soon as it is quantized, so its float weights and unpacked codes are freed early.
    result = quantize(loaded.model, loaded.family, config, tokens, calib_config.batch_size, progress,
                      on_block=lambda done: replace_linears(loaded.model, done))
    meta = {"method": config.method, "source": str(src_path), "quantize_seconds": round(result.seconds, 3),
            "act_bits": getattr(config, "act_bits", 16)}
    if result.report is not None:
        meta["report"] = result.report
    if head is not None:  # last, on the final weights (after any rotation, scaling or untying)
        meta["head"] = quantize_head(loaded.model, loaded.family, head)
    if tokens is not None:
        meta["calibration"] = {**calibration_record(text, calib_config), "samples": int(tokens.shape[0]),
                               "seq_len": int(tokens.shape[1]),
                               "activation_bytes": result.calib_bytes}
    qcfg = save_quantized(loaded.model, None, src_path, out, meta)
    return {"out": str(out), "method": config.method, "bits": config.weight.bits, "act_bits": meta["act_bits"],
            "kv_bits": (qcfg.get("kv_cache") or {}).get("bits", 16),
            "group_size": config.weight.group_size, "bits_per_weight": qcfg["bits_per_weight"],
            "quantize_seconds": result.seconds, "total_seconds": time.perf_counter() - t0,
            "peak_rss_mb": peak_rss_mb(), "calib_activation_mb": result.calib_bytes / 2**20,
            "head": meta.get("head"), "bytes": weight_bytes(out)}


def _quantize_streaming(src: Path, out: Path, config: MethodConfig, text: str | None, calib_config: CalibConfig,
                        progress: bool, resume: bool, t0: float) -> dict:
    from lowbit.models.load import load_tokenizer
    from lowbit.ptq.streaming import quantize_streaming

    if type(config) not in (RTNConfig, GPTQConfig):
        raise LowbitError(f"--stream supports the rtn and gptq methods, not {config.method}")
    tokens = None
    if text is not None:
        tokens = calibration_windows(load_tokenizer(src), text, calib_config.n_samples, calib_config.seq_len,
                                     calib_config.seed)
    res = quantize_streaming(src, out, config, tokens, calib_config.batch_size, resume, progress,
                             {"source": str(src)} if text is None else
                             {"source": str(src), "calibration": calibration_record(text, calib_config)})
    return {"out": str(out), "method": config.method, "bits": res["bits"],
            "group_size": res["group_size"], "bits_per_weight": res["bits_per_weight"],
            "quantize_seconds": res["quantize_seconds"], "total_seconds": time.perf_counter() - t0,
            "peak_rss_mb": peak_rss_mb(), "streamed": True}


def calibration_record(text: str, calib: CalibConfig) -> dict:
    """What a checkpoint records of its calibration: the text's sha256 and the window settings."""
    return {"text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(), "seed": calib.seed,
            "n_samples": calib.n_samples, "seq_len": calib.seq_len, "batch_size": calib.batch_size}


def _default_text(split: str) -> str:
    """The bundled demo split (calib or eval), used for any model when no text file is given."""
    f = ASSETS / "demo" / f"{split}.txt"
    if not f.is_file():
        raise LowbitError(f"bundled {split} text missing at {f}; reinstall lowbit")
    return read_text(f, split)


def weight_bytes(path: Path) -> int:
    """Bytes of the model's weight files on disk."""
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


def evaluate(
    src: str | Path, text: str | Path | None = None, reference: str | Path | None = None, window: int = 512,
    stride: int | None = None, progress: bool = True,
) -> dict:
    """Perplexity (causal LMs) or cosine to a reference (encoders), bits per weight and bytes on disk."""
    loaded = load_with_tokenizer(src)
    path = loaded.path
    body = read_text(text, "evaluation") if text is not None else _default_text("eval")
    ref = load_model(reference) if reference is not None else None  # checked before the long evaluation
    if ref is not None and ref.family.kind != loaded.family.kind:
        raise LowbitError(f"--reference is a {ref.family.kind} model but {path} is a {loaded.family.kind} one; "
                          "compare a model with its own full-precision original")
    qcfg = read_quant_config(path)
    res: dict = {"model": str(path), "family": loaded.family.name, "bytes": weight_bytes(path),
                 "bits_per_weight": qcfg["bits_per_weight"] if qcfg else _float_bits(path)}
    if qcfg:
        res["method"], res["bits"], res["group_size"] = qcfg.get("method"), qcfg["bits"], qcfg["group_size"]
        res["act_bits"] = qcfg.get("act_bits", 16)
        res["kv_bits"] = (qcfg.get("kv_cache") or {}).get("bits", 16)
        for name in qcfg.get("embeddings", {}):  # a packed input embedding (and head): --head-bits
            res["head_bits"] = qcfg.get("module_specs", {}).get(name, qcfg)["bits"]
    if loaded.family.kind == "causal":
        ids = tokenize_text(loaded.tokenizer, body)
        bos = getattr(loaded.tokenizer, "bos_token_id", None)
        limit = getattr(loaded.model.config, "max_position_embeddings", window) or window
        win = min(window, limit)
        step = min(stride or win // 2, win)
        if ref is not None:  # one pass over the same windows: both perplexities, KLD, top-1 agreement
            res.update(divergence(loaded.model, ref.model, ids, win, step, bos, progress))
        else:
            res["perplexity"] = perplexity(loaded.model, ids, win, step, bos, progress)
        res["window"], res["stride"] = win, step
        res["eval_tokens"] = int(ids.numel())
    elif ref is not None:
        res["cosine_to_reference"] = cosine_to_reference(loaded.model, ref.model, loaded.tokenizer, body)
    return res


def _float_bits(path: Path) -> float:
    """Bits per weight of an unquantized checkpoint, from its stored dtype."""
    from safetensors import safe_open

    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as h:
            for k in h.keys():
                if k.endswith(".weight") and len(h.get_slice(k).get_shape()) == 2:
                    dt = h.get_slice(k).get_dtype()
                    return {"F16": 16.0, "BF16": 16.0, "F32": 32.0}.get(dt, float("nan"))
    return float("nan")


def inspect_dir(src: str | Path) -> dict:
    """What a model directory or lowbit checkpoint holds: architecture, tensors, quantization, sizes."""
    from safetensors import safe_open

    from lowbit.models.load import check_weight_files, family_of, read_config

    path = resolve_source(src)
    config = read_config(path)
    fam = family_of(config, path)
    files = check_weight_files(path)
    counts: dict[str, int] = {}
    n_tensors, n_params = 0, 0
    for f in files:
        with safe_open(str(f), framework="pt") as h:
            for k in h.keys():
                sl = h.get_slice(k)
                dt = sl.get_dtype()
                counts[dt] = counts.get(dt, 0) + 1
                n_tensors += 1
                shape = sl.get_shape()
                n = 1
                for s in shape:
                    n *= s
                n_params += n
    qcfg = read_quant_config(path)
    return {"path": str(path), "model_type": config.get("model_type"), "family": fam.name,
            "layers": config.get("num_hidden_layers"), "hidden_size": config.get("hidden_size"),
            "tensors": n_tensors, "stored_elements": n_params, "dtypes": counts, "bytes": weight_bytes(path),
            "quantization": None if qcfg is None else {k: v for k, v in qcfg.items() if k != "modules"}
            | {"quantized_modules": len(qcfg["modules"])}}


DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def generate_dir(
    src: str | Path, prompt: str, max_new_tokens: int = 64, temperature: float = 0.0, top_k: int = 0,
    top_p: float = 1.0, seed: int = 0, dtype: str = "bf16", engine: str = "auto", kernel: str = "auto",
) -> dict:
    """Load a model or checkpoint (causal LMs) and continue `prompt`; text plus prefill and decode tokens/s."""
    from lowbit.kernels.qlinear import KERNELS, set_kernel
    from lowbit.models.generate import generate, warm_up

    if dtype not in DTYPES:
        raise LowbitError(f"unknown --dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")
    if kernel not in KERNELS:
        raise LowbitError(f"unknown --kernel {kernel!r}; choose one of: {', '.join(KERNELS)}")
    t0 = time.perf_counter()
    loaded = load_with_tokenizer(src, DTYPES[dtype])
    if loaded.family.kind != "causal":
        raise LowbitError(f"{loaded.path} is a {loaded.family.kind} model ({loaded.family.name}); generate needs a "
                          "causal language model")
    set_kernel(loaded.model, kernel)
    warm_up(loaded.model)  # prepares the packed kernels: counted as loading, not as prefill
    load_s = time.perf_counter() - t0
    g = generate(loaded.model, loaded.tokenizer, prompt, max_new_tokens, temperature, top_k, top_p, seed,
                 engine=engine)
    kernels = sorted({m.backend() for m in loaded.model.modules() if hasattr(m, "kernel_choice")} - {None})
    return {"model": str(loaded.path), "dtype": dtype, "load_seconds": load_s, **g.as_dict(),
            "kernel": ",".join(kernels) or "dense", "peak_rss_mb": peak_rss_mb()}


def describe(res: dict) -> str:
    """One JSON line."""
    return json.dumps(res, sort_keys=True, default=str)


def gguf_plan(loaded: object, ftype: str) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
    """llama.cpp's per-tensor types of a `ftype` file for a loaded Llama model: module name -> GGML type, and the
    fallbacks taken (module -> (wanted, used))."""
    from lowbit.export.gguf_mix import llama_types
    from lowbit.export.gguf_writer import gguf_name, hparams

    hp = hparams(loaded.config)
    tied = bool(loaded.config.get("tie_word_embeddings", False))
    mods = {n: m.in_features for n, m in loaded.model.named_modules() if isinstance(m, torch.nn.Linear)}
    mods["model.embed_tokens"] = loaded.model.get_input_embeddings().weight.shape[1]
    if tied:
        mods.pop("lm_head", None)
    by_gguf = {gguf_name(f"{n}.weight"): n for n in mods}
    types, fell = llama_types(ftype, {g: mods[n] for g, n in by_gguf.items()}, hp["layers"],
                              hp["n_head"] // hp["n_kv"], tied)
    return {by_gguf[g]: t for g, t in types.items()}, {by_gguf[g]: f for g, f in fell.items()}


def quantize_gguf(
    src: str | Path, out: str | Path, ftype: str, method: str = "gptq", calib: str | Path | None = None,
    calib_config: CalibConfig | None = None, progress: bool = True, damp: float = 0.01, act_order: bool = True,
    types: dict[str, str] | None = None,
) -> dict:
    """Quantize SRC into a GGUF file of llama.cpp's type `ftype` (its per-tensor mix, or `types` given per
    module): block linears by GPTQ inside each GGML grid (or importance-weighted RTN, `method='rtn'`) on the
    calibration text, the embedding rounded to nearest; written by lowbit.export.gguf_kquant.write_gguf."""
    from collections import Counter

    from lowbit.console import note
    from lowbit.export.gguf_kquant import check_architecture, write_gguf
    from lowbit.export.gguf_mix import file_type
    from lowbit.ptq.gguf_quant import quantize_ggml

    out = Path(out)
    _, ftype_id = file_type(ftype)
    calib_config = calib_config or CalibConfig()
    src_path = resolve_source(src)
    check_output(out, [src_path], "--out file")
    limit = context_length(read_config(src_path))
    check_calibration(calib_config.n_samples, calib_config.seq_len, limit, calib_config.batch_size)
    text = read_text(calib, "calibration") if calib is not None else _default_text("calib")
    t0 = time.perf_counter()
    loaded = load_model(src_path)
    check_architecture(loaded.config, src_path)  # before the calibration work, not after it
    plan, fell = gguf_plan(loaded, ftype)
    if types is not None:
        plan = dict(types)
    widths = Counter((loaded.model.get_submodule(n).weight.shape[1], *f) for n, f in fell.items())
    for (cols, wanted, used), count in sorted(widths.items()) if types is None else []:
        note(f"{count} tensors with rows of {cols} (not a multiple of {wanted}'s block) fall back to {used}, "
             "as in llama.cpp")
    note(f"{ftype}: " + ", ".join(f"{k} x{v}" for k, v in sorted(Counter(plan.values()).items())))
    tokens = calibration_windows(loaded.tokenizer, text, calib_config.n_samples, calib_config.seq_len,
                                 calib_config.seed)
    blocks, importance, seconds = quantize_ggml(loaded.model, loaded.family, plan, tokens, method,
                                                calib_config.batch_size, progress, damp, act_order)
    res = write_gguf(loaded.model, src_path, out, plan, blocks, importance, ftype_id)
    return {**res, "type": ftype, "method": method, "quantize_seconds": seconds,
            "total_seconds": time.perf_counter() - t0, "fallbacks": {k: list(v) for k, v in fell.items()},
            "peak_rss_mb": peak_rss_mb()}
