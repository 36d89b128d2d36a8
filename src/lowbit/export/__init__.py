"""Writing: lowbit checkpoints, and other tools' formats (compressed-tensors for vLLM, GGUF for llama.cpp)."""

from lowbit.export.checkpoint import QUANT_FILE, save_quantized
from lowbit.models.checkpoint import load  # its old home was here

__all__ = ["QUANT_FILE", "EXPORT_FORMATS", "export_model", "load", "save_quantized"]

EXPORT_FORMATS = ("compressed-tensors", "gguf")


def export_model(
    src: str, out: str, format: str, gguf_type: str = "Q4_0", bits: int = 4, group_size: int = 128
) -> dict:
    """Export a lowbit checkpoint (codes carried over) or a float model (RTN on the fly) to another tool's format.

    `format` is "compressed-tensors" (a directory vLLM loads) or "gguf" (one llama.cpp file of `gguf_type`);
    `bits`/`group_size` set the RTN format used when a float source goes to compressed-tensors. The result
    carries the export's seconds and the process's peak RSS (MiB): the export reads one layer at a time.
    """
    import time
    from pathlib import Path

    from lowbit.errors import LowbitError, already_exists
    from lowbit.memory import peak_rss_mb
    from lowbit.quantizers import WeightSpec

    if format not in EXPORT_FORMATS:
        raise LowbitError(f"unknown export format {format!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    if Path(out).exists():
        raise already_exists(out)
    if format == "gguf":
        from lowbit.export.gguf_writer import GGUF_TYPES, export_gguf

        if gguf_type not in GGUF_TYPES:
            raise LowbitError(f"unknown GGUF type {gguf_type!r}; choose one of {', '.join(GGUF_TYPES)}")
        from lowbit.export.source import open_source

        t0 = time.perf_counter()
        res = export_gguf(open_source(src), Path(out), gguf_type)
    else:
        from lowbit.export.compressed_tensors import export_compressed_tensors, strategy
        from lowbit.export.source import open_source

        spec = WeightSpec(bits, group_size, True)
        strategy(spec)
        t0 = time.perf_counter()
        res = export_compressed_tensors(open_source(src), Path(out), spec)
    return {**res, "export_seconds": round(time.perf_counter() - t0, 3), "peak_rss_mb": round(peak_rss_mb(), 1)}
