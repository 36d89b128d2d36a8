"""Byte layouts of GGML's block types (ggml-common.h's block_q4_0 ... block_q6_K): pack codes and block parameters
into bytes and read them back, as torch int32 arrays (one row per block)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class BlockParams:
    """Parameters of n blocks: fp16-valued d, dmin [n] and integer sub-block scales sc, mins m [n, nsub]."""

    d: torch.Tensor
    dmin: torch.Tensor
    sc: torch.Tensor
    m: torch.Tensor

    def step(self) -> torch.Tensor:
        """Step of every sub-block [n, nsub] (d * sc, in float32 as ggml computes it)."""
        return self.d[:, None] * self.sc

    def offset(self) -> torch.Tensor:
        """Offset of every sub-block [n, nsub] (dmin * m)."""
        return self.dmin[:, None] * self.m


# ---- byte helpers (torch int32 in, int32 bytes out) ----

def _fp16_bytes(v: torch.Tensor) -> torch.Tensor:
    """fp16 little-endian bytes [n, 2] of v [n]."""
    return v.to(torch.float16).contiguous().view(torch.uint8).reshape(-1, 2).to(torch.int32)


def _fp16_value(b: torch.Tensor) -> torch.Tensor:
    """Float32 values [n] of fp16 bytes [n, 2]."""
    return b.to(torch.uint8).contiguous().view(torch.float16).float().reshape(-1)


def _bits(q: torch.Tensor, width: int, groups: int) -> torch.Tensor:
    """Pack q [n, groups * L] (values < 2**width) so byte l holds element k*L + l at bit k*width."""
    q = q.reshape(len(q), groups, -1)
    return sum((q[:, k] & ((1 << width) - 1)) << (k * width) for k in range(groups))


def _unbits(b: torch.Tensor, width: int, groups: int) -> torch.Tensor:
    """Inverse of `_bits`: [n, L] bytes -> [n, groups * L] values."""
    return torch.cat([(b >> (k * width)) & ((1 << width) - 1) for k in range(groups)], dim=1)


def _le_bits(q: torch.Tensor) -> torch.Tensor:
    """Bits q [n, 8L] as a little-endian bit string [n, L] (element 8b + t in byte b at bit t: Q5_0's qh)."""
    q = q.reshape(len(q), -1, 8)
    return sum(q[:, :, t] << t for t in range(8))


def _un_le_bits(b: torch.Tensor) -> torch.Tensor:
    """Inverse of `_le_bits`."""
    return torch.stack([(b >> t) & 1 for t in range(8)], dim=-1).reshape(len(b), -1)


def _two_bit(q: torch.Tensor) -> torch.Tensor:
    """Q2_K/Q3_K low bits: element 128h + 32k + l in byte 32h + l at bit 2k."""
    return torch.cat([_bits(q[:, h * 128:(h + 1) * 128], 2, 4) for h in range(2)], dim=1)


def _un_two_bit(b: torch.Tensor) -> torch.Tensor:
    """Inverse of `_two_bit`."""
    return torch.cat([_unbits(b[:, h * 32:(h + 1) * 32], 2, 4) for h in range(2)], dim=1)


def _k4_scales(sc: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """12 bytes of eight 6-bit scales and mins (Q4_K/Q5_K's get_scale_min_k4 layout)."""
    return torch.cat([sc[:, :4] | ((sc[:, 4:] >> 4) << 6), m[:, :4] | ((m[:, 4:] >> 4) << 6),
                      (sc[:, 4:] & 15) | ((m[:, 4:] & 15) << 4)], dim=1)


def _k4_unscales(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of `_k4_scales`."""
    sc = torch.cat([s[:, 0:4] & 63, (s[:, 8:12] & 15) | ((s[:, 0:4] >> 6) << 4)], dim=1)
    m = torch.cat([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], dim=1)
    return sc, m


def params(d: torch.Tensor, sc: torch.Tensor, dmin: torch.Tensor | None = None,
            m: torch.Tensor | None = None) -> BlockParams:
    """BlockParams with d, dmin rounded to fp16 and float integer scales (no offset when dmin is None)."""
    d = d.to(torch.float16).float()
    dmin = torch.zeros_like(d) if dmin is None else dmin.to(torch.float16).float()
    return BlockParams(d, dmin, sc.float(), torch.zeros_like(sc, dtype=torch.float32) if m is None else m.float())


# ---- packers: codes q [n, qk] int32 (signed for symmetric types) ----

def _pack_q4_0(q: torch.Tensor, p: BlockParams) -> torch.Tensor:
    return torch.cat([_fp16_bytes(p.d), _bits(q + 8, 4, 2)], dim=1)


def _unpack_q4_0(b: torch.Tensor) -> tuple[torch.Tensor, BlockParams]:
    return _unbits(b[:, 2:], 4, 2) - 8, params(_fp16_value(b[:, :2]), torch.ones(len(b), 1))


def _pack_q5_0(q: torch.Tensor, p: BlockParams) -> torch.Tensor:
    u = q + 16
    return torch.cat([_fp16_bytes(p.d), _le_bits(u >> 4), _bits(u & 15, 4, 2)], dim=1)


def _unpack_q5_0(b: torch.Tensor) -> tuple[torch.Tensor, BlockParams]:
    q = _unbits(b[:, 6:], 4, 2) | (_un_le_bits(b[:, 2:6]) << 4)
    return q - 16, params(_fp16_value(b[:, :2]), torch.ones(len(b), 1))


def _pack_q8_0(q: torch.Tensor, p: BlockParams) -> torch.Tensor:
    return torch.cat([_fp16_bytes(p.d), q & 255], dim=1)


def _unpack_q8_0(b: torch.Tensor) -> tuple[torch.Tensor, BlockParams]:
    return b[:, 2:].to(torch.uint8).view(torch.int8).to(torch.int32), params(_fp16_value(b[:, :2]),
                                                                              torch.ones(len(b), 1))


def _pack_q2_k(q: torch.Tensor, p: BlockParams) -> torch.Tensor:
    sc, m = p.sc.to(torch.int32), p.m.to(torch.int32)
    return torch.cat([sc | (m << 4), _two_bit(q), _fp16_bytes(p.d), _fp16_bytes(p.dmin)], dim=1)


def _unpack_q2_k(b: torch.Tensor) -> tuple[torch.Tensor, BlockParams]:
    s = b[:, :16]
    return _un_two_bit(b[:, 16:80]), params(_fp16_value(b[:, 80:82]), s & 15, _fp16_value(b[:, 82:84]), s >> 4)


def _pack_q3_k(q: torch.Tensor, p: BlockParams) -> torch.Tensor:
    u = q + 4
    ls = p.sc.to(torch.int32) + 32
    scales = torch.cat([(ls[:, :8] & 15) | ((ls[:, 8:] & 15) << 4), _bits(ls >> 4, 2, 4)], dim=1)
    return torch.cat([_bits(u >> 2, 1, 8), _two_bit(u & 3), scales, _fp16_bytes(p.d)], dim=1)


def _unpack_q3_k(b: torch.Tensor) -> tuple[torch.Tensor, BlockParams]:
    s = b[:, 96:108]
    low = torch.cat([s[:, :8] & 15, s[:, :8] >> 4], dim=1)
    ls = low | (_unbits(s[:, 8:12], 2, 4) << 4)
    q = _un_two_bit(b[:, 32:96]) | (_unbits(b[:, :32], 1, 8) << 2)
    return q - 4, params(_fp16_value(b[:, 108:110]), ls - 32)


def _pack_q4_k(q: torch.Tensor, p: BlockParams) -> torch.Tensor:
    nib = torch.cat([_bits(q[:, c * 64:(c + 1) * 64], 4, 2) for c in range(4)], dim=1)
    return torch.cat([_fp16_bytes(p.d), _fp16_bytes(p.dmin), _k4_scales(p.sc.to(torch.int32), p.m.to(torch.int32)),
                      nib], dim=1)


def _unpack_nibbles_k(b: torch.Tensor) -> torch.Tensor:
    """Q4_K/Q5_K low nibbles [n, 128] -> [n, 256]: chunk c of 64 in bytes 32c.., low nibble first."""
    return torch.cat([_unbits(b[:, c * 32:(c + 1) * 32], 4, 2) for c in range(4)], dim=1)


def _unpack_q4_k(b: torch.Tensor) -> tuple[torch.Tensor, BlockParams]:
    sc, m = _k4_unscales(b[:, 4:16])
    return _unpack_nibbles_k(b[:, 16:]), params(_fp16_value(b[:, :2]), sc, _fp16_value(b[:, 2:4]), m)


def _pack_q5_k(q: torch.Tensor, p: BlockParams) -> torch.Tensor:
    low = _pack_q4_k(q & 15, p)
    return torch.cat([low[:, :16], _bits(q >> 4, 1, 8), low[:, 16:]], dim=1)


def _unpack_q5_k(b: torch.Tensor) -> tuple[torch.Tensor, BlockParams]:
    low, p = _unpack_q4_k(torch.cat([b[:, :16], b[:, 48:]], dim=1))
    return low | (_unbits(b[:, 16:48], 1, 8) << 4), p


def _pack_q6_k(q: torch.Tensor, p: BlockParams) -> torch.Tensor:
    u = (q + 32).reshape(len(q), 2, 128)
    ql = torch.cat([_bits(u[:, h] & 15, 4, 2) for h in range(2)], dim=1)
    qh = torch.cat([_bits(u[:, h] >> 4, 2, 4) for h in range(2)], dim=1)
    return torch.cat([ql, qh, p.sc.to(torch.int32) & 255, _fp16_bytes(p.d)], dim=1)


def _unpack_q6_k(b: torch.Tensor) -> tuple[torch.Tensor, BlockParams]:
    halves = []
    for h in range(2):
        nib = _unbits(b[:, 64 * h:64 * (h + 1)], 4, 2)
        halves.append(nib | (_unbits(b[:, 128 + 32 * h:128 + 32 * (h + 1)], 2, 4) << 4))
    sc = b[:, 192:208].to(torch.uint8).view(torch.int8).to(torch.int32)
    return torch.cat(halves, dim=1) - 32, params(_fp16_value(b[:, 208:210]), sc)


def _pack_q4_1(q: torch.Tensor, p: BlockParams) -> torch.Tensor:
    return torch.cat([_fp16_bytes(p.d), _fp16_bytes(-p.dmin), _bits(q, 4, 2)], dim=1)  # stored m = -offset


def _unpack_q4_1(b: torch.Tensor) -> tuple[torch.Tensor, BlockParams]:
    one = torch.ones(len(b), 1)
    return _unbits(b[:, 4:], 4, 2), params(_fp16_value(b[:, :2]), one, -_fp16_value(b[:, 2:4]), one)


def _pack_q5_1(q: torch.Tensor, p: BlockParams) -> torch.Tensor:
    return torch.cat([_fp16_bytes(p.d), _fp16_bytes(-p.dmin), _le_bits(q >> 4), _bits(q & 15, 4, 2)], dim=1)


def _unpack_q5_1(b: torch.Tensor) -> tuple[torch.Tensor, BlockParams]:
    one = torch.ones(len(b), 1)
    q = _unbits(b[:, 8:], 4, 2) | (_un_le_bits(b[:, 4:8]) << 4)
    return q, params(_fp16_value(b[:, :2]), one, -_fp16_value(b[:, 2:4]), one)


LAYOUTS = {name: (globals()[f"_pack_{name.lower()}"], globals()[f"_unpack_{name.lower()}"])
           for name in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")}
