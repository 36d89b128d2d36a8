"""Fake-quantized Linear / Conv1d / Conv2d layers for QAT (STE, LSQ, ApproxSign, BiPer).

Each layer computes ``op(activation_codes, weight_codes) * (act_scale * weight_scale) + bias``:
codes are the quantized values divided by their scale (+-1 for binary), so binary layers do an
exact integer +-1 matmul in float, which ``lowbit.qat.convert`` reproduces bit for bit with
XNOR/popcount kernels.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.formats import signed_range

from .config import QATConfig
from .estimators import (
    approx_sign,
    biper_sign,
    ede_params,
    ede_sign,
    grad_scale,
    lsq_codes,
    pact,
    round_ste,
    sign_ste,
)

__all__ = ["ActQuantizer", "QuantConv1d", "QuantConv2d", "QuantLinear", "WeightQuantizer"]

_STD_EPS = 1e-5


def _qrange(bits: int) -> tuple[int, int]:
    """Magnitudes (Qn, Qp) of the signed range [-Qn, Qp] of a ``bits``-bit code; binary is {-1, +1}, so (1, 1)."""
    if bits == 1:
        return 1, 1
    lo, hi = signed_range(bits)
    return -lo, hi


class WeightQuantizer(nn.Module):
    """Weight codes and scale for one layer; estimator per ``QATConfig`` (STE, LSQ, ApproxSign, BiPer)."""

    def __init__(self, weight: torch.Tensor, config: QATConfig) -> None:
        super().__init__()
        self.estimator = config.estimator
        self.bits = config.weight_bits
        self.omega0 = float(config.omega0)
        self.stage = int(config.biper_stage)
        self.clip = float(config.ste_clip)
        self.qn, self.qp = _qrange(self.bits)
        self.ede_t, self.ede_k = ede_params(0.0)
        out_ch = weight.shape[0]
        w2 = weight.detach().reshape(out_ch, -1)
        self.numel = weight.numel()
        self.scale_mode = "lsq" if self.estimator == "lsq" else config.weight_scale
        if self.bits > 1 and self.estimator == "ste":
            self.scale_mode = "max_abs"
        if self.scale_mode == "learned":
            self.alpha = nn.Parameter(w2.abs().mean(dim=1).clamp_min(1e-8).clone())
        elif self.scale_mode == "lsq":
            # LSQ init: s = 2 mean|w| / sqrt(Qp) (per tensor, as in the paper)
            self.step = nn.Parameter(2 * weight.detach().abs().mean().clamp_min(1e-8) / math.sqrt(self.qp))

    @property
    def binary(self) -> bool:
        """True when the codes are +-1 (1-bit weights, BiPer stage 2 included)."""
        return self.bits == 1 and not (self.estimator == "biper" and self.stage == 1)

    def codes(self, w: torch.Tensor) -> torch.Tensor:
        """Quantized weight divided by its scale (+-1 for binary), with the estimator's gradient."""
        if self.estimator == "biper":
            if self.stage == 1:
                return torch.sin(self.omega0 * w)
            return biper_sign(w, self.omega0)
        if self.estimator == "approxsign":
            return approx_sign(w)
        if self.estimator == "ede":
            return ede_sign(w, self.ede_t, self.ede_k)
        if self.estimator == "lsq":
            return lsq_codes(w, self._lsq_step(), self.qn, self.qp)
        if self.bits == 1:
            return sign_ste(w, self.clip)
        return round_ste(w, self._max_abs_step(w), self.qn, self.qp)

    def _lsq_step(self) -> torch.Tensor:
        """LSQ step with its gradient scaled by 1/sqrt(N Qp) (N = number of weights)."""
        return grad_scale(self.step, 1.0 / math.sqrt(self.numel * self.qp))

    def _max_abs_step(self, w: torch.Tensor) -> torch.Tensor:
        amax = w.detach().reshape(w.shape[0], -1).abs().amax(dim=1).clamp_min(1e-8)
        return (amax / self.qp).reshape(-1, *([1] * (w.dim() - 1)))

    def scale(self, w: torch.Tensor) -> torch.Tensor | None:
        """Per-output-channel scale [out] (or a scalar for LSQ), or None for no scaling."""
        if self.scale_mode == "learned":
            return self.alpha
        if self.scale_mode == "mean_abs":
            return w.reshape(w.shape[0], -1).abs().mean(dim=1)
        if self.scale_mode == "lsq":
            return self._lsq_step()
        if self.scale_mode == "max_abs":
            return self._max_abs_step(w).reshape(-1)
        return None

    def quantization_error(self, w: torch.Tensor) -> torch.Tensor:
        """BiPer's mean|sin(w0 w) - sign(sin(w0 w))|; for other estimators mean|w/scale - codes|."""
        with torch.no_grad():
            if self.estimator == "biper":
                s = torch.sin(self.omega0 * w)
                return (s - torch.where(s >= 0, 1.0, -1.0)).abs().mean()
            sc = self.scale(w)
            sc = torch.ones(()) if sc is None else sc.reshape(-1, *([1] * (w.dim() - 1)))
            return (w / sc - self.codes(w)).abs().mean()

    def extra_repr(self) -> str:
        extra = f", omega0={self.omega0}, stage={self.stage}" if self.estimator == "biper" else ""
        return f"estimator={self.estimator}, bits={self.bits}, scale={self.scale_mode}{extra}"


class ActQuantizer(nn.Module):
    """Activation codes and scale: sign with STE / ApproxSign gradient, LSQ, or uniform STE."""

    initialized: torch.Tensor  # buffers, registered by __init__ for the estimators that use them
    running_amax: torch.Tensor

    def __init__(self, config: QATConfig) -> None:
        super().__init__()
        self.bits = config.act_bits
        self.estimator = config.resolved_act_estimator
        self.std_norm = config.resolved_act_std_norm
        self.clip = float(config.ste_clip)
        self.qn, self.qp = _qrange(self.bits or 8)
        self.ede_t, self.ede_k = ede_params(0.0)
        if self.bits is not None and self.estimator == "pact":
            self.alpha = nn.Parameter(torch.tensor(float(config.pact_alpha)))
        elif self.bits is not None and self.estimator == "lsq":
            self.step = nn.Parameter(torch.tensor(1.0))
            self.register_buffer("initialized", torch.tensor(False))
        elif self.bits is not None and self.bits > 1:
            # uniform STE: per-tensor range from an EMA of max|x| seen in training
            self.register_buffer("running_amax", torch.tensor(0.0))
            self.momentum = 0.1

    @property
    def binary(self) -> bool:
        """True when activations become +-1 codes."""
        return self.bits == 1

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return (codes, scale) with x ~= codes * scale; scale None means 1."""
        if self.bits is None:
            return x, None
        if self.std_norm and self.training:
            dims = tuple(range(1, x.dim()))
            x = x / torch.sqrt(x.var(dim=dims, keepdim=True) + _STD_EPS) if dims else x
        if self.estimator == "lsq":
            if self.training and not bool(self.initialized):
                with torch.no_grad():
                    self.step.copy_(2 * x.detach().abs().mean().clamp_min(1e-8) / math.sqrt(self.qp))
                    self.initialized.fill_(True)
            n_feat = x[0].numel() if x.dim() > 1 else x.numel()
            s = grad_scale(self.step, 1.0 / math.sqrt(n_feat * self.qp))
            return lsq_codes(x, s, self.qn, self.qp), s
        if self.estimator == "pact":
            return pact(x, self.alpha, self.bits), None
        if self.bits == 1:
            if self.estimator == "approxsign":
                return approx_sign(x), None
            if self.estimator == "ede":
                return ede_sign(x, self.ede_t, self.ede_k), None
            return sign_ste(x, self.clip), None
        if self.training:
            with torch.no_grad():
                amax = x.detach().abs().max()
                if float(self.running_amax) == 0.0:
                    self.running_amax.copy_(amax)
                else:
                    self.running_amax.lerp_(amax, self.momentum)
        s = (self.running_amax / self.qp).clamp_min(1e-8)
        return round_ste(x, s, self.qn, self.qp), s

    def extra_repr(self) -> str:
        return f"estimator={self.estimator}, bits={self.bits}, std_norm={self.std_norm}"


class _FloatLayer(Protocol):
    """What ``from_float`` reads of a float nn.Linear / nn.Conv1d / nn.Conv2d."""

    @property
    def weight(self) -> torch.Tensor: ...

    @property
    def bias(self) -> torch.Tensor | None: ...


class _QuantMixin(nn.Module):
    """Shared set-up and forward for the quantized layers (mixed in before nn.Linear / nn.Conv*d)."""

    weight: torch.Tensor
    bias: torch.Tensor | None

    def _adopt(self, layer: _FloatLayer, config: QATConfig):  # noqa: ANN202
        """Copy a float layer's weight and bias (device and dtype too), then attach the quantizers."""
        self.to(device=layer.weight.device, dtype=layer.weight.dtype)
        with torch.no_grad():
            self.weight.copy_(layer.weight)
            if layer.bias is not None:
                assert self.bias is not None  # built with bias=layer.bias is not None
                self.bias.copy_(layer.bias)
        self._setup_quant(config)
        return self

    def _setup_quant(self, config: QATConfig) -> None:
        self.qconfig = config
        self.weight_quant = WeightQuantizer(self.weight, config)
        self.act_quant = ActQuantizer(config)

    @property
    def is_binary(self) -> bool:
        """True when weights and activations are both +-1 (convertible to XNOR/popcount)."""
        return self.weight_quant.binary and self.act_quant.binary

    def _op(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _check_input(self, x: torch.Tensor) -> None:
        raise NotImplementedError

    def _quant_forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        xc, a_scale = self.act_quant(x)
        wc = self.weight_quant.codes(self.weight)
        y = self._op(xc, wc)
        scale = self.output_scale(a_scale)
        shape = (1, -1) + (1,) * (y.dim() - 2) if y.dim() > 1 else (-1,)
        if scale is not None:
            y = y * (scale.reshape(shape) if scale.dim() else scale)
        if self.bias is not None:
            y = y + self.bias.reshape(shape)
        return y

    def output_scale(self, a_scale: torch.Tensor | None = None) -> torch.Tensor | None:
        """act_scale * weight_scale, the factor applied to op(codes, codes)."""
        w_scale = self.weight_quant.scale(self.weight)
        if a_scale is None:
            return w_scale
        return a_scale if w_scale is None else a_scale * w_scale

    def biper_regularizer(self) -> torch.Tensor:
        """mean(sin^2(omega0 w)) of this layer's weights (BiPer's optional loss term), 0 otherwise."""
        if self.weight_quant.estimator != "biper":
            return self.weight.new_zeros(())
        return torch.sin(self.weight_quant.omega0 * self.weight).pow(2).mean()


class QuantLinear(_QuantMixin, nn.Linear):
    """nn.Linear with fake-quantized weights and activations (STE / LSQ / ApproxSign / BiPer)."""

    def __init__(self, in_features: int, out_features: int, bias: bool, config: QATConfig) -> None:
        nn.Linear.__init__(self, in_features, out_features, bias=bias)
        self._setup_quant(config)

    @classmethod
    def from_float(cls, layer: nn.Linear, config: QATConfig) -> QuantLinear:
        """Quantized copy of ``layer`` (weights and bias copied)."""
        q = cls(layer.in_features, layer.out_features, layer.bias is not None, QATConfig())
        return q._adopt(layer, config)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"QuantLinear expects inputs with {self.in_features} features in the last dim, "
                f"got shape {tuple(x.shape)}"
            )

    def _op(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.linear(x, w)

    def _quant_forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        xc, a_scale = self.act_quant(x)
        y = F.linear(xc, self.weight_quant.codes(self.weight))
        scale = self.output_scale(a_scale)
        if scale is not None:
            y = y * scale
        if self.bias is not None:
            y = y + self.bias
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._quant_forward(x)


class _QuantConvNd(_QuantMixin):
    """Common conv code: padding modes via nn.Conv*'s own _conv_forward."""

    in_channels: int
    _nd: int
    _conv_forward: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]  # nn.Conv*d's

    def _check_input(self, x: torch.Tensor) -> None:
        nd = self._nd
        if x.dim() not in (nd + 1, nd + 2) or x.shape[-nd - 1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects input [batch, {self.in_channels}, *spatial({nd})], "
                f"got shape {tuple(x.shape)}"
            )

    def _op(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, w, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == self._nd + 1:  # unbatched input
            self._check_input(x)
            return self._quant_forward(x.unsqueeze(0)).squeeze(0)
        return self._quant_forward(x)

    @classmethod
    def _from_float(cls, layer: nn.Conv1d | nn.Conv2d, config: QATConfig):  # noqa: ANN206
        q = cls(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            groups=layer.groups,
            bias=layer.bias is not None,
            padding_mode=layer.padding_mode,
        )
        return q._adopt(layer, config)


class QuantConv1d(_QuantConvNd, nn.Conv1d):
    """nn.Conv1d with fake-quantized weights and activations (STE / LSQ / ApproxSign / BiPer)."""

    _nd = 1

    @classmethod
    def from_float(cls, layer: nn.Conv1d, config: QATConfig) -> QuantConv1d:
        """Quantized copy of ``layer``."""
        return cls._from_float(layer, config)


class QuantConv2d(_QuantConvNd, nn.Conv2d):
    """nn.Conv2d with fake-quantized weights and activations (STE / LSQ / ApproxSign / BiPer)."""

    _nd = 2

    @classmethod
    def from_float(cls, layer: nn.Conv2d, config: QATConfig) -> QuantConv2d:
        """Quantized copy of ``layer``."""
        return cls._from_float(layer, config)
