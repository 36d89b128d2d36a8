"""Data: text for calibration and evaluation (and generated datasets)."""

from lowbit.data.shapes import shapes
from lowbit.data.sprites import sprites
from lowbit.data.text import Tokenizer, calibration_windows, read_text, tokenize_text

__all__ = ["Tokenizer", "calibration_windows", "read_text", "tokenize_text", "sprites", "shapes"]
