"""Export a Llama/Mistral model to GGUF (llama.cpp's file format) as Q8_0, Q6_K, Q4_0, Q4_K or Q4_K_M, with its
tokenizer.

Follows llama.cpp's converter for the llama architecture: metadata keys `llama.*` (context, embedding and
feed-forward lengths, heads, rope base and dimensions, RMS-norm epsilon), tensor names token_embd /
blk.N.attn_q ... / output_norm / output, the row permutation of q and k that turns Hugging Face's rotate-half
rope layout into llama.cpp's interleaved one, and the SentencePiece vocabulary (tokens, scores, types, special
ids). Linear weights of a lowbit checkpoint whose format fits the GGUF type (groups a multiple of 32 or per
channel, and every code - zero in the type's integer range: symmetric <= 4 bits for Q4_0, symmetric <= 8 or
asymmetric <= 7 bits for Q8_0) are carried over as they are: the GGUF blocks decode to exactly our weights.
Everything else is re-quantized from the dequantized weights, and the console says so. Q4_K_M mixes Q4_K with
Q6_K for the attn_v and ffn_down tensors llama.cpp's own Q4_K_M picks. Embeddings and the LM head keep their
stored precision (F16, or F32 for other dtypes); norms are F32. A packed embedding and head (lowbit quantize
--head-bits) are written whatever the file's type from their codes as the smallest type that holds them exactly
(`exact_type`: symmetric <= 4 bits as Q4_0, <= 8 bits as Q8_0, in groups of a multiple of 32; 8-bit g64 is
Q8_0 with each group's fp16 scale in two blocks), else as F16 from the dequantized weights, with a note; a tied
head is the embedding (token_embd), which llama.cpp uses when there is no output tensor.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from lowbit.console import note
from lowbit.errors import LowbitError
from lowbit.export.ggml_blocks import INT_RANGE, QK, QK_K, int_blocks, quantize_q4_k, quantize_q6_k
from lowbit.export.gguf_mix import use_more_bits
from lowbit.export.source import ExportSource
from lowbit.files import atomic_output
from lowbit.kernels.qlinear import PackedLinear
from lowbit.models.families import GGUFNames
from lowbit.models.families.llama import LLAMA_GGUF
from lowbit.quantizers import WeightSpec, expand_groups

GGUF_TYPES = ("Q8_0", "Q6_K", "Q4_0", "Q4_K", "Q4_K_M")
# llama.cpp's LlamaFileType: MOSTLY_Q8_0, MOSTLY_Q6_K, MOSTLY_Q4_0, MOSTLY_Q4_K_S, MOSTLY_Q4_K_M
FILE_TYPE = {"Q8_0": 7, "Q6_K": 18, "Q4_0": 2, "Q4_K": 14, "Q4_K_M": 15}
LAYER = LLAMA_GGUF.layer_map  # llama's tensor names inside a block (kept for benchmarks/gguf_quality.py)
TOP = LLAMA_GGUF.top_map


def gguf_name(hf_name: str, names: GGUFNames = LLAMA_GGUF) -> str:
    """llama.cpp's tensor name for a Hugging Face tensor name of a family (default: Llama's names; a clear error
    for anything unknown)."""
    top, layer = names.top_map, names.layer_map
    if hf_name in top:
        return top[hf_name]
    m = re.fullmatch(re.escape(names.blocks) + r"\.(\d+)\.(.+?)(\.weight|\.bias)?", hf_name)
    if m:
        idx, rest, suffix = m.group(1), m.group(2), m.group(3) or ""
        if rest + suffix in layer:
            return f"blk.{idx}.{layer[rest + suffix]}"
        if rest in layer:
            return f"blk.{idx}.{layer[rest]}{suffix}"
    raise LowbitError(f"tensor {hf_name} has no GGUF {names.arch} counterpart; only plain Llama/Mistral layouts export")


def rope_permutation(rows: int, n_head: int) -> torch.Tensor:
    """Row order that llama.cpp's converter applies to q (n_head) and k (n_kv_head) weights: per head, the two
    rotate-half halves are interleaved (row i of the first half, row i of the second half, ...)."""
    half = rows // n_head // 2
    return torch.arange(rows).reshape(n_head, 2, half).transpose(1, 2).reshape(-1)


def _config_value(cfg: dict, *keys: str, default: object = None) -> object:
    for k in keys:
        if cfg.get(k) is not None:
            return cfg[k]
    return default


def hparams(cfg: dict) -> dict:
    """The llama hyper-parameters GGUF needs, read from a Hugging Face config (clear errors when unsupported)."""
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    rope_type = rope.get("rope_type") or rope.get("type") or "default"
    if rope_type not in ("default", None):
        raise LowbitError(f"rope type {rope_type!r} is not supported by the GGUF export (plain rope only)")
    n_head = int(cfg["num_attention_heads"])
    hidden = int(cfg["hidden_size"])
    head_dim = int(_config_value(cfg, "head_dim", default=hidden // n_head))
    return {
        "context": int(cfg.get("max_position_embeddings", 2048)), "hidden": hidden,
        "layers": int(cfg["num_hidden_layers"]), "ffn": int(cfg["intermediate_size"]), "n_head": n_head,
        "n_kv": int(_config_value(cfg, "num_key_value_heads", default=n_head)), "head_dim": head_dim,
        "eps": float(cfg.get("rms_norm_eps", 1e-5)), "vocab": int(cfg["vocab_size"]),
        "rope_theta": float(_config_value(rope, "rope_theta", default=_config_value(cfg, "rope_theta",
                                                                                       default=10000.0))),
    }


def sentencepiece_vocab(path: Path, vocab_size: int) -> dict:
    """Tokens, scores and token types of a SentencePiece tokenizer.model (llama.cpp's 'llama' tokenizer)."""
    import sentencepiece as spm
    from gguf import TokenType

    f = path / "tokenizer.model"
    if not f.is_file():
        raise LowbitError(f"{path} has no tokenizer.model; GGUF export needs a SentencePiece tokenizer "
                          "(Llama/Mistral with tokenizer.model)")
    try:
        sp = spm.SentencePieceProcessor(model_file=str(f))
    except Exception as e:
        raise LowbitError(f"{f} is not a readable SentencePiece model ({e})") from e
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        kind = (TokenType.UNKNOWN if sp.is_unknown(i) else TokenType.CONTROL if sp.is_control(i)
                else TokenType.UNUSED if sp.is_unused(i) else TokenType.BYTE if sp.is_byte(i) else TokenType.NORMAL)
        tokens.append(sp.id_to_piece(i).encode("utf-8"))
        scores.append(sp.get_score(i))
        types.append(kind)
    if vocab_size < len(tokens):
        raise LowbitError(f"tokenizer.model has {len(tokens)} tokens but the model only {vocab_size} embeddings")
    for i in range(len(tokens), vocab_size):  # padded embedding rows, as llama.cpp's converter names them
        tokens.append(f"[PAD{i}]".encode())
        scores.append(-1000.0)
        types.append(TokenType.UNUSED)
    ids = {"bos": sp.bos_id(), "eos": sp.eos_id(), "unk": sp.unk_id(), "pad": sp.pad_id()}
    return {"tokens": tokens, "scores": scores, "types": types, "ids": ids}


def carry_over(m: PackedLinear, kind: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Signed integers [out, in] and fp16 block scales [out, in/32] if `m` is exactly a `kind` tensor, else None:
    groups a multiple of 32 (or per channel or tensor) and every code - zero in the type's range."""
    g = m.spec.group_size
    if kind not in INT_RANGE or m.in_features % QK or (g > 0 and g % QK):
        return None
    k, glen = m.in_features, m.spec.group_len(m.in_features)  # groups of glen columns, the last maybe shorter
    zeros = expand_groups(m.zeros().round().to(torch.int32), glen, k)
    x = m.codes().to(torch.int32) - zeros.expand(m.out_features, -1)
    lo, hi = INT_RANGE[kind]
    if int(x.min()) < lo or int(x.max()) > hi:
        return None
    d = expand_groups(m.scales, glen // QK, k // QK).expand(m.out_features, -1)
    return x, d.contiguous()


def exact_type(spec: WeightSpec, in_features: int) -> str | None:
    """The smallest GGUF type (Q4_0, Q8_0) whose blocks hold every packed weight of `spec` exactly (`carry_over`
    then succeeds whatever the codes), or None: groups a multiple of 32 and every possible code - zero in range."""
    if in_features % QK or (spec.group_size > 0 and spec.group_size % QK):
        return None
    lo, hi = (-(2 ** (spec.bits - 1)), 2 ** (spec.bits - 1) - 1) if spec.symmetric else (1 - 2**spec.bits,
                                                                                          2**spec.bits - 1)
    return next((kind for kind, (a, b) in INT_RANGE.items() if a <= lo and hi <= b), None)


def more_bits(gname: str, n_layers: int) -> bool:
    """Whether llama.cpp's Q4_K_M gives this tensor Q6_K: attn_v and ffn_down of the first and last eighth of
    the layers and of every third layer between (llama_tensor_get_type's use_more_bits)."""
    m = re.fullmatch(r"blk\.(\d+)\.(attn_v|ffn_down)", gname)
    if not m:
        return False
    return use_more_bits(int(m.group(1)), n_layers)


def linear_kind(in_features: int, qtype: str, gname: str = "", n_layers: int = 0) -> str:
    """GGUF type of the linear weight `gname` with rows of `in_features` in a `qtype` file (known before any
    weight is read: carried-over and re-quantized weights of one type take the same bytes)."""
    kind = ("Q6_K" if more_bits(gname, n_layers) else "Q4_K") if qtype == "Q4_K_M" else qtype
    if kind in ("Q4_K", "Q6_K"):
        if in_features % QK_K == 0:
            return kind
        kind = "Q8_0"  # K-quants need rows of 256; llama.cpp falls back too (to Q5_0 / Q8_0)
    return "F16" if in_features % QK else kind


def linear_tensor(m: nn.Module, kind: str, perm: torch.Tensor | None) -> tuple[np.ndarray, bool]:
    """GGUF data of one linear weight as `kind`, rows permuted by `perm`, and whether its own codes carried over."""
    import gguf

    exact = carry_over(m, kind) if isinstance(m, PackedLinear) else None
    if exact is not None:
        x, d = exact
        if perm is not None:
            x, d = x[perm], d[perm]
        return int_blocks(x, d, kind), True
    w = m.dequantized_weight(torch.float32) if isinstance(m, PackedLinear) else m.weight.data.float()
    if perm is not None:
        w = w[perm]
    if kind == "Q4_K":
        return quantize_q4_k(w)[0], False
    if kind == "Q6_K":
        return quantize_q6_k(w)[0], False
    if kind == "F16":
        return w.to(torch.float16).numpy(), False
    return gguf.quants.quantize(w.contiguous().numpy(), getattr(gguf.GGMLQuantizationType, kind)), False


def tensor_info(kind: str, shape: tuple[int, ...]) -> tuple[tuple[int, ...], np.dtype, int, object]:
    """Stored shape, numpy dtype, byte count and raw GGML type (None for floats) of a tensor of `kind`."""
    import gguf

    if kind in ("F16", "F32"):
        dt = np.dtype(np.float16 if kind == "F16" else np.float32)
        return shape, dt, int(np.prod(shape)) * dt.itemsize, None
    raw = getattr(gguf.GGMLQuantizationType, kind)
    block, size = gguf.GGML_QUANT_SIZES[raw]
    rows, cols = shape
    return (rows, cols // block * size), np.dtype(np.uint8), rows * (cols // block * size), raw


def _table_jobs(src: ExportSource, names: GGUFNames, linears: list[str]) -> list[tuple[str, str, object, list]]:
    """Jobs for the packed tables outside the blocks (a packed input embedding, an untied packed head): their
    codes as the GGUF type that holds them exactly, else their dequantized values in F16, said on the console.
    A tied head is the embedding itself and is not written (llama.cpp reads token_embd for it)."""
    jobs: list[tuple[str, str, object, list]] = []
    for name in [n for n in src.linear_names() if src.is_packed(n) and n not in linears]:
        shell = src.model.get_submodule(name)
        gname = gguf_name(f"{name}.weight", names)
        kind = exact_type(shell.spec, shell.in_features)
        if kind is None:
            kind = "F16"
            note(f"{gname}: {shell.spec.describe()} codes fit no GGUF block type exactly (Q4_0 and Q8_0 need "
                 "groups of a multiple of 32 and codes in their range); written as F16 from the dequantized values, "
                 "rounded to fp16")
        jobs.append(("table", name, (kind, None), [(gname, tensor_info(kind, (shell.out_features,
                                                                              shell.in_features)))]))
    return jobs


def write_hparams(w, name: str, hp: dict, file_type: int) -> None:  # w: gguf.GGUFWriter
    """The llama.* hyper-parameters and the file type."""
    import gguf

    w.add_name(name)
    w.add_context_length(hp["context"])
    w.add_embedding_length(hp["hidden"])
    w.add_block_count(hp["layers"])
    w.add_feed_forward_length(hp["ffn"])
    w.add_head_count(hp["n_head"])
    w.add_head_count_kv(hp["n_kv"])
    w.add_rope_freq_base(hp["rope_theta"])
    w.add_rope_dimension_count(hp["head_dim"])
    w.add_layer_norm_rms_eps(hp["eps"])
    w.add_vocab_size(hp["vocab"])
    if hp["head_dim"] * hp["n_head"] != hp["hidden"]:
        w.add_key_length(hp["head_dim"])
        w.add_value_length(hp["head_dim"])
    w.add_file_type(file_type)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)


def write_metadata(w, src: ExportSource, hp: dict, vocab: dict, qtype: str) -> None:  # w: gguf.GGUFWriter
    """The llama.* hyper-parameters, file type and SentencePiece vocabulary."""
    write_hparams(w, src.path.name, hp, FILE_TYPE[qtype])
    w.add_tokenizer_model("llama")
    w.add_token_list(vocab["tokens"])
    w.add_token_scores(vocab["scores"])
    w.add_token_types(vocab["types"])
    for key, add in (("bos", w.add_bos_token_id), ("eos", w.add_eos_token_id), ("unk", w.add_unk_token_id),
                     ("pad", w.add_pad_token_id)):
        if vocab["ids"][key] >= 0:
            add(vocab["ids"][key])
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)


def export_gguf(src: ExportSource, out: Path, qtype: str) -> dict:
    """Write `src` as a GGUF file of type `qtype` at `out` (atomically, one layer in memory at a time)."""
    import gguf

    if qtype not in GGUF_TYPES:
        raise LowbitError(f"unknown GGUF type {qtype!r}; choose one of {', '.join(GGUF_TYPES)}")
    names = src.family.gguf
    if names is None:
        raise LowbitError(f"GGUF export supports Llama and Mistral models with a SentencePiece tokenizer.model; "
                          f"{src.path} is {src.family.name}")
    hp = hparams(src.config)
    vocab = sentencepiece_vocab(src.path, hp["vocab"])
    if not src.quantized:
        note(f"{src.path} is not quantized: its linear weights are quantized to {qtype} with round-to-nearest")
    linears = [n for n in src.linear_names() if n.startswith(names.blocks + ".")]
    floats = src.float_names(set(linears))
    if src.family.ties_head(src.config) and src.family.head in floats:
        floats.remove(src.family.head)
    keep = "F16" if src.storage_dtype == torch.float16 else "F32"  # 2-D floats keep F16, else F32; norms F32
    # Pass 1 plans every tensor (name, type, size) from the structure alone, so that the header and the tensor
    # table are written first; pass 2 reads, converts and writes one layer at a time.
    jobs: list[tuple[str, str, object, list]] = []
    for name in floats:
        shape = src.shape(name)
        kind = "F32" if len(shape) == 1 else keep
        jobs.append(("float", name, kind, [(gguf_name(name, names), tensor_info(kind, shape))]))
    for name in linears:
        shell = src.model.get_submodule(name)
        gname = gguf_name(name, names)
        kind = linear_kind(shell.in_features, qtype, gname, hp["layers"])
        heads = {".attn_q": hp["n_head"], ".attn_k": hp["n_kv"]}.get(gname[gname.rfind("."):])
        perm = rope_permutation(shell.out_features, heads) if heads else None
        tensors = [(f"{gname}.weight", tensor_info(kind, (shell.out_features, shell.in_features)))]
        if shell.bias is not None:
            tensors.append((f"{gname}.bias", tensor_info("F32", (shell.out_features,))))
        jobs.append(("linear", name, (kind, perm), tensors))
    tables = _table_jobs(src, names, linears)
    jobs += tables
    kinds: Counter = Counter()
    with atomic_output(out) as tmp:
        w = gguf.GGUFWriter(str(tmp), names.arch)
        write_metadata(w, src, hp, vocab, qtype)
        for _, _, _, tensors in jobs:
            for gname, (shape, dtype, nbytes, raw) in tensors:
                w.add_tensor_info(gname, shape, dtype, nbytes, raw_dtype=raw)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for what, name, how, _ in tqdm(jobs, desc=f"GGUF {qtype}", unit="tensor", disable=None):
            if what == "float":
                w.write_tensor_data(src.tensor(name, torch.float16 if how == "F16" else torch.float32).numpy())
                continue
            kind, perm = how
            m = src.linear(name)
            data, exact = linear_tensor(m, kind, perm)
            if what == "linear":
                kinds[f"{kind} {'carried over' if exact else 're-quantized'}" if kind != "F16" else "F16"] += 1
            w.write_tensor_data(np.ascontiguousarray(data))
            if m.bias is not None:
                b = m.bias.data.float()
                w.write_tensor_data((b[perm] if perm is not None else b).contiguous().numpy())
        w.close()
    requant = sum(v for k, v in kinds.items() if "re-quantized" in k)
    if src.quantized and requant:
        note(f"{requant} of {len(linears)} linear weights were re-quantized from the dequantized "
             f"{src.spec.describe()} weights into {qtype}: the format does not map onto it exactly ({dict(kinds)})")
    return {"out": str(out), "format": "gguf", "type": qtype, "tensors": dict(kinds),
            "tables": {t[3][0][0]: t[2][0] for t in tables},
            "carried_over": sum(v for k, v in kinds.items() if "carried" in k), "linears": len(linears),
            "bytes": out.stat().st_size}
