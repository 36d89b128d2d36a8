"""Post-training quantization: configs, the quantize() verb that applies any of them, and the methods.

Importing this package imports every method module, which registers its handler (lowbit.ptq.registry).
"""

from lowbit.ptq import awq, cbq, gptq_block, recipe, rtn, smoothquant  # noqa: F401 (they register their handlers)
from lowbit.ptq.config import METHODS, CalibConfig, GPTQConfig, RecipeConfig, RTNConfig
from lowbit.ptq.gptq import HessianAccumulator, gptq_quantize
from lowbit.ptq.head import quantize_head
from lowbit.ptq.pipeline import quantize
from lowbit.ptq.registry import QuantResult

__all__ = ["METHODS", "CalibConfig", "GPTQConfig", "HessianAccumulator", "QuantResult", "RTNConfig", "RecipeConfig",
           "gptq_quantize", "quantize", "quantize_head"]
