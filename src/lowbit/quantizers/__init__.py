"""Quantizer specifications (granularity, range) and the weight quantizer built on lowbit.formats."""

from lowbit.quantizers.weight import (
    QuantizedWeight,
    WeightSpec,
    dequantize_weight,
    fit_ranges,
    quantize_weight,
)

__all__ = ["QuantizedWeight", "WeightSpec", "dequantize_weight", "fit_ranges", "quantize_weight"]
