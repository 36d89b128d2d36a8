"""Model families lowbit knows, one adapter per architecture, and the one registry of them.

Adding a family is one new file in this package defining a `Family` (see llama.py, phi3.py, gemma.py, bert.py)
plus one line in REGISTRY below (or `register(family)` at run time).
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from lowbit.models.families.base import (
    DECODER_BLOCKS,
    GENERIC,
    Candidate,
    Decode,
    Family,
    GGUFNames,
    LayerParts,
    Layout,
    get_path,
)
from lowbit.models.families.bert import BERT
from lowbit.models.families.gemma import GEMMA, GEMMA3
from lowbit.models.families.llama import LLAMA, MISTRAL, QWEN2, QWEN3
from lowbit.models.families.phi3 import PHI3

REGISTRY: list[Family] = [
    LLAMA,
    MISTRAL,
    QWEN2,
    QWEN3,
    PHI3,
    GEMMA,
    GEMMA3,
    BERT,
]
FAMILIES: tuple[Family, ...] = tuple(REGISTRY)  # the built-in families (register() adds to REGISTRY)


def register(family: Family) -> Family:
    """Add a family to the registry (its model_types then load, quantize and export like the built-in ones)."""
    taken = {t for f in REGISTRY for t in f.model_types} & set(family.model_types)
    if taken:
        raise ValueError(f"model_type(s) {sorted(taken)} already belong to a registered family")
    REGISTRY.append(family)
    return family


def unregister(family: Family) -> None:
    """Remove a family added by register() (for tests and plugins)."""
    REGISTRY.remove(family)


def family_for(model_type: str) -> Family | None:
    """The family covering a config's `model_type`, or None."""
    for fam in REGISTRY:
        if model_type in fam.model_types:
            return fam
    return None


def supported_types() -> list[str]:
    """Every supported `model_type`, for error messages."""
    return [t for f in REGISTRY for t in f.model_types]


def family_of_model(model: nn.Module) -> Family | None:
    """The family of a transformers model (from its config's model_type), or None."""
    mt = getattr(getattr(model, "config", None), "model_type", None)
    return family_for(mt) if isinstance(mt, str) else None


def family_of_block(block: nn.Module) -> Family | None:
    """The family of one transformers block, from the config its submodules hold (None if none does)."""
    for mod in block.modules():
        mt = getattr(getattr(mod, "config", None), "model_type", None)
        if isinstance(mt, str):
            return family_for(mt)
    return None


def block_family(block: nn.Module, family: Family | None = None) -> Family:
    """`family`, else the block's own, else the generic naming-convention adapter (GENERIC)."""
    return family or family_of_block(block) or GENERIC


def block_linears(block: nn.Module) -> dict[str, nn.Linear]:
    """The nn.Linear layers of one block, by their name inside the block, in definition order."""
    return {name: m for name, m in block.named_modules() if isinstance(m, nn.Linear)}


def block_output(out: object) -> torch.Tensor:
    """The hidden states a block returns (blocks return a tensor or a tuple starting with it)."""
    return cast(torch.Tensor, out[0] if isinstance(out, tuple | list) else out)


__all__ = [
    "DECODER_BLOCKS", "FAMILIES", "GENERIC", "REGISTRY", "Candidate", "Decode", "Family", "GGUFNames", "LayerParts",
    "Layout", "block_family", "block_linears", "block_output", "family_for", "family_of_block", "family_of_model",
    "get_path", "register", "supported_types", "unregister",
]
