"""Quantization-aware training: STE, LSQ, ApproxSign, EDE, PACT and BiPer layers, and bit-packed binary inference.

from lowbit.qat import QATConfig, prepare, convert
qmodel = prepare(model, QATConfig(estimator="biper", omega0=20))   # train qmodel as usual
fast = convert(qmodel)                                            # XNOR/popcount inference
"""

from .api import (
    binary_weight_signs,
    clip_latent_weights_,
    convert,
    flip_rate,
    prepare,
    quant_layers,
    quantization_error,
    regularization_loss,
    set_biper_stage,
    set_ede_progress,
)
from .config import QATConfig
from .estimators import (
    approx_sign,
    binarize,
    biper_sign,
    ede_params,
    ede_sign,
    grad_scale,
    lsq_codes,
    pact,
    round_ste,
    sign_ste,
)
from .modules import ActQuantizer, QuantConv1d, QuantConv2d, QuantLinear, WeightQuantizer
from .packed import PackedBinaryConv1d, PackedBinaryConv2d, PackedBinaryLinear

__all__ = [
    "ActQuantizer",
    "PackedBinaryConv1d",
    "PackedBinaryConv2d",
    "PackedBinaryLinear",
    "QATConfig",
    "QuantConv1d",
    "QuantConv2d",
    "QuantLinear",
    "WeightQuantizer",
    "approx_sign",
    "binarize",
    "biper_sign",
    "binary_weight_signs",
    "clip_latent_weights_",
    "convert",
    "ede_params",
    "ede_sign",
    "flip_rate",
    "grad_scale",
    "lsq_codes",
    "pact",
    "prepare",
    "quant_layers",
    "quantization_error",
    "regularization_loss",
    "round_ste",
    "set_biper_stage",
    "set_ede_progress",
    "sign_ste",
]
