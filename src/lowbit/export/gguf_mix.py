"""llama.cpp's per-tensor type rules for its file types (llama_tensor_get_type in src/llama-quant.cpp).

For a dense, non-Falcon model with an importance matrix: every quantized tensor starts at the file type's base
type; the output head (and a tied token_embd, which is the head) becomes Q8_0 when its rows are not a multiple
of the base type's block, else Q6_K; attn_v, ffn_down and attn_output get more bits in some mixes (Q4_K_M's
`use_more_bits`: the first and last eighth of the layers and every third one between); then a tensor whose
rows are not a multiple of its type's block falls back (Q2_K/Q3_K -> Q4_0, Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0,
and F16 if even that does not divide).
"""

from __future__ import annotations

import re

from lowbit.errors import LowbitError

# file type -> (base GGML type, llama_ftype id)
FILE_TYPES = {
    "Q4_0": ("Q4_0", 2), "Q4_1": ("Q4_1", 3), "Q8_0": ("Q8_0", 7), "Q5_0": ("Q5_0", 8), "Q5_1": ("Q5_1", 9),
    "Q2_K": ("Q2_K", 10), "Q3_K_S": ("Q3_K", 11), "Q3_K_M": ("Q3_K", 12), "Q3_K_L": ("Q3_K", 13),
    "Q4_K_S": ("Q4_K", 14), "Q4_K_M": ("Q4_K", 15), "Q5_K_S": ("Q5_K", 16), "Q5_K_M": ("Q5_K", 17),
    "Q6_K": ("Q6_K", 18),
}
BLOCK = {"Q4_0": 32, "Q4_1": 32, "Q5_0": 32, "Q5_1": 32, "Q8_0": 32, "Q2_K": 256, "Q3_K": 256, "Q4_K": 256,
         "Q5_K": 256, "Q6_K": 256, "F16": 1, "F32": 1}
FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}


def use_more_bits(i: int, n: int) -> bool:
    """llama.cpp's use_more_bits: layer i of n is in the first or last eighth, or every third between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def file_type(name: str) -> tuple[str, int]:
    """Base GGML type and llama_ftype id of a file type name (one-line error listing the known ones)."""
    if name not in FILE_TYPES:
        raise LowbitError(f"unknown GGUF file type {name!r}; choose one of {', '.join(FILE_TYPES)}")
    return FILE_TYPES[name]


def _rule(ftype: str, base: str, role: str, i: int, n: int, n_gqa: int, imatrix: bool) -> str:
    """The type llama_tensor_get_type_impl picks before the shape fallback (role: attn_v, ffn_down, ...)."""
    if role == "attn_v":
        return {"Q2_K": "Q4_K" if n_gqa >= 4 else "Q3_K", "Q3_K_M": "Q5_K" if i < 2 else "Q4_K",
                "Q3_K_L": "Q5_K", "Q4_K_M": "Q6_K" if use_more_bits(i, n) else base,
                "Q5_K_M": "Q6_K" if use_more_bits(i, n) else base,
                "Q4_K_S": "Q5_K" if i < 4 else base}.get(ftype, base)
    if role == "ffn_down":
        return {"Q2_K": "Q3_K", "Q3_K_M": "Q5_K" if i < n // 16 else "Q4_K", "Q3_K_L": "Q5_K",
                "Q4_K_M": "Q6_K" if use_more_bits(i, n) else base, "Q5_K_M": "Q6_K" if use_more_bits(i, n) else base,
                "Q4_K_S": "Q5_K" if i < n // 8 else base,
                "Q4_0": "Q4_1" if imatrix and i < n // 8 else base,
                "Q5_0": "Q5_1" if imatrix and i < n // 8 else base}.get(ftype, base)
    if role == "attn_output":
        return {"Q2_K": "Q3_K", "Q3_K_M": "Q4_K", "Q3_K_L": "Q5_K"}.get(ftype, base)
    return base


def fallback(kind: str, cols: int) -> str:
    """llama.cpp's tensor_type_fallback: the type used when rows of `cols` are not a multiple of kind's block."""
    if cols % BLOCK[kind] == 0:
        return kind
    kind = FALLBACK.get(kind, kind)
    return kind if cols % BLOCK[kind] == 0 else "F16"


def llama_types(ftype: str, tensors: dict[str, int], n_layers: int, n_gqa: int, tied: bool,
                imatrix: bool = True) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
    """GGML type of every quantized tensor of a `ftype` file, as llama-quantize picks it.

    tensors: GGUF tensor name (token_embd.weight, output.weight, blk.N.attn_q.weight, ...) -> row width. Returns
    the types and the fallbacks taken (name -> (wanted, used)).
    """
    base, _ = file_type(ftype)
    types: dict[str, str] = {}
    fell: dict[str, tuple[str, str]] = {}
    for name, cols in tensors.items():
        if name == "output.weight" or (tied and name == "token_embd.weight"):
            kind = "Q8_0" if cols % BLOCK[base] else base if base == "Q8_0" else "Q6_K"
        elif name == "token_embd.weight":
            kind = base
        else:
            m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.weight", name)
            if m is None:
                raise LowbitError(f"tensor {name} has no llama.cpp type rule")
            kind = _rule(ftype, base, m.group(2), int(m.group(1)), n_layers, n_gqa, imatrix)
        used = fallback(kind, cols)
        if used != kind:
            fell[name] = (kind, used)
        types[name] = used
    return types, fell
