"""Model adapters: families, loading, and block-by-block calibration capture."""

from lowbit.models.capture import BlockInputs, capture_block_inputs
from lowbit.models.families import FAMILIES, Family, block_linears, block_output, family_for
from lowbit.models.load import Loaded, load_model, resolve_source

__all__ = [
    "FAMILIES", "BlockInputs", "Family", "Loaded", "block_linears", "block_output", "capture_block_inputs",
    "family_for", "load_model", "resolve_source",
]
