"""ctypes binding of csrc/orc_transport.c: exact ORC transport problems of all edges in one C call (threads).

Built on first use with lowbit.kernels.build, with the fixed flags of the CPU level in use
(lowbit.kernels.lib.cpu_level(), never -march=native, so the cache is valid on any machine); without a C compiler, or
with LOWBIT_ORC_BACKEND=python, :func:`available` is False and the SciPy max-flow path is used instead.
"""

from __future__ import annotations

import ctypes
import os
import threading
import warnings
from pathlib import Path

import numpy as np

from lowbit.kernels.build import build_shared, compiler
from lowbit.kernels.lib import LEVEL_FLAGS, cpu_level

__all__ = ["available", "backend", "set_backend", "transport_costs", "build_library"]

_SOURCE = Path(__file__).with_name("csrc") / "orc_transport.c"
_FLAGS = ["-O3", "-fPIC", "-shared", "-pthread", "-fno-strict-aliasing"]
_SERIAL_PAIRS = 50_000  # below this much work (sum of deg u * deg v) one thread is faster than starting more
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False
_forced: str | None = None


def build_library(force: bool = False) -> Path:
    """Compile orc_transport.c into the kernel cache and return its path."""
    variants = [_FLAGS + LEVEL_FLAGS[cpu_level()], _FLAGS]
    return build_shared(_SOURCE, compiler(), variants, force=force)


def _load() -> ctypes.CDLL | None:
    global _lib, _tried
    if _lib is not None or _tried:
        return _lib
    with _lock:
        if _tried:
            return _lib
        _tried = True
        if os.environ.get("LOWBIT_ORC_BACKEND", "").lower() == "python":
            return None
        try:
            lib = ctypes.CDLL(str(build_library()))
        except (RuntimeError, OSError) as exc:
            warnings.warn(
                f"lowbit.graphs: C curvature solver unavailable ({exc}); using the SciPy max-flow path "
                "(same values, slower). Install gcc for the fast path.",
                RuntimeWarning,
                stacklevel=3,
            )
            return None
        p, i64 = ctypes.c_void_p, ctypes.c_int64
        lib.orc_transport.argtypes = [i64, p, p, p, p, i64, p, i64, i64, p, p, p, i64, i64, ctypes.c_int, p, p]
        lib.orc_transport.restype = ctypes.c_int
        _lib = lib
    return _lib


def available() -> bool:
    """True when the C solver is built and selected (backend 'auto' or 'c')."""
    return _forced != "python" and _load() is not None


def backend() -> str:
    """'c' (the C solver) or 'python' (the SciPy path): what ollivier_ricci uses now."""
    return "c" if available() else "python"


def set_backend(name: str = "auto") -> str:
    """Select 'auto' (C if it builds), 'c' (raise if it does not) or 'python'; returns the active backend."""
    global _forced
    if name not in ("auto", "c", "python"):
        raise ValueError(f"unknown curvature backend {name!r}; choose 'auto', 'c' or 'python'")
    if name == "c" and _load() is None:
        raise RuntimeError("the C curvature solver could not be built or loaded (see the earlier warning)")
    _forced = None if name == "auto" else name
    return backend()


def _ptr(a: np.ndarray | None) -> int | None:
    return None if a is None else a.ctypes.data


def transport_costs(
    indptr: np.ndarray, indices: np.ndarray, n: int, dense: np.ndarray | None, k1: np.ndarray | None,
    k2: np.ndarray | None, u: np.ndarray, v: np.ndarray, p: int, q: int, threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact transport cost and scale (W1 = cost / scale) of the edges (u, v), deg u <= deg v, in C."""
    lib = _load()
    if lib is None:
        raise RuntimeError("C curvature solver not available")
    indptr = np.ascontiguousarray(indptr, dtype=np.int64)
    indices = np.ascontiguousarray(indices, dtype=np.int64)
    u = np.ascontiguousarray(u, dtype=np.int64)
    v = np.ascontiguousarray(v, dtype=np.int64)
    deg = np.diff(indptr)
    work = deg[u] * deg[v]
    order = np.ascontiguousarray(np.argsort(-work, kind="stable"), dtype=np.int64)
    if threads is None:
        threads = 1 if work.sum() < _SERIAL_PAIRS else os.cpu_count() or 1
    cost = np.zeros(u.size, dtype=np.int64)
    scale = np.ones(u.size, dtype=np.int64)
    if dense is not None:
        dense = np.ascontiguousarray(dense, dtype=np.uint8)
        k1 = k2 = None
    else:
        k1 = np.ascontiguousarray(k1, dtype=np.int64)
        k2 = np.ascontiguousarray(k2, dtype=np.int64)
    rc = lib.orc_transport(
        n, _ptr(indptr), _ptr(indices), _ptr(dense), _ptr(k1), 0 if k1 is None else k1.size, _ptr(k2),
        0 if k2 is None else k2.size, u.size, _ptr(u), _ptr(v), _ptr(order), p, q,
        max(1, int(threads)), _ptr(cost), _ptr(scale),
    )
    if rc != 0:
        raise MemoryError("C curvature solver: out of memory")
    return cost, scale
