"""Writing: lowbit checkpoints, and other tools' formats (compressed-tensors for vLLM, GGUF for llama.cpp)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from lowbit.errors import LowbitError, already_exists
from lowbit.export.checkpoint import QUANT_FILE, save_quantized
from lowbit.memory import peak_rss_mb
from lowbit.models.checkpoint import load  # its old home was here
from lowbit.quantizers import WeightSpec

__all__ = ["EXPORTERS", "EXPORT_FORMATS", "QUANT_FILE", "export_model", "load", "save_quantized"]


def _gguf(src: str, out: Path, gguf_type: str, bits: int, group_size: int) -> dict:
    from lowbit.export.gguf_writer import GGUF_TYPES, export_gguf
    from lowbit.export.source import open_source

    if gguf_type not in GGUF_TYPES:
        raise LowbitError(f"unknown GGUF type {gguf_type!r}; choose one of {', '.join(GGUF_TYPES)}")
    return export_gguf(open_source(src), out, gguf_type)


def _compressed_tensors(src: str, out: Path, gguf_type: str, bits: int, group_size: int) -> dict:
    from lowbit.export.compressed_tensors import export_compressed_tensors, strategy
    from lowbit.export.source import open_source

    spec = WeightSpec(bits, group_size, True)
    strategy(spec)
    return export_compressed_tensors(open_source(src), out, spec)


# format -> fn(src, out, gguf_type, bits, group_size) that checks its options, opens the source and writes
EXPORTERS: dict[str, Callable[[str, Path, str, int, int], dict]] = {
    "compressed-tensors": _compressed_tensors, "gguf": _gguf,
}
EXPORT_FORMATS = tuple(EXPORTERS)


def export_model(
    src: str, out: str, format: str, gguf_type: str = "Q4_0", bits: int = 4, group_size: int = 128
) -> dict:
    """Export a lowbit checkpoint (codes carried over) or a float model (RTN on the fly) to another tool's format.

    `format` is "compressed-tensors" (a directory vLLM loads) or "gguf" (one llama.cpp file of `gguf_type`);
    `bits`/`group_size` set the RTN format used when a float source goes to compressed-tensors. The result
    carries the export's seconds and the process's peak RSS (MiB): the export reads one layer at a time.
    """
    if format not in EXPORTERS:
        raise LowbitError(f"unknown export format {format!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    if Path(out).exists():
        raise already_exists(out)
    t0 = time.perf_counter()
    res = EXPORTERS[format](src, Path(out), gguf_type, bits, group_size)
    return {**res, "export_seconds": round(time.perf_counter() - t0, 3), "peak_rss_mb": round(peak_rss_mb(), 1)}
