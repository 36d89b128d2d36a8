"""Gradient estimators for quantization-aware training, each a small autograd function.

Every function returns *codes* (the quantized values divided by their scale); layers multiply
the matmul/conv output by the scale afterwards, so the +-1 products stay exact integers.

Formulas (g = incoming gradient):

* ``sign_ste``      forward sign(x), backward g * 1{|x| <= clip}               (BinaryConnect /
  BNN, Courbariaux et al. 2016; Hubara et al. 2016: the clipped identity / hardtanh STE)
* ``approx_sign``   forward sign(x), backward g * max(0, 2 - 2|x|)             (Bi-Real Net, Liu 2018)
* ``biper_sign``    forward sign(sin(w0 x)), backward g * w0 cos(w0 x)          (BiPer, Vargas 2024:
  the sign passes the gradient straight through to sin(w0 x))
* ``ede_sign``      forward sign(x), backward g * k t (1 - tanh^2(t x)), t growing from 0.1 to 10
  over training and k = max(1/t, 1)                                      (IR-Net's EDE, Qin 2020)
* ``pact``          forward clamp(x, 0, alpha) rounded to 2^b - 1 levels; gradient to x straight
  through inside [0, alpha), to alpha 1{x >= alpha}                      (PACT, Choi et al. 2018)
* ``lsq_codes``     forward clamp(round(x/s), -Qn, Qp), backward d/dx = g/s inside the range,
  d/ds = g * (-x/s) / s inside and 0 outside, so that s * codes has the LSQ gradient
  d(s*codes)/ds = round(x/s) - x/s inside, -Qn / Qp outside (Esser et al. 2020)
* ``grad_scale``    identity forward, gradient times ``scale`` (LSQ's 1/sqrt(N Qp))
* ``round_ste``     forward clamp(round(x/s), -Qn, Qp), backward g/s inside the range (uniform STE)

sign() here maps 0 to +1 (and NaN to -1), matching the bit-packed kernels.

``pact`` rounds with ``lowbit.quantizers.ste.straight_through``. ``round_ste`` stays an autograd function:
written with straight_through it would equal these codes in value but not bit for bit (codes -0.0 become
+0.0, and the gradient outside the range is +0.0 where this one gives g * 0 = -0.0 for negative g).
``ctx`` is typed Any: it is the autograd context object, to which each function adds its own attributes.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from lowbit.quantizers.ste import straight_through

__all__ = [
    "EDE_T_MAX",
    "EDE_T_MIN",
    "approx_sign",
    "ede_params",
    "ede_sign",
    "pact",
    "biper_sign",
    "binarize",
    "grad_scale",
    "lsq_codes",
    "round_ste",
    "sign_ste",
]


def binarize(x: torch.Tensor) -> torch.Tensor:
    """+1 where x >= 0, else -1 (so sign(0) = +1, sign(NaN) = -1), in x's dtype."""
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


class _SignSTE(torch.autograd.Function):
    """Sign with the clipped straight-through estimator (BinaryConnect, Courbariaux et al. 2015)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, clip: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.clip = clip
        return binarize(x)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None]:
        (x,) = ctx.saved_tensors
        return g * (x.abs() <= ctx.clip).to(g.dtype), None


class _ApproxSign(torch.autograd.Function):
    """Sign with the piecewise-polynomial ApproxSign gradient (Bi-Real Net, Liu et al. 2018)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return binarize(x)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return g * torch.clamp(2.0 - 2.0 * x.abs(), min=0.0)


class _BiPerSign(torch.autograd.Function):
    """Square wave sign(sin(w0 x)) with the sine's gradient w0 cos(w0 x) (BiPer, Vargas et al. 2024)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, omega0: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.omega0 = omega0
        return binarize(torch.sin(omega0 * x))

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None]:
        (x,) = ctx.saved_tensors
        return g * ctx.omega0 * torch.cos(ctx.omega0 * x), None


class _EDESign(torch.autograd.Function):
    """Sign with the error-decay estimator k t (1 - tanh^2(t x)) (IR-Net, Qin et al. 2020)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, t: float, k: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.t, ctx.k = t, k
        return binarize(x)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (x,) = ctx.saved_tensors
        return g * ctx.k * ctx.t * (1 - torch.tanh(ctx.t * x) ** 2), None, None


def _save_scaled(ctx: Any, x: torch.Tensor, s: torch.Tensor, qn: int, qp: int) -> torch.Tensor:
    """x / s, saved with s and the range for a clamped-codes backward."""
    v = x / s
    ctx.save_for_backward(v, s)
    ctx.qn, ctx.qp = qn, qp
    return v


def _inside(ctx: Any, v: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """1 where -Qn <= v <= Qp (the codes are not clamped), else 0, in the gradient's dtype."""
    return ((v >= -ctx.qn) & (v <= ctx.qp)).to(g.dtype)


class _LSQCodes(torch.autograd.Function):
    """Integer codes clamp(round(x/s), -Qn, Qp) with LSQ gradients for x and s (Esser et al. 2020)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, s: torch.Tensor, qn: int, qp: int) -> torch.Tensor:
        v = _save_scaled(ctx, x, s, qn, qp)
        if qn == 1 and qp == 1:  # binary LSQ: levels {-s, +s}
            return binarize(v)
        return torch.clamp(torch.round(v), -qn, qp)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None, None]:
        v, s = ctx.saved_tensors
        inside = _inside(ctx, v, g)
        gx = g * inside / s
        gs = g * (-v * inside) / s
        gs = gs.sum_to_size(s.shape) if s.dim() else gs.sum()
        return gx, gs.reshape(s.shape), None, None


class _RoundSTE(torch.autograd.Function):
    """Uniform quantizer clamp(round(x/s), -Qn, Qp) with a straight-through gradient inside the range."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, s: torch.Tensor, qn: int, qp: int) -> torch.Tensor:
        v = _save_scaled(ctx, x, s, qn, qp)
        return torch.clamp(torch.round(v), -qn, qp)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        v, s = ctx.saved_tensors
        return g * _inside(ctx, v, g) / s, None, None, None


class _GradScale(torch.autograd.Function):
    """Identity whose gradient is multiplied by a constant (LSQ's step-size gradient scale)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None]:
        return g * ctx.scale, None


def sign_ste(x: torch.Tensor, clip: float = 1.0) -> torch.Tensor:
    """sign(x); gradient g * 1{|x| <= clip} (clipped STE, BinaryConnect / BNN)."""
    return _SignSTE.apply(x, float(clip))


def approx_sign(x: torch.Tensor) -> torch.Tensor:
    """sign(x); gradient g * max(0, 2 - 2|x|) (ApproxSign, Bi-Real Net)."""
    return _ApproxSign.apply(x)


def biper_sign(x: torch.Tensor, omega0: float) -> torch.Tensor:
    """sign(sin(omega0 x)); gradient g * omega0 cos(omega0 x) (BiPer)."""
    return _BiPerSign.apply(x, float(omega0))


def lsq_codes(x: torch.Tensor, s: torch.Tensor, qn: int, qp: int) -> torch.Tensor:
    """LSQ codes clamp(round(x/s), -qn, qp) (binary when qn = qp = 1); s * codes has LSQ's gradients."""
    return _LSQCodes.apply(x, s, int(qn), int(qp))


def round_ste(x: torch.Tensor, s: torch.Tensor, qn: int, qp: int) -> torch.Tensor:
    """Uniform codes clamp(round(x/s), -qn, qp) with a straight-through gradient (no gradient to s)."""
    return _RoundSTE.apply(x, s, int(qn), int(qp))


def grad_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity in the forward pass, gradient times ``scale`` (LSQ: 1/sqrt(N Qp))."""
    return _GradScale.apply(x, float(scale))


EDE_T_MIN, EDE_T_MAX = 0.1, 10.0


def ede_params(progress: float) -> tuple[float, float]:
    """IR-Net's schedule: t = T_min 10^(progress log10(T_max / T_min)), k = max(1/t, 1)."""
    p = min(max(float(progress), 0.0), 1.0)
    t = EDE_T_MIN * 10 ** (p * math.log10(EDE_T_MAX / EDE_T_MIN))
    return t, max(1.0 / t, 1.0)


def ede_sign(x: torch.Tensor, t: float, k: float) -> torch.Tensor:
    """sign(x); gradient g * k t (1 - tanh^2(t x)) (EDE, IR-Net)."""
    return _EDESign.apply(x, float(t), float(k))


def pact(x: torch.Tensor, alpha: torch.Tensor, bits: int) -> torch.Tensor:
    """PACT: clamp(x, 0, alpha) quantized to 2^bits - 1 steps; d/dalpha = 1{x >= alpha} (Choi et al. 2018)."""
    y = torch.where(x >= alpha, alpha.expand_as(x), torch.relu(x))  # d/dalpha = 1{x >= alpha}
    s = alpha.detach() / (2**bits - 1)
    return straight_through(y, torch.round(y / s) * s)
