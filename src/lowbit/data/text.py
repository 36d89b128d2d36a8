"""Text files to token tensors: calibration windows and evaluation streams."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import torch

from lowbit.errors import LowbitError

MIN_SEQ_LEN = 8  # shorter calibration windows hold little more than the special tokens


class Tokenizer(Protocol):
    """What lowbit calls on a tokenizer; a transformers tokenizer (PreTrainedTokenizerBase) is one.

    Calling it on a text (or a batch of texts) gives a mapping with "input_ids" (and "attention_mask");
    decode turns ids back into text. Special-token ids (cls_token_id, sep_token_id, bos_token_id,
    eos_token_id) are read with getattr, since a tokenizer may lack them.
    """

    def __call__(self, text: str | list[str], /, **kwargs: Any) -> Mapping[str, Any]: ...

    def decode(self, token_ids: list[int], /, skip_special_tokens: bool = False) -> str | list[str]: ...


def read_text(path: str | Path, what: str = "text") -> str:
    """Read a UTF-8 text file, with clear errors for a missing, binary or empty file."""
    p = Path(path)
    if not p.is_file():
        raise LowbitError(f"{what} file {p} does not exist; give a path to a UTF-8 text file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise LowbitError(f"{what} file {p} is not UTF-8 text ({e}); convert it with iconv first") from e
    if not text.strip():
        raise LowbitError(f"{what} file {p} is empty; it needs some real text (a few KB at least)")
    return text


def tokenize_text(tokenizer: Tokenizer, text: str) -> torch.Tensor:
    """All token ids of a text, without special tokens, as a 1-D LongTensor."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # silence "sequence longer than the model's maximum" warnings
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def _special(tokenizer: Tokenizer) -> tuple[list[int], list[int]]:
    """Tokens a model expects around a window: [CLS] .. [SEP] for encoders, <s> .. for decoders."""
    cls_, sep = getattr(tokenizer, "cls_token_id", None), getattr(tokenizer, "sep_token_id", None)
    if cls_ is not None and sep is not None:
        return [cls_], [sep]
    bos = getattr(tokenizer, "bos_token_id", None)
    return ([bos] if bos is not None else []), []


def calibration_windows(
    tokenizer: Tokenizer, text: str, n_samples: int = 128, seq_len: int = 256, seed: int = 0,
    limit: int | None = None,
) -> torch.Tensor:
    """n_samples windows [n, seq_len] of consecutive tokens at random offsets, with the model's special tokens.

    `limit` is the model's context (max_position_embeddings): longer windows are refused, as are texts shorter
    than one window (a window is never shrunk silently).
    """
    check_calibration(n_samples, seq_len, limit)
    ids = tokenize_text(tokenizer, text)
    head, tail = _special(tokenizer)
    body = seq_len - len(head) - len(tail)
    if ids.numel() < 16:
        raise LowbitError(f"the calibration text has only {ids.numel()} tokens; give at least a few KB of text")
    if ids.numel() < body:
        raise LowbitError(f"the calibration text has {ids.numel()} tokens, fewer than one window of --seq-len "
                          f"{seq_len}; give a longer text or a --seq-len of at most "
                          f"{ids.numel() + len(head) + len(tail)}")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - body + 1, (n_samples,), generator=g)
    rows = [torch.cat([torch.tensor(head, dtype=torch.long), ids[s:s + body], torch.tensor(tail, dtype=torch.long)])
            for s in starts.tolist()]
    return torch.stack(rows)


def check_calibration(n_samples: int, seq_len: int, limit: int | None = None, batch_size: int = 1) -> None:
    """Refuse calibration settings that cannot work: fewer than one window, windows too short or longer than the
    model's context, batches of fewer than one window."""
    for name, v, low in (("--n-samples", n_samples, 1), ("--seq-len", seq_len, MIN_SEQ_LEN),
                         ("--batch-size", batch_size, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise LowbitError(f"{name} must be an integer of at least {low}, got {v!r}")
    if limit is not None and seq_len > limit:
        raise LowbitError(f"--seq-len {seq_len} is longer than the model's context ({limit} tokens); give at most "
                          f"{limit}")
