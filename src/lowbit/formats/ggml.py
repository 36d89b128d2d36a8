"""GGML block types (llama.cpp's Q4_0, Q5_0, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) as lowbit formats.

A block of `qk` weights (32, or a super-block of 256 for the K-quants) is split into sub-blocks of `sub`
weights; every sub-block s decodes as w = step_s * q - offset_s with step_s = d * sc_s and offset_s = dmin * m_s
(d, dmin fp16 per block; sc_s, m_s small integers; q an integer code in lo..hi). Symmetric types have no
offset (dmin = 0). `fit(x, importance)` chooses the block parameters with llama.cpp's importance-weighted
searches (quantize_row_*_impl of ggml-quants.c, which is what its imatrix feeds: the weights are importance *
sqrt(sigma2 + x^2), or the importance itself for Q6_K), `codes` rounds to that grid, `pack` writes the bytes of
ggml-common.h's block structs and `unpack`/`dequantize` read them back. Deviations from llama.cpp: codes are
always re-rounded with the stored fp16 scales, Q4_0/Q5_0 take sigma2 over the block instead of the row, and
Q8_0 ignores importance (as llama.cpp does). importance=None means uniform importance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from lowbit.formats.ggml_search import qkx3_search, qp_search, qx_search

QK_K = 256


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


@dataclass(frozen=True)
class GGMLType:
    """One GGML block type: its geometry, code range, fitter and byte layout."""

    name: str
    ggml_id: int  # GGMLQuantizationType value
    qk: int  # weights per block
    nbytes: int  # bytes per block
    sub: int  # weights per sub-block
    lo: int  # smallest code
    hi: int  # largest code
    fitter: Callable[[torch.Tensor, torch.Tensor], BlockParams]
    packer: Callable[[torch.Tensor, BlockParams], torch.Tensor]
    unpacker: Callable[[torch.Tensor], tuple[torch.Tensor, BlockParams]]

    @property
    def bpw(self) -> float:
        """Bits per weight."""
        return self.nbytes * 8 / self.qk

    def fit(self, x: torch.Tensor, importance: torch.Tensor | None = None) -> BlockParams:
        """Block parameters of x [n, qk] chosen with importance [n, qk] (or [qk], broadcast; None: uniform)."""
        x = x.float().reshape(-1, self.qk)
        imp = torch.ones_like(x) if importance is None else importance.float().expand_as(x)
        return self.fitter(x, imp)

    def codes(self, x: torch.Tensor, p: BlockParams) -> torch.Tensor:
        """Integer codes [n, qk] of x [n, qk] rounded to nearest on the grid of p."""
        x = x.float().reshape(len(p.d), -1, self.sub)
        step, off = p.step().unsqueeze(-1), p.offset().unsqueeze(-1)
        q = torch.where(step != 0, torch.round((x + off) / torch.where(step != 0, step, 1.0)), 0.0)
        return q.clamp(self.lo, self.hi).reshape(len(p.d), self.qk)

    def decode(self, q: torch.Tensor, p: BlockParams) -> torch.Tensor:
        """Weights [n, qk] of codes q under p (exactly as ggml's dequantizer computes them)."""
        q = q.float().reshape(len(p.d), -1, self.sub)
        return (p.step().unsqueeze(-1) * q - p.offset().unsqueeze(-1)).reshape(len(p.d), self.qk)

    def pack(self, q: torch.Tensor, p: BlockParams) -> np.ndarray:
        """The block bytes [n, nbytes] of codes q [n, qk] and parameters p."""
        out = self.packer(q.round().to(torch.int32).reshape(-1, self.qk), p)
        assert out.shape[-1] == self.nbytes
        return out.to(torch.uint8).numpy()

    def unpack(self, data: np.ndarray) -> tuple[torch.Tensor, BlockParams]:
        """Codes [n, qk] and parameters of block bytes (any shape holding whole blocks)."""
        b = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, self.nbytes).copy()).to(torch.int32)
        return self.unpacker(b)

    def dequantize(self, data: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
        """Weights of `shape` decoded from their block bytes."""
        q, p = self.unpack(data)
        return self.decode(q, p).reshape(shape)

    def quantize(self, w: torch.Tensor, importance: torch.Tensor | None = None) -> tuple[np.ndarray, torch.Tensor]:
        """Round to nearest: bytes [out, in/qk * nbytes] of a weight [out, in] and the weight they decode to.

        importance: per input column [in] (llama.cpp's imatrix) or per weight [out, in]."""
        out, inp = w.shape
        if inp % self.qk:
            raise ValueError(f"{self.name} needs rows of a multiple of {self.qk} weights, not {inp}")
        imp = None if importance is None else importance.float().expand(out, inp).reshape(-1, self.qk)
        x = w.float().reshape(-1, self.qk)
        p = self.fit(x, imp)
        q = self.codes(x, p)
        return self.pack(q, p).reshape(out, -1), self.decode(q, p).reshape(out, inp)


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


def _params(d: torch.Tensor, sc: torch.Tensor, dmin: torch.Tensor | None = None,
            m: torch.Tensor | None = None) -> BlockParams:
    """BlockParams with d, dmin rounded to fp16 and float integer scales (no offset when dmin is None)."""
    d = d.to(torch.float16).float()
    dmin = torch.zeros_like(d) if dmin is None else dmin.to(torch.float16).float()
    return BlockParams(d, dmin, sc.float(), torch.zeros_like(sc, dtype=torch.float32) if m is None else m.float())


# ---- fitters: x [n, qk], importance [n, qk] ----

def _weights(x: torch.Tensor, imp: torch.Tensor, sigma_factor: float) -> torch.Tensor:
    """llama.cpp's search weights importance * sqrt(sigma2 + x^2), sigma2 = factor * mean(x^2) per block."""
    sigma2 = sigma_factor * x.pow(2).mean(-1, keepdim=True)
    return imp * torch.sqrt(sigma2 + x * x)


def _fit_one_level(nmax: int) -> Callable[[torch.Tensor, torch.Tensor], BlockParams]:
    """Q4_0 / Q5_0: one signed scale per block of 32 (make_qx_quants)."""
    def fit(x: torch.Tensor, imp: torch.Tensor) -> BlockParams:
        d, _ = qx_search(x, _weights(x, imp, 1.0), nmax)
        return _params(d, torch.ones(len(x), 1))
    return fit


def _fit_q8_0(x: torch.Tensor, imp: torch.Tensor) -> BlockParams:
    """Q8_0: d = max|x| / 127 (llama.cpp ignores importance here)."""
    return _params(x.abs().amax(-1) / 127, torch.ones(len(x), 1))


def _fit_asym(nsub: int, nmax: int, smax: int, sigma_factor: float):
    """Q2_K / Q4_K / Q5_K: make_qkx3_quants per sub-block, then make_qp_quants of the scales and of the mins."""
    def fit(x: torch.Tensor, imp: torch.Tensor) -> BlockParams:
        n = len(x)
        w = _weights(x, imp, sigma_factor).reshape(n * nsub, -1)
        scales, mins = qkx3_search(x.reshape(n * nsub, -1), w, nmax)
        sw = w.sum(-1).reshape(n, nsub)
        d, ls = qp_search(scales.reshape(n, nsub), sw, smax)
        dmin, lm = qp_search(mins.reshape(n, nsub), sw, smax)
        return _params(d, ls.clamp(0, smax), dmin, lm.clamp(0, smax))
    return fit


def _fit_q3_k(x: torch.Tensor, imp: torch.Tensor) -> BlockParams:
    """Q3_K: make_qx_quants(16, 4) per sub-block, then the 16 scales as 6-bit signed integers (make_qx_quants)."""
    n = len(x)
    w = _weights(x, imp, 2.0).reshape(n * 16, 16)
    scales, _ = qx_search(x.reshape(n * 16, 16), w, 4)
    d, ls = qx_search(scales.reshape(n, 16), w.sum(-1).reshape(n, 16), 32)
    return _params(d, ls)


def _fit_q6_k(x: torch.Tensor, imp: torch.Tensor) -> BlockParams:
    """Q6_K: make_qx_quants(16, 32) per sub-block weighted by importance, the scales on an int8 grid."""
    n = len(x)
    scales, _ = qx_search(x.reshape(n * 16, 16), imp.reshape(n * 16, 16), 32)
    scales = scales.reshape(n, 16)
    top = scales.gather(-1, scales.abs().argmax(-1, keepdim=True))
    live = top.abs() >= 1e-15
    iscale = torch.where(live, -128.0 / torch.where(live, top, torch.ones_like(top)), 0.0)
    d = torch.where(live, 1.0 / torch.where(live, iscale, torch.ones_like(iscale)), 0.0).squeeze(-1)
    return _params(d, torch.round(iscale * scales).clamp(-128, 127))


# ---- packers: codes q [n, qk] int32 (signed for symmetric types) ----

def _pack_q4_0(q: torch.Tensor, p: BlockParams) -> torch.Tensor:
    return torch.cat([_fp16_bytes(p.d), _bits(q + 8, 4, 2)], dim=1)


def _unpack_q4_0(b: torch.Tensor) -> tuple[torch.Tensor, BlockParams]:
    return _unbits(b[:, 2:], 4, 2) - 8, _params(_fp16_value(b[:, :2]), torch.ones(len(b), 1))


def _pack_q5_0(q: torch.Tensor, p: BlockParams) -> torch.Tensor:
    u = q + 16
    return torch.cat([_fp16_bytes(p.d), _le_bits(u >> 4), _bits(u & 15, 4, 2)], dim=1)


def _unpack_q5_0(b: torch.Tensor) -> tuple[torch.Tensor, BlockParams]:
    q = _unbits(b[:, 6:], 4, 2) | (_un_le_bits(b[:, 2:6]) << 4)
    return q - 16, _params(_fp16_value(b[:, :2]), torch.ones(len(b), 1))


def _pack_q8_0(q: torch.Tensor, p: BlockParams) -> torch.Tensor:
    return torch.cat([_fp16_bytes(p.d), q & 255], dim=1)


def _unpack_q8_0(b: torch.Tensor) -> tuple[torch.Tensor, BlockParams]:
    return b[:, 2:].to(torch.uint8).view(torch.int8).to(torch.int32), _params(_fp16_value(b[:, :2]),
                                                                              torch.ones(len(b), 1))


def _pack_q2_k(q: torch.Tensor, p: BlockParams) -> torch.Tensor:
    sc, m = p.sc.to(torch.int32), p.m.to(torch.int32)
    return torch.cat([sc | (m << 4), _two_bit(q), _fp16_bytes(p.d), _fp16_bytes(p.dmin)], dim=1)


def _unpack_q2_k(b: torch.Tensor) -> tuple[torch.Tensor, BlockParams]:
    s = b[:, :16]
    return _un_two_bit(b[:, 16:80]), _params(_fp16_value(b[:, 80:82]), s & 15, _fp16_value(b[:, 82:84]), s >> 4)


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
    return q - 4, _params(_fp16_value(b[:, 108:110]), ls - 32)


def _pack_q4_k(q: torch.Tensor, p: BlockParams) -> torch.Tensor:
    nib = torch.cat([_bits(q[:, c * 64:(c + 1) * 64], 4, 2) for c in range(4)], dim=1)
    return torch.cat([_fp16_bytes(p.d), _fp16_bytes(p.dmin), _k4_scales(p.sc.to(torch.int32), p.m.to(torch.int32)),
                      nib], dim=1)


def _unpack_nibbles_k(b: torch.Tensor) -> torch.Tensor:
    """Q4_K/Q5_K low nibbles [n, 128] -> [n, 256]: chunk c of 64 in bytes 32c.., low nibble first."""
    return torch.cat([_unbits(b[:, c * 32:(c + 1) * 32], 4, 2) for c in range(4)], dim=1)


def _unpack_q4_k(b: torch.Tensor) -> tuple[torch.Tensor, BlockParams]:
    sc, m = _k4_unscales(b[:, 4:16])
    return _unpack_nibbles_k(b[:, 16:]), _params(_fp16_value(b[:, :2]), sc, _fp16_value(b[:, 2:4]), m)


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
    return torch.cat(halves, dim=1) - 32, _params(_fp16_value(b[:, 208:210]), sc)


GGML_TYPES: dict[str, GGMLType] = {t.name: t for t in (
    GGMLType("Q4_0", 2, 32, 18, 32, -8, 7, _fit_one_level(8), _pack_q4_0, _unpack_q4_0),
    GGMLType("Q5_0", 6, 32, 22, 32, -16, 15, _fit_one_level(16), _pack_q5_0, _unpack_q5_0),
    GGMLType("Q8_0", 8, 32, 34, 32, -128, 127, _fit_q8_0, _pack_q8_0, _unpack_q8_0),
    GGMLType("Q2_K", 10, QK_K, 84, 16, 0, 3, _fit_asym(16, 3, 15, 1.0), _pack_q2_k, _unpack_q2_k),
    GGMLType("Q3_K", 11, QK_K, 110, 16, -4, 3, _fit_q3_k, _pack_q3_k, _unpack_q3_k),
    GGMLType("Q4_K", 12, QK_K, 144, 32, 0, 15, _fit_asym(8, 15, 63, 2.0), _pack_q4_k, _unpack_q4_k),
    GGMLType("Q5_K", 13, QK_K, 176, 32, 0, 31, _fit_asym(8, 31, 63, 2.0), _pack_q5_k, _unpack_q5_k),
    GGMLType("Q6_K", 14, QK_K, 210, 16, -32, 31, _fit_q6_k, _pack_q6_k, _unpack_q6_k),
)}


def ggml_type(name: str) -> GGMLType:
    """The GGML block type called `name` (ValueError listing the known ones otherwise)."""
    if name not in GGML_TYPES:
        raise ValueError(f"unknown GGML block type {name!r}; known: {', '.join(GGML_TYPES)}")
    return GGML_TYPES[name]
