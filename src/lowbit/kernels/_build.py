"""Compile a C source of ours into a per-user cache on first use (atomically) and return the library path."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def cache_dir() -> Path:
    """Where built kernels live: $LOWBIT_CACHE_DIR/kernels, else $XDG_CACHE_HOME (or ~/.cache)/lowbit/kernels."""
    root = os.environ.get("LOWBIT_CACHE_DIR")
    if root:
        return Path(root) / "kernels"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "lowbit" / "kernels"


def compiler() -> str | None:
    """The C compiler to use: $CC, gcc, cc or clang, whichever exists first."""
    for cand in (os.environ.get("CC"), "gcc", "cc", "clang"):
        if cand and shutil.which(cand):
            return cand
    return None


def _cpu_key() -> str:
    """The CPU's model and flags (a -march=native build is only valid on the CPU it was made for)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "|".join(sorted({ln for ln in lines if ln.startswith(("flags", "model name"))}))
    except OSError:
        return ""


def build_shared(source: Path, cc: str | None, variants: list[list[str]], native: bool = False,
                 force: bool = False) -> Path:
    """Compile `source` with the first flag variant that works; cached by a hash of source, flags and CPU."""
    if cc is None:
        raise RuntimeError("no C compiler found (tried $CC, gcc, cc, clang); install gcc or set CC")
    if not source.is_file():
        raise RuntimeError(f"C source {source} is missing from this installation")
    text = source.read_bytes()
    errors = []
    for flags in variants:
        tag = " ".join([cc, *flags, sys.platform, _cpu_key() if native else ""])
        key = hashlib.sha256(text + tag.encode()).hexdigest()[:16]
        out = cache_dir() / f"{source.stem}_{key}.so"
        if out.is_file() and not force:
            return out
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
        os.close(fd)
        proc = subprocess.run([cc, *flags, str(source), "-o", tmp], capture_output=True, text=True)
        if proc.returncode == 0:
            os.replace(tmp, out)  # atomic: concurrent builders never see a half-written file
            return out
        os.unlink(tmp)
        errors.append(f"{cc} {' '.join(flags)}:\n{proc.stderr.strip()}")
    raise RuntimeError(f"could not compile {source.name}:\n" + "\n\n".join(errors))
