"""The packed-linear C library (csrc/qgemv.c + csrc/decode.c): CPU levels and run-time dispatch, build, load,
ctypes signatures, feature queries, and the per-thread scratch buffers and pointer helpers its callers share.

The same sources are compiled once per CPU level with fixed flags (never -march=native, so a cached build is
valid on any machine) and the library of the level this CPU runs is loaded: "avx512" (AVX-512 F/BW/DQ/VL +
VNNI + BF16), "avx2" (AVX2 + FMA + F16C) or "generic" (portable C). `LOWBIT_CPU=avx512|avx2|generic` lowers
the level (for tests and comparisons); a level above the CPU's is clamped to the CPU's with a warning, since the
same setting may be shared by machines that differ."""

from __future__ import annotations

import ctypes
import os
import threading
import warnings
from pathlib import Path

import torch

from lowbit.errors import LowbitError
from lowbit.kernels.build import build_shared, compiler

CSRC = Path(__file__).with_name("csrc")
GEMV_SOURCE = CSRC / "qgemv.c"  # self-contained: the packed GEMV/GEMM and dequantize kernels
SOURCES = (CSRC / "decode.c",)  # one library, one translation unit: decode.c includes qgemv.c and adds RMSNorm,
# attention and the decoder layer
FLAGS = ["-O3", "-fPIC", "-shared", "-fno-strict-aliasing"]
LEVELS = ("generic", "avx2", "avx512")  # lowest first; the index is csrc's LBQ_LEVEL
_AVX2 = ["-mavx2", "-mfma", "-mf16c"]
LEVEL_FLAGS = {"generic": [], "avx2": _AVX2,
               "avx512": [*_AVX2, "-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx512vnni",
                          "-mavx512bf16"]}
_CPUINFO_FLAGS = {"avx2": ("avx2", "fma", "f16c"),
                  "avx512": ("avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni", "avx512_bf16")}
_lock = threading.Lock()
_libs: dict[str, ctypes.CDLL | None] = {}
_machine: str | None = None


def _probe_level() -> str:
    """The best level of this CPU: csrc/cpu.c's __builtin_cpu_supports, else /proc/cpuinfo's flags."""
    try:
        lib = ctypes.CDLL(str(build_shared(CSRC / "cpu.c", compiler(), [["-O1", "-fPIC", "-shared"]])))
        return LEVELS[int(lib.lowbit_cpu_level())]
    except (RuntimeError, OSError):
        pass
    try:
        flags = set(next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines()
                         if ln.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        return "generic"
    if not set(_CPUINFO_FLAGS["avx2"]) <= flags:
        return "generic"
    return "avx512" if set(_CPUINFO_FLAGS["avx512"]) <= flags else "avx2"


def machine_level() -> str:
    """The best kernel level this CPU runs ("avx512", "avx2" or "generic"), whatever $LOWBIT_CPU says."""
    global _machine
    if _machine is None:
        _machine = _probe_level()
    return _machine


def cpu_level() -> str:
    """The kernel level in use: the machine's, or the lower one $LOWBIT_CPU asks for (a higher one is clamped
    to the machine's with a warning; an unknown name raises LowbitError)."""
    best = machine_level()
    want = os.environ.get("LOWBIT_CPU", "").strip().lower()
    if want in ("", "auto", "native"):
        return best
    if want not in LEVELS:
        raise LowbitError(f"LOWBIT_CPU={want!r} is not a kernel level; use one of {', '.join(LEVELS)} (or unset it)")
    if LEVELS.index(want) > LEVELS.index(best):
        warnings.warn(f"LOWBIT_CPU={want} is above what this CPU runs; using {best}", RuntimeWarning, stacklevel=2)
        return best
    return want


def levels_available() -> tuple[str, ...]:
    """The levels this machine can run, lowest first (what tests compare)."""
    return LEVELS[: LEVELS.index(machine_level()) + 1]


def _declare(lib: ctypes.CDLL) -> None:
    """Set the ctypes signature of every entry point."""
    p, i64, i32, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
    lib.lbq_set_threads.argtypes, lib.lbq_set_threads.restype = [i32], None
    lib.lbq_gemm.argtypes = [p, i64, i64, p, i64, i64, i32, i64, i64, p, p, i64, p, p, p]
    lib.lbq_dequant.argtypes = [p, i64, i64, i64, i32, i64, i64, p, p, i64, i32, p]
    lib.lbq_dequant_int4pack_bf16.argtypes = [p, i64, i64, i64, i64, p, p, i64, i32, p]
    lib.lbq_quant_act.argtypes = [p, i32, i64, i64, i32, i64, i64, p, p, p]
    lib.lbq_gemv_i8.argtypes = [p, p, p, i64, i64, p, i64, i64, i32, i64, i64, p, p, i64, p, p, i32]
    lib.lbq_linear_i8.argtypes = [p, i32, i64, i64, p, i64, i64, i32, i64, i64, p, p, i64, p, p, i32, p, p, p, i32]
    lib.lbq_rmsnorm.argtypes = [p, p, i64, i64, f32, i32, p]
    lib.lbq_attn1.argtypes = [p, p, p, i64, i64, i64, i64, i64, f32, p, p]
    lib.lbq_multi.argtypes = [p, i32, p, i32, i64, i32, i64, i64, i32, p, i32, p, i32]
    lib.lbq_layer.argtypes = [p, p, p, p, f32, p, p, p, p, i32, i32, p, p, p, p, i64, i64, i64, i64, i64, f32, p,
                              i32]
    for f in (lib.lbq_level, lib.lbq_has_vnni, lib.lbq_has_q4bf16, lib.lbq_has_bf16):
        f.argtypes, f.restype = [], i32
    lib.lbq_gemv_q4_bf16.argtypes = [p, i64, i64, p, i64, i64, i64, i64, p, p, i64, p, p, i32, p, p, i32]
    lib.lbq_gemv_bf16.argtypes = [p, i64, i64, p, i64, p, p, i32]
    for f in (lib.lbq_layer, lib.lbq_multi, lib.lbq_rmsnorm, lib.lbq_attn1, lib.lbq_gemv_bf16, lib.lbq_linear_i8,
              lib.lbq_gemv_q4_bf16, lib.lbq_gemm, lib.lbq_dequant, lib.lbq_dequant_int4pack_bf16,
              lib.lbq_quant_act, lib.lbq_gemv_i8):
        f.restype = None


def build_level(level: str) -> Path:
    """Compile the library of `level` into the cache (if not there yet) and return its path."""
    flags = FLAGS + LEVEL_FLAGS[level]
    return build_shared(SOURCES, compiler(), [flags + ["-fopenmp"], flags])


def get_lib(stacklevel: int = 3, level: str | None = None) -> ctypes.CDLL | None:
    """The C kernels of `level` (default: `cpu_level()`), compiled on first use; None (with a warning) when no
    compiler works."""
    level = level or cpu_level()
    lib = _libs.get(level)
    if lib is not None or level in _libs:
        return lib
    with _lock:
        if level in _libs:
            return _libs[level]
        try:
            lib = ctypes.CDLL(str(build_level(level)))
        except (RuntimeError, OSError) as exc:
            warnings.warn(f"lowbit packed-linear C kernels unavailable ({exc}); using the PyTorch reference, "
                          "which is correct but slower. Install gcc to get the fast path.", RuntimeWarning,
                          stacklevel=stacklevel)
            _libs[level] = None
            return None
        _declare(lib)
        if LEVELS[lib.lbq_level()] != level:
            raise RuntimeError(f"the {level} kernel build reports level {LEVELS[lib.lbq_level()]}: flags and "
                               "csrc/qgemv.h disagree")
        _libs[level] = lib
        return lib


def lib_level(lib: ctypes.CDLL) -> str:
    """The level a loaded library was built for."""
    return LEVELS[lib.lbq_level()]


def describe() -> str:
    """One line for logs and CI: the kernel level in use, the machine's, and $LOWBIT_CPU."""
    forced = os.environ.get("LOWBIT_CPU")
    lib = get_lib()
    state = "" if lib is not None else "; C kernels unavailable, PyTorch reference in use"
    return f"kernel level {cpu_level()} (machine {machine_level()}, LOWBIT_CPU={forced or 'unset'}{state})"


def has_int8(lib: ctypes.CDLL) -> bool:
    """Whether the build has the int8-activation kernels (c-int8; every level does)."""
    return bool(lib.lbq_has_vnni())


def has_bf16(lib: ctypes.CDLL) -> bool:
    """Whether the build has the bf16 GEMV (dense_linear; the SIMD levels)."""
    return bool(lib.lbq_has_bf16())


def has_q4bf16(lib: ctypes.CDLL) -> bool:
    """Whether the build has the exact 4-bit kernel for bf16 activations (vdpbf16ps, or fp32 FMA of the widened
    values)."""
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
