"""lowbit: make neural networks low-bit for real."""

from lowbit import data
from lowbit.errors import LowbitError
from lowbit.export import load

__version__ = "0.1.0"
__all__ = ["LowbitError", "data", "load"]
