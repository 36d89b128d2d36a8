"""Data: text for calibration and evaluation (and generated datasets)."""

from lowbit.data.text import calibration_windows, read_text, tokenize_text

__all__ = ["calibration_windows", "read_text", "tokenize_text"]
