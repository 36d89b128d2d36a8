"""Capture the inputs of a model's first block, then push them through the blocks one at a time."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from lowbit.models.families import Family, block_output


class _StopForward(Exception):
    pass


@dataclass
class BlockInputs:
    """Calibration activations at the input of the current block: one (hidden, args, kwargs) per mini-batch."""

    hidden: list[torch.Tensor] = field(default_factory=list)
    args: list[tuple] = field(default_factory=list)
    kwargs: list[dict] = field(default_factory=list)
    family: Family | None = None  # the model's family, for block-level handlers that need its layout

    def outputs(self, block: nn.Module) -> Iterator[torch.Tensor]:
        """The block's outputs for each mini-batch (computed lazily, without gradients)."""
        with torch.no_grad():
            for h, a, k in zip(self.hidden, self.args, self.kwargs, strict=True):
                yield block_output(block(h, *a, **k))

    def run(self, block: nn.Module) -> None:
        """Run the block on every mini-batch and discard the outputs (for hooks that collect statistics)."""
        for _ in self.outputs(block):
            pass

    def advance(self, block: nn.Module) -> None:
        """Replace the stored inputs by the block's outputs, one mini-batch at a time (memory of one block)."""
        for i, out in enumerate(self.outputs(block)):
            self.hidden[i] = out

    def nbytes(self) -> int:
        """Bytes held by the stored hidden states."""
        return sum(h.numel() * h.element_size() for h in self.hidden)


def capture_block_inputs(
    model: nn.Module, family: Family, tokens: torch.Tensor, batch_size: int = 8
) -> BlockInputs:
    """Run the embeddings on token windows [N, L] and record what the first block receives."""
    blocks = family.blocks(model)
    store = BlockInputs(family=family)

    def hook(_mod: nn.Module, args: tuple, kwargs: dict) -> None:
        if args:
            hidden, rest = args[0], tuple(args[1:])
        else:
            hidden, rest = kwargs.pop("hidden_states"), ()
        store.hidden.append(hidden.detach())
        store.args.append(rest)
        store.kwargs.append(dict(kwargs))
        raise _StopForward

    handle = blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            for s in range(0, tokens.shape[0], batch_size):
                ids = tokens[s:s + batch_size]
                extra = {"use_cache": False} if family.kind == "causal" else {}
                try:
                    model(input_ids=ids, attention_mask=torch.ones_like(ids), **extra)
                except _StopForward:
                    pass
    finally:
        handle.remove()
    return store
