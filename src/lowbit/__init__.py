"""lowbit: make neural networks low-bit for real."""

import os

# Idle OpenMP threads sleep instead of spinning (unless the user chose otherwise). Decode runs many small
# parallel regions; with spinning workers and another process on a core, a 6.8M model decoded at 67 instead
# of 575 tokens/s here. Takes effect only if torch (libgomp) is not loaded yet.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from lowbit import data
from lowbit.errors import LowbitError
from lowbit.models.checkpoint import load

__version__ = "0.1.0"
__all__ = ["LowbitError", "data", "load"]
