"""Post-training quantization: configs and the quantize() verb that applies them."""

from lowbit.ptq.config import CalibConfig, GPTQConfig, RTNConfig
from lowbit.ptq.gptq import HessianAccumulator, gptq_quantize
from lowbit.ptq.pipeline import QuantResult, quantize

__all__ = ["CalibConfig", "GPTQConfig", "HessianAccumulator", "QuantResult", "RTNConfig", "gptq_quantize", "quantize"]
