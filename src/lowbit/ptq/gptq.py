"""GPTQ: accurate post-training quantization from second-order information (Frantar et al., ICLR 2023).

Per linear layer: the Hessian H = 2/n sum x x^T of its calibration inputs, dampening, optional activation
ordering (columns by decreasing diag(H)), and lazy blocked updates with the upper Cholesky factor of H^-1.
Group scales are fitted during the sweep, when the first column of a group is reached (with activation
order, groups stay contiguous in the original column order, so checkpoints need no g_idx). The sweep
(`gptq_sweep`) rounds onto any `Grid`: lowbit's integer formats (`IntGrid`) or GGML's block types
(lowbit.ptq.gptq_ggml).
"""

from __future__ import annotations

from typing import Protocol

import torch

from lowbit.errors import LowbitError
from lowbit.formats import dequantize, quantize
from lowbit.quantizers import QuantizedWeight, WeightSpec, check_finite, fit_ranges, quantize_with


class HessianAccumulator:
    """H = 2/n sum x x^T over the rows of the inputs a linear layer sees (sum kept raw, scaled on read)."""

    def __init__(self, in_features: int) -> None:
        self._sum = torch.zeros(in_features, in_features, dtype=torch.float32)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        """Fold a batch of inputs [..., in_features] into the Hessian."""
        x = x.reshape(-1, x.shape[-1])
        x = x if x.dtype == torch.float32 else x.float()
        self.n += x.shape[0]
        self._sum.addmm_(x.t(), x)

    @property
    def H(self) -> torch.Tensor:
        """The Hessian 2/n X^T X."""
        return self._sum * (2.0 / max(self.n, 1))


def _inverse_cholesky(H: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp * mean(diag) I)^-1, raising the dampening if H is not positive.

    Works in float32 and in place on H (a private copy), so the transient memory is a few [in, in] matrices.
    """
    mean_diag = H.diagonal().mean().item()
    added = 0.0
    for factor in (1, 10, 100, 1000):
        target = damp * factor * mean_diag
        H.diagonal().add_(target - added)
        added = target
        L, info = torch.linalg.cholesky_ex(H)
        if info.item() == 0:
            L = torch.cholesky_inverse(L)
            U, info = torch.linalg.cholesky_ex(L, upper=True)
            if info.item() == 0:
                return U
    raise LowbitError("GPTQ: the Hessian is not positive definite even with strong dampening; "
                      "use more or longer calibration texts (--calib) or --method rtn")


class Grid(Protocol):
    """Where GPTQ rounds to: a grid per group of contiguous columns, fitted when the group's first column is reached."""

    def group_len(self, cols: int) -> int:
        """Columns per group (the last group of a row may be shorter)."""

    def fit(self, g: int, cur: torch.Tensor, h: torch.Tensor) -> None:
        """Fit group g's grid on its current (error-updated) weights [out, len] with column importance h [len]."""

    def round(self, w: torch.Tensor, g: int, j: int) -> torch.Tensor:
        """Column j of group g, values [out], rounded to the group's grid (the dequantized values)."""


class IntGrid:
    """Grid of a lowbit WeightSpec: integer codes with a scale and zero per group (or per tensor)."""

    def __init__(self, spec: WeightSpec, out: int, cols: int) -> None:
        self.spec = spec
        self.per_tensor = spec.group_size == -1
        groups = 1 if self.per_tensor else spec.groups(cols)
        self.scales, self.zeros = torch.zeros(out, groups), torch.zeros(out, groups)

    def group_len(self, cols: int) -> int:
        """Columns per group (all of them per tensor)."""
        return cols if self.per_tensor else self.spec.group_len(cols)

    def fit(self, g: int, cur: torch.Tensor, h: torch.Tensor) -> None:
        """Range of the group from its current weights (one range over the whole weight per tensor)."""
        s, z = fit_ranges(cur.reshape(1, -1) if self.per_tensor else cur, self.spec)
        self.scales[:, g], self.zeros[:, g] = s[:, 0], z[:, 0]

    def round(self, w: torch.Tensor, g: int, j: int) -> torch.Tensor:
        """Round to nearest on the group's scale and zero."""
        s, z = self.scales[:, g], self.zeros[:, g]
        return dequantize(quantize(w, s, z, self.spec.bits), s, z)


def gptq_sweep(W: torch.Tensor, H: torch.Tensor, grid: Grid, damp: float = 0.01, act_order: bool = True,
               block_size: int = 128) -> torch.Tensor:
    """GPTQ's error-compensating sweep of a weight [out, in] onto `grid`; returns the rounded weight (original
    column order). Each group's grid is fitted (importance: the Hessian's diagonal) when its first column is
    reached, on the weights as updated by the errors of the columns before it."""
    check_finite(W)
    out, cols = W.shape
    gs = grid.group_len(cols)
    n_groups = -(-cols // gs)
    W = W.detach().clone().float()
    H = H.clone().float()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    importance = torch.diag(H).clone()
    fitted = [False] * n_groups

    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(cols)
    W = W[:, perm]
    H = H[perm][:, perm]
    U = _inverse_cholesky(H, damp)
    del H
    Q = torch.zeros_like(W)
    group_of = (perm // gs).tolist()
    col_in_group = (perm % gs).tolist()
    pos_of = torch.empty_like(perm)
    pos_of[perm] = torch.arange(cols)

    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            g = group_of[i1 + i]
            if not fitted[g]:
                idx = pos_of[g * gs:(g + 1) * gs]  # where the group's columns sit in the permuted order
                cur = torch.where(((idx >= i1) & (idx < i2))[None, :], W1[:, (idx - i1).clamp(0, i2 - i1 - 1)],
                                  W[:, idx])
                grid.fit(g, cur, importance[g * gs:(g + 1) * gs])
                fitted[g] = True
            w = W1[:, i]
            q = grid.round(w, g, col_in_group[i1 + i])
            Q[:, i1 + i] = q
            err = (w - q) / U1[i, i]
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    return Q[:, pos_of]  # back to the original column order


def gptq_quantize(
    W: torch.Tensor, H: torch.Tensor, spec: WeightSpec, damp: float = 0.01, act_order: bool = True,
    block_size: int = 128,
) -> QuantizedWeight:
    """Quantize a weight [out, in] with GPTQ given its input Hessian [in, in]."""
    grid = IntGrid(spec, *W.shape)
    Q = gptq_sweep(W, H, grid, damp, act_order, block_size)
    scales, zeros = (grid.scales[:1], grid.zeros[:1]) if grid.per_tensor else (grid.scales, grid.zeros)
    return QuantizedWeight(quantize_with(Q, scales, zeros, spec), scales, zeros, spec)
