"""prepare / convert and training helpers for quantization-aware training (BiPer, XNOR-Net recipes)."""

from __future__ import annotations

import copy
import fnmatch
import warnings

import torch
from torch import nn

from .config import QATConfig
from .estimators import ede_params
from .modules import QuantConv1d, QuantConv2d, QuantLinear
from .packed import PackedBinaryConv1d, PackedBinaryConv2d, PackedBinaryLinear

__all__ = [
    "binary_weight_signs",
    "clip_latent_weights_",
    "convert",
    "flip_rate",
    "prepare",
    "quant_layers",
    "quantization_error",
    "regularization_loss",
    "set_biper_stage",
    "set_ede_progress",
]

_FLOAT_TO_QUANT: dict[type[nn.Module], type[nn.Module]] = {
    nn.Linear: QuantLinear,
    nn.Conv1d: QuantConv1d,
    nn.Conv2d: QuantConv2d,
}
_QUANT_TO_PACKED = {
    QuantLinear: PackedBinaryLinear,
    QuantConv1d: PackedBinaryConv1d,
    QuantConv2d: PackedBinaryConv2d,
}
_QUANT_TYPES = (QuantLinear, QuantConv1d, QuantConv2d)


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def prepare(model: nn.Module, config: QATConfig | None = None, inplace: bool = False) -> nn.Module:
    """Swap Linear/Conv1d/Conv2d layers for fake-quantized ones (first and last kept in float by default).

    Layers are matched by exact type (subclasses such as already-quantized layers are left alone)
    and ordered as ``model.named_modules()`` lists them.  Returns the prepared model (a deep copy
    unless ``inplace``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"prepare expects a torch.nn.Module, got {type(model).__name__}")
    config = QATConfig() if config is None else config
    if not isinstance(config, QATConfig):
        raise TypeError(f"config must be a lowbit.qat.QATConfig, got {type(config).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    wanted = {getattr(nn, t) for t in config.layer_types}
    candidates = [(n, m) for n, m in model.named_modules() if type(m) in wanted and n]
    if not candidates:
        raise ValueError(
            f"model has no {'/'.join(config.layer_types)} layers to quantize "
            "(check config.layer_types; the model itself cannot be the only layer)"
        )
    keep = set()
    if config.keep_first:
        keep.add(candidates[0][0])
    if config.keep_last:
        keep.add(candidates[-1][0])
    for n, _ in candidates:
        if any(fnmatch.fnmatchcase(n, pat) for pat in config.exclude):
            keep.add(n)
    swapped = 0
    for name, layer in candidates:
        if name in keep:
            continue
        _set_submodule(model, name, _FLOAT_TO_QUANT[type(layer)].from_float(layer, config))
        swapped += 1
    if swapped == 0:
        warnings.warn(
            f"prepare: every matching layer was kept in float ({len(candidates)} found, first/last kept and "
            f"exclude={config.exclude!r}); set keep_first/keep_last=False to quantize them",
            UserWarning,
            stacklevel=2,
        )
    return model


def quant_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) for every fake-quantized layer in ``model``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _QUANT_TYPES)]


def convert(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Replace trained binary (1-bit weights and activations) layers by bit-packed XNOR/popcount modules.

    Other quantized layers (multi-bit, float activations) stay simulated, with a warning naming them;
    BiPer stage-1 layers (real-valued sin weights) raise ValueError.  The result is in eval mode and
    its outputs equal the simulated model's in eval mode bit for bit.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert expects a torch.nn.Module, got {type(model).__name__}")
    layers = quant_layers(model)
    if not layers:
        raise ValueError("convert found no lowbit.qat quantized layers; call lowbit.qat.prepare(model) first")
    stage1 = [n for n, m in layers if m.weight_quant.estimator == "biper" and m.weight_quant.stage == 1]
    if stage1:
        raise ValueError(
            f"layers {stage1} are BiPer stage 1 (real-valued sin(omega0 w) weights); call "
            "set_biper_stage(model, 2) and train stage 2 before convert"
        )
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    skipped = []
    for name, layer in quant_layers(model):
        if not layer.is_binary:
            skipped.append(name)
            continue
        packed = _QUANT_TO_PACKED[type(layer)].from_quant(layer)
        _set_submodule(model, name, packed)
    if skipped:
        warnings.warn(
            f"convert: layers {skipped} are not binary in weights and activations and stay simulated "
            "(fake-quantized float)",
            UserWarning,
            stacklevel=2,
        )
    return model


def set_biper_stage(model: nn.Module, stage: int) -> None:
    """Switch BiPer layers between stage 1 (sin(omega0 w) weights) and stage 2 (binarized), in place."""
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, got {stage}")
    found = False
    for _, m in quant_layers(model):
        if m.weight_quant.estimator == "biper":
            m.weight_quant.stage = stage
            found = True
    if not found:
        raise ValueError("model has no BiPer layers; prepare it with QATConfig(estimator='biper')")


def set_ede_progress(model: nn.Module, progress: float) -> tuple[float, float]:
    """Set IR-Net's EDE schedule for training progress in [0, 1] (call once per epoch); returns (t, k)."""
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress must be in [0, 1] (epoch / (epochs - 1)), got {progress}")
    t, k = ede_params(progress)
    for _, m in quant_layers(model):
        for qz in (m.weight_quant, m.act_quant):
            qz.ede_t, qz.ede_k = t, k
    return t, k


def quantization_error(model: nn.Module) -> float:
    """Sum over quantized layers of the weight quantization error (BiPer: mean|sin - sign(sin)|)."""
    return float(sum(float(m.weight_quant.quantization_error(m.weight)) for _, m in quant_layers(model)))


def regularization_loss(model: nn.Module, tau: float | None = None) -> torch.Tensor:
    """BiPer's tau * sum over layers of mean(sin^2(omega0 w)); tau defaults to each layer's config.tau."""
    total = None
    for _, m in quant_layers(model):
        t = m.qconfig.tau if tau is None else tau
        if t and m.weight_quant.estimator == "biper":
            term = t * m.biper_regularizer()
            total = term if total is None else total + term
    if total is None:
        p = next(model.parameters(), None)
        return torch.zeros((), device=None if p is None else p.device)
    return total


@torch.no_grad()
def binary_weight_signs(model: nn.Module) -> dict[str, torch.Tensor]:
    """Current +-1 weight codes (as bool 'negative') of every binary quantized layer, by name."""
    out = {}
    for n, m in quant_layers(model):
        if m.weight_quant.bits == 1:
            wq = m.weight_quant
            if wq.estimator == "biper":
                s = torch.sin(wq.omega0 * m.weight)
            else:
                s = m.weight
            out[n] = ~(s >= 0)
    return out


def flip_rate(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> float:
    """Fraction of binary weights whose sign changed between two ``binary_weight_signs`` snapshots."""
    if before.keys() != after.keys():
        raise ValueError("the two snapshots cover different layers; take both from the same model")
    flipped = sum(int((before[k] != after[k]).sum()) for k in before)
    total = sum(before[k].numel() for k in before)
    return flipped / total if total else 0.0


@torch.no_grad()
def clip_latent_weights_(model: nn.Module, bound: float | None = None) -> None:
    """Clamp latent weights of STE/ApproxSign layers to [-bound, bound] (BinaryConnect), in place."""
    for _, m in quant_layers(model):
        if m.weight_quant.estimator in ("ste", "approxsign") and m.weight_quant.bits == 1:
            b = m.weight_quant.clip if bound is None else bound
            m.weight.clamp_(-b, b)
