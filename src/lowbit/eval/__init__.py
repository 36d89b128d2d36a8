"""Evaluation: perplexity of causal LMs, embedding fidelity of encoders, checkpoint sizes."""

from lowbit.eval.fidelity import cosine_to_reference, embed
from lowbit.eval.perplexity import divergence, perplexity

__all__ = ["cosine_to_reference", "divergence", "embed", "perplexity"]
