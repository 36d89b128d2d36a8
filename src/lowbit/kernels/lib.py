"""The packed-linear C library (csrc/qgemv.c + csrc/decode.c): build, load, ctypes signatures, CPU feature
queries, and the per-thread scratch buffers and pointer helpers its callers share."""

from __future__ import annotations

import ctypes
import threading
import warnings
from pathlib import Path

import torch

from lowbit.kernels.build import build_shared, compiler

CSRC = Path(__file__).with_name("csrc")
GEMV_SOURCE = CSRC / "qgemv.c"  # self-contained: the packed GEMV/GEMM and dequantize kernels
SOURCES = (CSRC / "decode.c",)  # one library, one translation unit: decode.c includes qgemv.c and adds RMSNorm,
# attention and the decoder layer
FLAGS = ["-O3", "-fPIC", "-shared", "-fno-strict-aliasing"]
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_lib_tried = False


def _declare(lib: ctypes.CDLL) -> None:
    """Set the ctypes signature of every entry point."""
    p, i64, i32, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
    lib.lbq_set_threads.argtypes, lib.lbq_set_threads.restype = [i32], None
    lib.lbq_gemm.argtypes = [p, i64, i64, p, i64, i64, i32, i64, i64, p, p, i64, p, p, p]
    lib.lbq_dequant.argtypes = [p, i64, i64, i64, i32, i64, i64, p, p, i64, i32, p]
    lib.lbq_dequant_int4pack_bf16.argtypes = [p, i64, i64, i64, i64, p, p, p]
    lib.lbq_quant_act.argtypes = [p, i32, i64, i64, i32, i64, i64, p, p, p]
    lib.lbq_gemv_i8.argtypes = [p, p, p, i64, i64, p, i64, i64, i32, i64, i64, p, p, i64, p, p, i32]
    lib.lbq_linear_i8.argtypes = [p, i32, i64, i64, p, i64, i64, i32, i64, i64, p, p, i64, p, p, i32, p, p, p, i32]
    lib.lbq_rmsnorm.argtypes = [p, p, i64, i64, f32, i32, p]
    lib.lbq_attn1.argtypes = [p, p, p, i64, i64, i64, i64, i64, f32, p, p]
    lib.lbq_multi.argtypes = [p, i32, p, i32, i64, i32, i64, i64, i32, p, i32, p, i32]
    lib.lbq_layer.argtypes = [p, p, p, p, f32, p, p, p, p, i32, i32, p, p, p, p, i64, i64, i64, i64, i64, f32, p,
                              i32]
    lib.lbq_has_vnni.argtypes, lib.lbq_has_vnni.restype = [], i32
    lib.lbq_has_q4bf16.argtypes, lib.lbq_has_q4bf16.restype = [], i32
    lib.lbq_gemv_q4_bf16.argtypes = [p, i64, i64, p, i64, i64, i64, i64, p, p, i64, p, p, i32, p, p, i32]
    lib.lbq_has_bf16.argtypes, lib.lbq_has_bf16.restype = [], i32
    lib.lbq_gemv_bf16.argtypes = [p, i64, i64, p, i64, p, p, i32]
    for f in (lib.lbq_layer, lib.lbq_multi, lib.lbq_rmsnorm, lib.lbq_attn1, lib.lbq_gemv_bf16, lib.lbq_linear_i8,
              lib.lbq_gemv_q4_bf16, lib.lbq_gemm, lib.lbq_dequant, lib.lbq_dequant_int4pack_bf16,
              lib.lbq_quant_act, lib.lbq_gemv_i8):
        f.restype = None


def get_lib(stacklevel: int = 3) -> ctypes.CDLL | None:
    """The C kernels, compiled on first use; None (with a warning) when no compiler works."""
    global _lib, _lib_tried
    with _lock:
        if _lib_tried:
            return _lib
        _lib_tried = True
        variants = [FLAGS + ["-march=native", "-fopenmp"], FLAGS + ["-march=native"], FLAGS]
        try:
            lib = ctypes.CDLL(str(build_shared(SOURCES, compiler(), variants, native=True)))
        except (RuntimeError, OSError) as exc:
            warnings.warn(f"lowbit packed-linear C kernels unavailable ({exc}); using the PyTorch reference, "
                          "which is correct but slower. Install gcc to get the fast path.", RuntimeWarning,
                          stacklevel=stacklevel)
            return None
        _declare(lib)
        _lib = lib
        return lib


def has_vnni(lib: ctypes.CDLL) -> bool:
    """Whether the build has the AVX-512 VNNI int8 kernels (c-int8)."""
    return bool(lib.lbq_has_vnni())


def has_bf16(lib: ctypes.CDLL) -> bool:
    """Whether the build has the bf16 GEMV (dense_linear)."""
    return bool(lib.lbq_has_bf16())


def has_q4bf16(lib: ctypes.CDLL) -> bool:
    """Whether the build has the exact 4-bit kernel for bf16 activations (vdpbf16ps)."""
    return bool(lib.lbq_has_q4bf16())


def ptr(t: torch.Tensor) -> int:
    """The address of t's data."""
    return t.data_ptr()


def ptr_or_none(t: torch.Tensor | None) -> int | None:
    """ptr(t), or None (a NULL pointer) for no tensor."""
    return None if t is None else t.data_ptr()


_scratch = threading.local()


def scratch_matrix(n: int, k: int, dtype: torch.dtype, tag: str = "buf") -> torch.Tensor:
    """A reused [n, k] buffer (one per thread, tag and dtype; no page faults per call)."""
    key = f"{tag}_{dtype}"
    buf = getattr(_scratch, key, None)
    if buf is None or buf.numel() < n * k:
        buf = torch.empty(n * k, dtype=dtype)
        setattr(_scratch, key, buf)
    return buf[: n * k].view(n, k)


def scratch_ptr(nbytes: int, tag: str) -> int:
    """The address of a reused per-thread byte buffer of at least `nbytes` (decode calls' int8/sum scratch)."""
    buf = _scratch.__dict__.get(tag)
    if buf is None or buf.numel() < nbytes:
        buf = torch.empty(max(nbytes, 1 << 16), dtype=torch.int8)
        setattr(_scratch, tag, buf)
    return buf.data_ptr()
