"""Quantizer specifications (granularity, range) and the weight quantizer built on lowbit.formats."""

from lowbit.quantizers.weight import (
    QuantizedWeight,
    WeightSpec,
    check_finite,
    dequantize_weight,
    expand_groups,
    fit_ranges,
    fp16_round,
    quantize_weight,
    quantize_with,
)

__all__ = [
    "QuantizedWeight", "WeightSpec", "check_finite", "dequantize_weight", "expand_groups", "fit_ranges", "fp16_round",
    "quantize_weight", "quantize_with",
]
