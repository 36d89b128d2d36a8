"""Bit-packed binary GEMM: XNOR/XOR + popcount on 64-bit words (XNOR-Net, Rastegari et al. 2016).

A value ``v`` is stored as one bit: 1 when ``not v >= 0`` (sign -1), 0 otherwise (sign +1, so
``sign(0) = +1``).  Bit ``j`` of word ``i`` holds element ``64 * i + j``; bits past ``K`` are 0.
For two packed rows the +-1 dot product is exact: ``dot = K - 2 * popcount(a XOR w)``.

The fast path is a small C library (``csrc/binary_gemm.c``) built on first use with the system C
compiler into a per-user cache directory keyed by a hash of the source and flags, then loaded with
ctypes.  It dispatches at run time between AVX-512 VPOPCNTDQ, AVX2 (vpshufb nibble lookup), scalar POPCNT and
generic C, so one build runs on any x86-64 (and other) CPU; ``LOWBIT_CPU=avx2|generic`` caps the automatic
choice as it does for the packed-linear kernels.  Without a compiler a pure-PyTorch implementation gives
the same integers, more slowly, and a warning says so.

Environment variables: ``LOWBIT_BINARY_BACKEND=torch`` forces the PyTorch path, ``LOWBIT_CACHE_DIR``
moves the build cache, ``CC`` picks the compiler.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from lowbit.kernels.build import build_shared, compiler
from lowbit.kernels.lib import cpu_level

__all__ = [
    "WORD_BITS",
    "backend",
    "binary_linear",
    "binary_matmul",
    "build_library",
    "kernel_info",
    "num_words",
    "pack_bits",
    "set_backend",
    "set_num_threads",
    "set_parallel_threshold",
    "unpack_bits",
    "use_backend",
]

WORD_BITS = 64
_SOURCE = Path(__file__).with_name("csrc") / "binary_gemm.c"
_BASE_FLAGS = ["-O3", "-fPIC", "-shared", "-ffp-contract=off", "-fno-strict-aliasing"]
_LEVEL_NAMES = {0: "c-generic", 1: "c-popcnt", 2: "c-avx2", 3: "c-avx512-vpopcntdq"}
_CAP = {"generic": 0, "avx2": 2, "avx512": 3}  # the highest binary level each $LOWBIT_CPU level allows
_NAME_TO_LEVEL = {v: k for k, v in _LEVEL_NAMES.items()}
_BACKENDS = ("auto", "torch", *_LEVEL_NAMES.values())

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_lib_tried = False
_forced: str | None = None  # None = auto


def num_words(k: int) -> int:
    """Number of 64-bit words holding ``k`` bits."""
    return (int(k) + WORD_BITS - 1) // WORD_BITS


# --------------------------------------------------------------------------- build and load


def _compiler() -> str | None:
    return compiler()


def build_library(force: bool = False) -> Path:
    """Compile ``binary_gemm.c`` into the cache (if not there yet) and return the shared library path.

    Raises RuntimeError with the compiler output when no variant of the flags compiles.
    """
    return build_shared(_SOURCE, _compiler(), [_BASE_FLAGS + ["-fopenmp"], _BASE_FLAGS], force=force)


def _declare(lib: ctypes.CDLL) -> None:
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.lb_cpu_level.restype = i32
    lib.lb_set_level.argtypes, lib.lb_set_level.restype = [i32], i32
    lib.lb_get_level.restype = i32
    lib.lb_set_threads.argtypes, lib.lb_set_threads.restype = [i32], None
    lib.lb_has_openmp.restype = i32
    lib.lb_set_parallel_threshold.argtypes, lib.lb_set_parallel_threshold.restype = [i64], None
    lib.lb_gemm_i32.argtypes, lib.lb_gemm_i32.restype = [p, p, i64, i64, i64, i64, p], None
    lib.lb_gemm_f32.argtypes, lib.lb_gemm_f32.restype = [p, p, i64, i64, i64, i64, p, p, p], None
    lib.lb_pack_f32.argtypes, lib.lb_pack_f32.restype = [p, i64, i64, i64, p], None
    lib.lb_linear_f32.argtypes = [p, i64, p, i64, i64, i64, i64, p, p, p, p]
    lib.lb_linear_f32.restype = None


def _get_lib() -> ctypes.CDLL | None:
    global _lib, _lib_tried
    if _lib is not None or _lib_tried:
        return _lib
    with _lock:
        if _lib_tried:
            return _lib
        _lib_tried = True
        if os.environ.get("LOWBIT_BINARY_BACKEND", "").lower() == "torch":
            return None
        try:
            lib = ctypes.CDLL(str(build_library()))
            _declare(lib)
            lib.lb_set_level(_auto_level(lib))
            lib.lb_set_threads(torch.get_num_threads())
            _lib = lib
        except (RuntimeError, OSError) as exc:
            warnings.warn(
                f"lowbit binary kernels: C build unavailable ({exc}); using the pure-PyTorch fallback, "
                "which gives identical results but is much slower. Install gcc to get the fast path.",
                RuntimeWarning,
                stacklevel=3,
            )
    return _lib


def _auto_level(lib: ctypes.CDLL) -> int:
    """The best level the CPU runs, capped by $LOWBIT_CPU."""
    return min(int(lib.lb_cpu_level()), _CAP[cpu_level()])


def backend() -> str:
    """Name of the active implementation: 'c-avx512-vpopcntdq', 'c-avx2', 'c-popcnt', 'c-generic' or 'torch'."""
    lib = None if _forced == "torch" else _get_lib()
    if lib is None:
        return "torch"
    return _LEVEL_NAMES[int(lib.lb_get_level())]


def set_backend(name: str = "auto") -> str:
    """Select an implementation ('auto', 'torch', 'c-generic', 'c-popcnt', 'c-avx2', 'c-avx512-vpopcntdq').

    A C level the CPU lacks raises ValueError. Returns the backend now active.
    """
    global _forced
    if name not in _BACKENDS:
        raise ValueError(f"unknown binary backend {name!r}; choose one of {', '.join(_BACKENDS)}")
    if name == "torch":
        _forced = "torch"
        return backend()
    lib = _get_lib()
    if lib is None:
        if name != "auto":
            raise ValueError(f"backend {name!r} needs the C library, which could not be built")
        _forced = None
        return backend()
    _forced = None
    if name == "auto":
        lib.lb_set_level(_auto_level(lib))
    else:
        want = _NAME_TO_LEVEL[name]
        if lib.lb_set_level(want) != want:
            lib.lb_set_level(_auto_level(lib))
            raise ValueError(f"this CPU does not support backend {name!r} (best: {backend()})")
    return backend()


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[str]:
    """Context manager: run the enclosed code with backend ``name``, then restore the previous one."""
    previous = backend()
    try:
        yield set_backend(name)
    finally:
        set_backend(previous)


def set_num_threads(n: int) -> None:
    """Number of threads the C kernels may use (default: torch.get_num_threads() at load time)."""
    lib = _get_lib()
    if lib is not None:
        lib.lb_set_threads(int(n))


def set_parallel_threshold(word_pairs: int) -> None:
    """Use several threads only when M * N * words exceeds this (default 2**25; 0 = always).

    On a shared machine a second thread that the OS does not schedule at once can cost milliseconds,
    more than a whole batch-64 4096x4096 product takes on one core, hence the high default.
    """
    lib = _get_lib()
    if lib is not None:
        lib.lb_set_parallel_threshold(int(word_pairs))


def kernel_info() -> dict[str, object]:
    """Backend, OpenMP availability and the CPU's best level, for benchmark reports."""
    lib = _get_lib()
    if lib is None:
        return {"backend": "torch", "openmp": False, "cpu_level": None}
    return {
        "backend": backend(),
        "openmp": bool(lib.lb_has_openmp()),
        "cpu_level": _LEVEL_NAMES[int(lib.lb_cpu_level())],
    }


# --------------------------------------------------------------------------- pure-PyTorch reference

_M1, _M2, _M4 = 0x5555555555555555, 0x3333333333333333, 0x0F0F0F0F0F0F0F0F


def _popcount_words(x: torch.Tensor) -> torch.Tensor:
    """Per-row popcount of int64 words ([..., Kw] -> [...] int32), SWAR bit tricks, no overflow."""
    # the masks clear bit 63 after each arithmetic shift, so signed shifts act like logical ones
    x = x - ((x >> 1) & _M1)
    x = (x & _M2) + ((x >> 2) & _M2)
    x = (x + (x >> 4)) & _M4  # one count (<= 8) per byte
    return x.view(torch.uint8).sum(-1, dtype=torch.int32)


def _torch_pack(x: torch.Tensor) -> torch.Tensor:
    k = x.shape[-1]
    kw = num_words(k)
    bits = torch.logical_not(x >= 0)
    if kw * WORD_BITS != k:
        bits = torch.nn.functional.pad(bits, (0, kw * WORD_BITS - k))
    bits = bits.reshape(*x.shape[:-1], kw, WORD_BITS).to(torch.int64)
    shifts = torch.arange(WORD_BITS, dtype=torch.int64, device=x.device)
    # distinct powers of two: the (wrapping) sum is their OR, bit 63 included
    return (bits << shifts).sum(-1)


def _torch_gemm(a: torch.Tensor, w: torch.Tensor, k: int) -> torch.Tensor:
    m, kw = a.shape
    n = w.shape[0]
    out = torch.empty(m, n, dtype=torch.int32)
    chunk = max(1, (1 << 21) // max(1, m * kw))
    for n0 in range(0, n, chunk):
        x = a[:, None, :] ^ w[None, n0 : n0 + chunk, :]
        out[:, n0 : n0 + chunk] = k - 2 * _popcount_words(x)
    return out


# --------------------------------------------------------------------------- public API


def _check_packed(t: torch.Tensor, name: str) -> None:
    if t.dtype != torch.int64:
        raise TypeError(f"{name} must be a packed int64 tensor from pack_bits(), got dtype {t.dtype}")
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D [rows, words], got shape {tuple(t.shape)}")
    if t.device.type != "cpu":
        raise ValueError(f"{name} must be on the CPU (binary kernels are CPU-only), got {t.device}")


def pack_bits(x: torch.Tensor) -> torch.Tensor:
    """Pack the signs of ``x`` along its last dim, 64 per word: [..., K] float -> [..., ceil(K/64)] int64."""
    if not torch.is_floating_point(x):
        raise TypeError(f"pack_bits expects a floating-point tensor, got {x.dtype}")
    if x.dim() == 0:
        raise ValueError("pack_bits needs at least one dimension (the one to pack)")
    x = x.detach().cpu()
    lib = None if _forced == "torch" else _get_lib()
    if lib is None or x.shape[-1] == 0:
        return _torch_pack(x)
    k = x.shape[-1]
    x2 = x.reshape(-1, k).to(torch.float32).contiguous()
    out = torch.empty(x2.shape[0], num_words(k), dtype=torch.int64)
    lib.lb_pack_f32(x2.data_ptr(), x2.shape[0], k, k, out.data_ptr())
    return out.reshape(*x.shape[:-1], num_words(k))


def unpack_bits(packed: torch.Tensor, k: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of pack_bits: [..., W] int64 -> [..., k] tensor of +1/-1."""
    if packed.dtype != torch.int64:
        raise TypeError(f"unpack_bits expects an int64 tensor from pack_bits(), got {packed.dtype}")
    if not 0 <= k <= packed.shape[-1] * WORD_BITS:
        raise ValueError(f"k={k} bits do not fit in {packed.shape[-1]} words of {WORD_BITS} bits")
    shifts = torch.arange(WORD_BITS, dtype=torch.int64, device=packed.device)
    bits = (packed.unsqueeze(-1) >> shifts) & 1
    bits = bits.reshape(*packed.shape[:-1], packed.shape[-1] * WORD_BITS)[..., :k]
    return (1 - 2 * bits).to(dtype)


def binary_matmul(a: torch.Tensor, w: torch.Tensor, k: int) -> torch.Tensor:
    """Exact +-1 dot products of packed rows: a [M, W], w [N, W] -> int32 [M, N] = K - 2 popcount(a ^ w)."""
    _check_packed(a, "a")
    _check_packed(w, "w")
    if a.shape[1] != w.shape[1]:
        raise ValueError(f"a has {a.shape[1]} words per row but w has {w.shape[1]}; pack both with the same K")
    if num_words(k) != a.shape[1]:
        raise ValueError(f"k={k} needs {num_words(k)} words per row, the packed rows have {a.shape[1]}")
    a, w = a.contiguous(), w.contiguous()
    lib = None if _forced == "torch" else _get_lib()
    if lib is None:
        return _torch_gemm(a, w, k)
    m, n = a.shape[0], w.shape[0]
    out = torch.empty(m, n, dtype=torch.int32)
    if m and n:
        lib.lb_gemm_i32(a.data_ptr(), w.data_ptr(), m, n, a.shape[1], k, out.data_ptr())
    return out


def binary_linear(
    x: torch.Tensor,
    w_packed: torch.Tensor,
    k: int,
    scale: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """y = (sign(x) @ sign(W)^T) * scale + bias with packed W [N, W]; x [..., K] float, y [..., N] float32.

    Bit for bit equal to ``F.linear(sign(x), sign(W)) * scale + bias`` in float32 (sign(0) = +1).
    """
    _check_packed(w_packed, "w_packed")
    if x.shape[-1] != k:
        raise ValueError(
            f"input has {x.shape[-1]} features but the binary weights were packed with K={k}; "
            "reshape the input or convert the layer again"
        )
    if num_words(k) != w_packed.shape[1]:
        raise ValueError(f"K={k} needs {num_words(k)} words per row, w_packed has {w_packed.shape[1]}")
    if x.device.type != "cpu":
        raise ValueError(f"binary kernels run on the CPU; move the input from {x.device} with .cpu()")
    n = w_packed.shape[0]
    for name, t in (("scale", scale), ("bias", bias)):
        if t is not None and t.numel() != n:
            raise ValueError(f"{name} must have {n} elements (one per output), got {t.numel()}")
    lead = x.shape[:-1]
    x2 = x.detach().reshape(-1, k).to(torch.float32).contiguous()
    sc = None if scale is None else scale.detach().reshape(n).to(torch.float32).contiguous()
    bi = None if bias is None else bias.detach().reshape(n).to(torch.float32).contiguous()
    lib = None if _forced == "torch" else _get_lib()
    if lib is None:
        y = _torch_gemm(_torch_pack(x2), w_packed.contiguous(), k).to(torch.float32)
        if sc is not None:
            y = y * sc
        if bi is not None:
            y = y + bi
        return y.reshape(*lead, n)
    m = x2.shape[0]
    out = torch.empty(m, n, dtype=torch.float32)
    if m and n:
        scratch = torch.empty(m, w_packed.shape[1], dtype=torch.int64)
        w_c = w_packed.contiguous()
        lib.lb_linear_f32(
            x2.data_ptr(),
            k,
            w_c.data_ptr(),
            m,
            n,
            w_c.shape[1],
            k,
            None if sc is None else sc.data_ptr(),
            None if bi is None else bi.data_ptr(),
            scratch.data_ptr(),
            out.data_ptr(),
        )
    return out.reshape(*lead, n)
