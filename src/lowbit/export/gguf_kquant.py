"""A GGUF file from a float Llama model with an explicit GGML type per tensor (K-quants and the rest).

`write_gguf(model, src_dir, out, types, blocks)` writes the llama architecture as llama.cpp's converter does
(hyper-parameters, tensor names, q/k rows permuted to the interleaved rope layout, norms F32, a tied head left
out so that llama.cpp reads token_embd), a BPE tokenizer from tokenizer.json (tokens, types, merges and special
ids through the gguf package's SpecialVocab; tokenizer.ggml.pre as the converter sets it, e.g. "smollm"), and
each tensor of `types` in its GGML type: the bytes in `blocks` when given (e.g. from GPTQ in the grid), else
rounded to nearest by lowbit.formats.ggml with an optional importance per input column.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lowbit.errors import LowbitError
from lowbit.export.gguf_writer import gguf_name, hparams, rope_permutation, write_hparams
from lowbit.files import atomic_output
from lowbit.formats.ggml import ggml_type
from lowbit.models.families.llama import LLAMA_GGUF

# tokenizer.ggml.pre of llama.cpp's converter for BPE tokenizers it knows, by a name found in the source
PRE = {"smollm": "smollm"}


def tokenizer_pre(src_dir: Path, cfg: dict) -> str:
    """tokenizer.ggml.pre for a BPE tokenizer: the converter's name for known models, else 'default'."""
    where = f"{src_dir} {cfg.get('_name_or_path', '')} {cfg.get('_model_name_or_path', '')}".lower()
    return next((pre for key, pre in PRE.items() if key in where), "default")


def bpe_vocab(src_dir: Path, vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens and token types of a Hugging Face BPE tokenizer (tokenizer.json), padded to the embedding rows."""
    from gguf import TokenType
    from transformers import AutoTokenizer

    if not (src_dir / "tokenizer.json").is_file():
        raise LowbitError(f"{src_dir} has no tokenizer.json; the K-quant GGUF export needs a BPE tokenizer")
    spec = json.loads((src_dir / "tokenizer.json").read_text())
    if "ByteLevel" not in json.dumps(spec.get("pre_tokenizer")):
        raise LowbitError(f"{src_dir}/tokenizer.json is not a byte-level BPE tokenizer (GPT-2 style, as SmolLM2's); "
                          "the K-quant GGUF export writes only those so far")
    tok = AutoTokenizer.from_pretrained(str(src_dir))
    reverse = {i: t for t, i in tok.get_vocab().items()}
    added = tok.get_added_vocab()
    decoder = getattr(tok, "added_tokens_decoder", {})
    if len(reverse) > vocab_size:
        raise LowbitError(f"the tokenizer has {len(reverse)} tokens but the model only {vocab_size} embeddings")
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
        elif reverse[i] in added:
            tokens.append(reverse[i])
            special = i in decoder and decoder[i].special
            types.append(TokenType.CONTROL if special else TokenType.USER_DEFINED)
        else:
            tokens.append(reverse[i])
            types.append(TokenType.NORMAL)
    return tokens, types


def check_architecture(cfg: dict, src: Path) -> None:
    """One-line error unless `cfg` (a config.json) is a llama-architecture model, the one write_gguf writes."""
    if cfg.get("model_type") not in ("llama", "mistral"):
        raise LowbitError(f"the K-quant GGUF export (--gguf) supports llama-architecture models; {src} is "
                          f"{cfg.get('model_type')}")


def _tensor(w: torch.Tensor, kind: str, data: np.ndarray | None, importance: torch.Tensor | None) -> np.ndarray:
    """GGUF data of a 2-D weight as `kind` (given bytes, or rounded to nearest here)."""
    if kind == "F32":
        return w.float().contiguous().numpy()
    if kind == "F16":
        return w.to(torch.float16).contiguous().numpy()
    if data is not None:
        return data
    try:
        return ggml_type(kind).quantize(w.float(), importance)[0]
    except ValueError as e:
        raise LowbitError(str(e)) from e


def write_gguf(model: nn.Module, src_dir: str | Path, out: str | Path, types: dict[str, str],
               blocks: dict[str, np.ndarray] | None = None, importance: dict[str, torch.Tensor] | None = None,
               file_type: int = 15) -> dict:
    """Write a Llama model as GGUF with `types[module]` (HF module name -> GGML type, F16 or F32) per weight.

    blocks: ready GGML bytes [out, in/qk * nbytes] per module name (HF row order); importance: per input
    column, for the modules rounded here. Modules not in `types` keep F32 (norms) or F16 (other 2-D weights).
    Returns the file's bytes, tensor bytes and tensor count per type.
    """
    import gguf

    src_dir, out = Path(src_dir), Path(out)
    cfg = json.loads((src_dir / "config.json").read_text())
    check_architecture(cfg, src_dir)
    hp = hparams(cfg)
    blocks, importance = blocks or {}, importance or {}
    tied = bool(cfg.get("tie_word_embeddings", False))
    state = {k: v for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}
    unknown = sorted(set(types) - {k[:-len(".weight")] for k in state if k.endswith(".weight")})
    if unknown:
        more = " ..." if len(unknown) > 3 else ""
        raise LowbitError(f"no weight for the typed modules {', '.join(unknown[:3])}{more}")
    tokens, token_types = bpe_vocab(src_dir, hp["vocab"])
    kinds: Counter = Counter()
    nbytes = 0
    with atomic_output(out) as tmp:
        w = gguf.GGUFWriter(str(tmp), LLAMA_GGUF.arch)
        write_hparams(w, src_dir.name, hp, file_type)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(tokenizer_pre(src_dir, cfg))
        w.add_token_list(tokens)
        w.add_token_types(token_types)
        special = gguf.SpecialVocab(src_dir, load_merges=True, n_vocab=len(tokens))
        special.add_to_gguf(w, quiet=True)
        if "bos" not in special.add_special_token:  # the converter writes the default explicitly
            w.add_add_bos_token(False)
        for name, t in state.items():
            gname = gguf_name(name, LLAMA_GGUF)
            module = name[:-len(".weight")] if name.endswith(".weight") else name
            kind = types.get(module, "F32" if t.dim() == 1 else "F16")
            data = _tensor(t, kind, blocks.get(module), importance.get(module))
            heads = (hp["n_head"] if gname.endswith(".attn_q.weight") else hp["n_kv"] if gname.endswith(
                ".attn_k.weight") else None)
            if heads:
                data = data[rope_permutation(t.shape[0], heads).numpy()]
            raw = None if kind in ("F16", "F32") else getattr(gguf.GGMLQuantizationType, kind)
            w.add_tensor(gname, np.ascontiguousarray(data), raw_dtype=raw)
            kinds[kind] += 1
            nbytes += data.nbytes
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return {"out": str(out), "bytes": out.stat().st_size, "tensor_bytes": nbytes, "types": dict(kinds)}
