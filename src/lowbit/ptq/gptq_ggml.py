"""GPTQ inside a GGML block type: llama.cpp's K-quant (and Q4_0/Q5_0/Q8_0) grids fitted with activation importance,
codes chosen by GPTQ's error-compensating sweep.

A row's block (a super-block of 256 columns for the K-quants) is a GPTQ group: when the sweep reaches its first
column, the block's parameters (fp16 d/dmin, integer sub-block scales and mins) are fitted by the type's
importance-weighted search (lowbit.formats.ggml, llama.cpp's imatrix searches) on the error-updated weights with
importance diag(H) (llama.cpp's imatrix is the mean of x^2 per column: diag(H) / 2, the same up to scale); each
column is then rounded on that grid and its error spread over the columns not yet quantized.
"""

from __future__ import annotations

import numpy as np
import torch

from lowbit.errors import LowbitError
from lowbit.formats.ggml import BlockParams, GGMLType, ggml_type
from lowbit.ptq.gptq import gptq_sweep


class GGMLGrid:
    """A GGML block type as a GPTQ grid (one group per block of `qk` columns of every row)."""

    def __init__(self, t: GGMLType, out: int, cols: int) -> None:
        if cols % t.qk:
            raise LowbitError(f"{t.name} needs rows of a multiple of {t.qk} weights; this layer has {cols}")
        self.t, self.out = t, out
        self.params: list[BlockParams | None] = [None] * (cols // t.qk)

    def group_len(self, cols: int) -> int:
        """Weights per block."""
        return self.t.qk

    def fit(self, g: int, cur: torch.Tensor, h: torch.Tensor) -> None:
        """Block parameters of column block g (one block per row) from the current weights and importance h."""
        self.params[g] = self.t.fit(cur, h.reshape(1, -1).expand(self.out, -1))

    def round(self, w: torch.Tensor, g: int, j: int) -> torch.Tensor:
        """Column j of block g rounded to nearest on its sub-block's step and offset."""
        p = self.params[g]
        s = j // self.t.sub
        step, off = p.d * p.sc[:, s], p.dmin * p.m[:, s]
        q = torch.where(step != 0, torch.round((w + off) / torch.where(step != 0, step, 1.0)), 0.0)
        return step * q.clamp(self.t.lo, self.t.hi) - off

    def blocks(self, Q: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
        """Bytes [out, blocks * nbytes] of the rounded weight Q [out, in] and the weight they decode to."""
        t = self.t

        def cat(field: str) -> torch.Tensor:  # [out, blocks, ...] -> block-major rows, as the bytes are laid out
            v = torch.stack([getattr(b, field) for b in self.params], dim=1)
            return v.reshape(self.out * len(self.params), *v.shape[2:])

        p = BlockParams(cat("d"), cat("dmin"), cat("sc"), cat("m"))
        x = Q.reshape(-1, t.qk)
        q = t.codes(x, p)
        return t.pack(q, p).reshape(self.out, -1), t.decode(q, p).reshape(Q.shape)


def gptq_ggml(W: torch.Tensor, H: torch.Tensor, qtype: str, damp: float = 0.01, act_order: bool = True,
              block_size: int = 128) -> tuple[np.ndarray, torch.Tensor]:
    """GGML `qtype` bytes [out, in/qk * nbytes] of a weight [out, in] by GPTQ in the type's grid given its input
    Hessian [in, in], and the weight they decode to."""
    grid = GGMLGrid(ggml_type(qtype), *W.shape)
    Q = gptq_sweep(W, H, grid, damp, act_order, block_size)
    return grid.blocks(Q)


def rtn_ggml(W: torch.Tensor, importance: torch.Tensor | None, qtype: str) -> tuple[np.ndarray, torch.Tensor]:
    """Importance-weighted round to nearest in a GGML type (llama.cpp's quantization with an imatrix)."""
    t = ggml_type(qtype)
    if W.shape[1] % t.qk:
        raise LowbitError(f"{t.name} needs rows of a multiple of {t.qk} weights; this layer has {W.shape[1]}")
    return t.quantize(W.float(), importance)
