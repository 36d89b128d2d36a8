"""Writing and reading quantized checkpoints."""

from lowbit.export.checkpoint import QUANT_FILE, load, save_quantized

__all__ = ["QUANT_FILE", "load", "save_quantized"]
