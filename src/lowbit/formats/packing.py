"""Exact bit packing of unsigned codes (1-8 bits) along the last dimension, LSB first.

Every group of 8 codes becomes `bits` bytes: code i of the group occupies bits [i*b, (i+1)*b) of a
little-endian bit stream. For b in {1, 2, 4, 8} this is the same as packing 8/b codes per byte; for
b = 3 eight codes fill three bytes. Viewed as little-endian int32 words (`word="int32"`), the layout is the
one used by compressed-tensors' pack-quantized format and GPTQ checkpoints (code i of a word at bit i*b).
"""

from __future__ import annotations

import torch


def packed_numel(n: int, bits: int, word: str = "uint8") -> int:
    """Number of words that hold n codes of `bits` bits."""
    nbytes = (n + 7) // 8 * bits
    return nbytes if word == "uint8" else (nbytes + 3) // 4


def pack(codes: torch.Tensor, bits: int, word: str = "uint8") -> torch.Tensor:
    """Pack unsigned codes [..., n] into uint8 [..., ceil(n/8)*bits] (or int32 words)."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    if word not in ("uint8", "int32"):
        raise ValueError(f"word must be 'uint8' or 'int32', got {word!r}")
    if codes.numel() and int(codes.max()) >= (1 << bits):
        raise ValueError(f"codes exceed {bits} bits (max {int(codes.max())})")
    *lead, n = codes.shape
    pad = (-n) % 8
    if bits in (1, 2, 4, 8):  # whole codes per byte: byte-wide arithmetic, no int64 temporaries
        per = 8 // bits
        c = torch.nn.functional.pad(codes.to(torch.uint8), (0, pad)).reshape(*lead, -1, per)
        out = c[..., 0].clone()
        for j in range(1, per):
            out |= c[..., j] << (j * bits)
    else:
        c = torch.nn.functional.pad(codes.to(torch.int64), (0, pad)).reshape(*lead, -1, 8)
        shifts = torch.arange(8, dtype=torch.int64) * bits
        stream = (c << shifts).sum(-1, keepdim=True)  # < 2^56, fits int64
        byte_shifts = torch.arange(bits, dtype=torch.int64) * 8
        out = ((stream >> byte_shifts) & 0xFF).to(torch.uint8)
    out = out.reshape(*lead, -1)
    if word == "int32":
        out = torch.nn.functional.pad(out, (0, (-out.shape[-1]) % 4)).contiguous().view(torch.int32)
    return out


def unpack(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of `pack`: uint8 (or int32) words [..., m] back to n uint8 codes [..., n]."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    p = packed.contiguous().view(torch.uint8) if packed.dtype == torch.int32 else packed
    *lead, m = p.shape
    need = (n + 7) // 8 * bits
    if m < need:
        raise ValueError(f"packed tensor has {m} bytes per row, {need} needed for {n} codes of {bits} bits")
    p = p[..., :need]
    if bits == 8:
        return p[..., :n].clone()
    if bits in (1, 2, 4):
        per = 8 // bits
        shifts = torch.arange(per, dtype=torch.uint8) * bits
        codes = (p.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
        return codes.reshape(*lead, -1)[..., :n].contiguous()
    b = p.to(torch.int64).reshape(*lead, -1, bits)
    stream = (b << (torch.arange(bits, dtype=torch.int64) * 8)).sum(-1, keepdim=True)
    codes = (stream >> (torch.arange(8, dtype=torch.int64) * bits)) & ((1 << bits) - 1)
    return codes.to(torch.uint8).reshape(*lead, -1)[..., :n]
