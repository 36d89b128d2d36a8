"""GGML block types (llama.cpp's Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K,
Q6_K) as lowbit formats.

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

from lowbit.formats.ggml_pack import LAYOUTS, BlockParams, params
from lowbit.formats.ggml_search import qkx3_search, qp_search, qx_search

QK_K = 256


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


# ---- fitters: x [n, qk], importance [n, qk] ----

def _weights(x: torch.Tensor, imp: torch.Tensor, sigma_factor: float) -> torch.Tensor:
    """llama.cpp's search weights importance * sqrt(sigma2 + x^2), sigma2 = factor * mean(x^2) per block."""
    sigma2 = sigma_factor * x.pow(2).mean(-1, keepdim=True)
    return imp * torch.sqrt(sigma2 + x * x)


def _fit_one_level(nmax: int) -> Callable[[torch.Tensor, torch.Tensor], BlockParams]:
    """Q4_0 / Q5_0: one signed scale per block of 32 (make_qx_quants)."""
    def fit(x: torch.Tensor, imp: torch.Tensor) -> BlockParams:
        d, _ = qx_search(x, _weights(x, imp, 1.0), nmax)
        return params(d, torch.ones(len(x), 1))
    return fit


def _fit_one_level_asym(nmax: int) -> Callable[[torch.Tensor, torch.Tensor], BlockParams]:
    """Q4_1 / Q5_1: a scale and a min per block of 32 (make_qkx3_quants)."""
    def fit(x: torch.Tensor, imp: torch.Tensor) -> BlockParams:
        d, the_min = qkx3_search(x, _weights(x, imp, 1.0), nmax)
        one = torch.ones(len(x), 1)
        return params(d, one, the_min, one)
    return fit


def _fit_q8_0(x: torch.Tensor, imp: torch.Tensor) -> BlockParams:
    """Q8_0: d = max|x| / 127 (llama.cpp ignores importance here)."""
    return params(x.abs().amax(-1) / 127, torch.ones(len(x), 1))


def _fit_asym(nsub: int, nmax: int, smax: int, sigma_factor: float):
    """Q2_K / Q4_K / Q5_K: make_qkx3_quants per sub-block, then make_qp_quants of the scales and of the mins."""
    def fit(x: torch.Tensor, imp: torch.Tensor) -> BlockParams:
        n = len(x)
        w = _weights(x, imp, sigma_factor).reshape(n * nsub, -1)
        scales, mins = qkx3_search(x.reshape(n * nsub, -1), w, nmax)
        sw = w.sum(-1).reshape(n, nsub)
        d, ls = qp_search(scales.reshape(n, nsub), sw, smax)
        dmin, lm = qp_search(mins.reshape(n, nsub), sw, smax)
        return params(d, ls.clamp(0, smax), dmin, lm.clamp(0, smax))
    return fit


def _fit_q3_k(x: torch.Tensor, imp: torch.Tensor) -> BlockParams:
    """Q3_K: make_qx_quants(16, 4) per sub-block, then the 16 scales as 6-bit signed integers (make_qx_quants)."""
    n = len(x)
    w = _weights(x, imp, 2.0).reshape(n * 16, 16)
    scales, _ = qx_search(x.reshape(n * 16, 16), w, 4)
    d, ls = qx_search(scales.reshape(n, 16), w.sum(-1).reshape(n, 16), 32)
    return params(d, ls)


def _fit_q6_k(x: torch.Tensor, imp: torch.Tensor) -> BlockParams:
    """Q6_K: make_qx_quants(16, 32) per sub-block weighted by importance, the scales on an int8 grid."""
    n = len(x)
    scales, _ = qx_search(x.reshape(n * 16, 16), imp.reshape(n * 16, 16), 32)
    scales = scales.reshape(n, 16)
    top = scales.gather(-1, scales.abs().argmax(-1, keepdim=True))
    live = top.abs() >= 1e-15
    iscale = torch.where(live, -128.0 / torch.where(live, top, torch.ones_like(top)), 0.0)
    d = torch.where(live, 1.0 / torch.where(live, iscale, torch.ones_like(iscale)), 0.0).squeeze(-1)
    return params(d, torch.round(iscale * scales).clamp(-128, 127))


GGML_TYPES: dict[str, GGMLType] = {t.name: t for t in (
    GGMLType("Q4_0", 2, 32, 18, 32, -8, 7, _fit_one_level(8), *LAYOUTS["Q4_0"]),
    GGMLType("Q4_1", 3, 32, 20, 32, 0, 15, _fit_one_level_asym(15), *LAYOUTS["Q4_1"]),
    GGMLType("Q5_0", 6, 32, 22, 32, -16, 15, _fit_one_level(16), *LAYOUTS["Q5_0"]),
    GGMLType("Q5_1", 7, 32, 24, 32, 0, 31, _fit_one_level_asym(31), *LAYOUTS["Q5_1"]),
    GGMLType("Q8_0", 8, 32, 34, 32, -128, 127, _fit_q8_0, *LAYOUTS["Q8_0"]),
    GGMLType("Q2_K", 10, QK_K, 84, 16, 0, 3, _fit_asym(16, 3, 15, 1.0), *LAYOUTS["Q2_K"]),
    GGMLType("Q3_K", 11, QK_K, 110, 16, -4, 3, _fit_q3_k, *LAYOUTS["Q3_K"]),
    GGMLType("Q4_K", 12, QK_K, 144, 32, 0, 15, _fit_asym(8, 15, 63, 2.0), *LAYOUTS["Q4_K"]),
    GGMLType("Q5_K", 13, QK_K, 176, 32, 0, 31, _fit_asym(8, 31, 63, 2.0), *LAYOUTS["Q5_K"]),
    GGMLType("Q6_K", 14, QK_K, 210, 16, -32, 31, _fit_q6_k, *LAYOUTS["Q6_K"]),
)}


def ggml_type(name: str) -> GGMLType:
    """The GGML block type called `name` (ValueError listing the known ones otherwise)."""
    if name not in GGML_TYPES:
        raise ValueError(f"unknown GGML block type {name!r}; known: {', '.join(GGML_TYPES)}")
    return GGML_TYPES[name]
