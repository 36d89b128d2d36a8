"""lowbit: make neural networks low-bit for real."""

__version__ = "0.1.0"
