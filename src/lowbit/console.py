"""Console notes on stderr: what a user must know about a run that still succeeded (fallbacks, padding)."""

from __future__ import annotations

import sys


def note(msg: str) -> None:
    """A one-line note on stderr (re-quantization, fallbacks): the user must know when codes were not carried over."""
    print(f"lowbit: note: {msg}", file=sys.stderr, flush=True)
