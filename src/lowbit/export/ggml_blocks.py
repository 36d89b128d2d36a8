"""ggml's block formats Q4_0, Q8_0 and Q4_K as bytes (the layouts of llama.cpp's ggml-common.h).

Q4_0 and Q8_0 hold blocks of 32 weights w = x * d with one fp16 d per block and x a signed integer
(-8..7 stored as x + 8 in nibbles, element l in the low nibble of byte l and element l + 16 in its high
nibble; or -128..127 as int8). When lowbit's groups are a multiple of 32 (or per channel) and every
code - zero fits that range, a block is our codes and fp16 scale as they are: `int_blocks` builds them
without re-quantizing. Q4_K and Q6_K (which the gguf package reads but does not write) are fitted and packed by
lowbit.formats.ggml, the registry of every GGML block type; `quantize_q4_k` / `quantize_q6_k` are its
round-to-nearest with uniform importance.
"""

from __future__ import annotations

import numpy as np
import torch

from lowbit.formats.ggml import GGML_TYPES

QK = 32  # weights per Q4_0 / Q8_0 block and per Q4_K sub-block
QK_K = 256  # weights per Q4_K super-block
INT_RANGE = {"Q4_0": (-8, 7), "Q8_0": (-128, 127)}


def _fp16_bytes(d: torch.Tensor) -> np.ndarray:
    """fp16 values [..., k] as their little-endian bytes [..., 2k]."""
    a = d.to(torch.float16).contiguous().numpy()
    return a.view(np.uint8).reshape(*a.shape[:-1], -1)


def int_blocks(x: torch.Tensor, d: torch.Tensor, qtype: str) -> np.ndarray:
    """Q4_0 / Q8_0 bytes [out, in/32 * block_bytes] from signed integers x [out, in] and fp16 d [out, in/32]."""
    lo, hi = INT_RANGE[qtype]
    if int(x.min()) < lo or int(x.max()) > hi:
        raise ValueError(f"integers outside {qtype}'s range {lo}..{hi}")
    out, inp = x.shape
    nb = inp // QK
    db = _fp16_bytes(d).reshape(out, nb, 2)
    if qtype == "Q8_0":
        qs = x.to(torch.int8).reshape(out, nb, QK).numpy().view(np.uint8)
    else:
        u = (x + 8).to(torch.uint8).reshape(out, nb, 2, QK // 2)
        qs = (u[:, :, 0] | (u[:, :, 1] << 4)).numpy()
    return np.ascontiguousarray(np.concatenate([db, qs], axis=-1).reshape(out, -1))


def quantize_q4_k(w: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
    """Q4_K bytes [out, in/256 * 144] of a float weight [out, in] (in % 256 == 0), and the weight they decode to."""
    return GGML_TYPES["Q4_K"].quantize(w)


def dequantize_q4_k(data: np.ndarray, shape: tuple[int, int]) -> torch.Tensor:
    """Reference decoder of Q4_K bytes (for checking the packer independently of the gguf package)."""
    return GGML_TYPES["Q4_K"].dequantize(data, shape)


def quantize_q6_k(w: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
    """Q6_K bytes [out, in/256 * 210] of a float weight [out, in] (in % 256 == 0), and the weight they decode to."""
    return GGML_TYPES["Q6_K"].quantize(w)
