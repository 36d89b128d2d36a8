"""Straight-through gradient estimators: a forward value with the gradient of another expression.

``straight_through(x, y)`` returns y in the forward pass and passes the incoming gradient to x unchanged
(the straight-through estimator, Bengio et al. 2013): it is written x + (y - x).detach(), so that y is
computed once, with or without autograd, and nothing flows into it. Every quantizer that rounds with
straight-through gradients (activations, PACT, CBQ's fp16 step sizes) uses this one function.

Note that x + (y - x) equals y in value but not always in sign of zero: y = -0.0 comes out as +0.0.
"""

from __future__ import annotations

import torch

__all__ = ["round_ste", "straight_through"]


def straight_through(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """y in the forward pass, the gradient of x in the backward pass: x + (y - x).detach()."""
    return x + (y - x).detach()


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) (half to even) with the straight-through gradient d/dx = 1."""
    return straight_through(x, torch.round(x))
