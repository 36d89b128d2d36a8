"""The one error type users see: a message that says what is wrong and how to fix it."""

from __future__ import annotations

from pathlib import Path


class LowbitError(Exception):
    """A problem with the user's input; the CLI prints it on one line and exits with code 2."""


def already_exists(path: str | Path, what: str = "--out path") -> LowbitError:
    """The error for an output path that exists already (lowbit never writes over anything)."""
    return LowbitError(f"{path} already exists; choose a new {what} or remove the old one")


def not_finite(what: str, fix: str = "the checkpoint is broken") -> LowbitError:
    """The error for tensors holding NaN or Inf, naming what holds them and what to do."""
    return LowbitError(f"{what} holds NaN or Inf values; {fix}")
