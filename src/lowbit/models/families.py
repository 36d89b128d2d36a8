"""Model families lowbit knows: where their transformer blocks live and how to load them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Family:
    """One architecture family: the config `model_type`s it covers and the path to its list of blocks."""

    name: str
    model_types: tuple[str, ...]
    kind: str  # "causal" (decoder LM, perplexity) or "encoder" (embeddings, cosine)
    blocks_path: tuple[str, ...]  # candidate attribute paths to the nn.ModuleList of blocks

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        """The model's transformer blocks, in order."""
        for path in self.blocks_path:
            obj = model
            for attr in path.split("."):
                obj = getattr(obj, attr, None)
                if obj is None:
                    break
            if isinstance(obj, nn.ModuleList):
                return obj
        raise AttributeError(f"no transformer blocks found in {type(model).__name__} at {self.blocks_path}")

    def blocks_prefix(self, model: nn.Module) -> str:
        """Module name of the model's list of blocks (e.g. model.layers)."""
        blocks = self.blocks(model)
        for name, mod in model.named_modules():
            if mod is blocks:
                return name
        raise RuntimeError("blocks not found among the model's modules")


DECODER_BLOCKS = ("model.layers",)
FAMILIES: tuple[Family, ...] = (
    Family("llama", ("llama",), "causal", DECODER_BLOCKS),
    Family("mistral", ("mistral",), "causal", DECODER_BLOCKS),
    Family("qwen2", ("qwen2",), "causal", DECODER_BLOCKS),
    Family("qwen3", ("qwen3",), "causal", DECODER_BLOCKS),
    Family("phi3", ("phi3",), "causal", DECODER_BLOCKS),
    Family("gemma", ("gemma", "gemma2"), "causal", DECODER_BLOCKS),
    Family("bert", ("bert", "roberta", "xlm-roberta"), "encoder", ("encoder.layer", "bert.encoder.layer")),
)


def family_for(model_type: str) -> Family | None:
    """The family covering a config's `model_type`, or None."""
    for fam in FAMILIES:
        if model_type in fam.model_types:
            return fam
    return None


def supported_types() -> list[str]:
    """Every supported `model_type`, for error messages."""
    return [t for f in FAMILIES for t in f.model_types]


def block_linears(block: nn.Module) -> dict[str, nn.Linear]:
    """The nn.Linear layers of one block, by their name inside the block, in definition order."""
    return {name: m for name, m in block.named_modules() if isinstance(m, nn.Linear)}


def block_output(out: object) -> torch.Tensor:
    """The hidden states a block returns (blocks return a tensor or a tuple starting with it)."""
    return out[0] if isinstance(out, tuple | list) else out  # type: ignore[index]
