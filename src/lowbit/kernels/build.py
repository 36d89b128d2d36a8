"""Compile C sources of ours into one shared library in a per-user cache on first use (atomically)."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
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


def _included(source: Path) -> list[Path]:
    """The local files `source` includes (#include "x.h" next to it), and those they include, so that editing
    any of them rebuilds."""
    found: list[Path] = []
    todo = [source]
    while todo:
        f = todo.pop()
        names = re.findall(r'^\s*#\s*include\s+"([^"]+)"', f.read_text(errors="replace"), flags=re.M)
        for n in names:
            p = f.parent / n
            if p.is_file() and p not in found and p != source:
                found.append(p)
                todo.append(p)
    return found


def build_shared(source: Path | Sequence[Path], cc: str | None, variants: list[list[str]], native: bool = False,
                 force: bool = False) -> Path:
    """Compile `source` (one C file, or several linked into one library, named after the first) with the first
    flag variant that works; cached by a hash of the sources, the local headers they include and the flags, and
    by the CPU's model and flags too when `native` or a variant uses -march=native (only valid on that CPU)."""
    if cc is None:
        raise RuntimeError("no C compiler found (tried $CC, gcc, cc, clang); install gcc or set CC")
    sources = [source] if isinstance(source, Path) else list(source)
    for src in sources:
        if not src.is_file():
            raise RuntimeError(f"C source {src} is missing from this installation")
    text = b"".join(src.read_bytes() for src in sources)
    headers = sorted({h for src in sources for h in _included(src)})
    text += b"".join(h.read_bytes() for h in headers)
    errors = []
    stem = sources[0].stem
    for flags in variants:
        tag = " ".join([cc, *flags, sys.platform, _cpu_key() if native or "-march=native" in flags else ""])
        key = hashlib.sha256(text + tag.encode()).hexdigest()[:16]
        out = cache_dir() / f"{stem}_{key}.so"
        if out.is_file() and not force:
            return out
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
        os.close(fd)
        proc = subprocess.run([cc, *flags, *(str(src) for src in sources), "-o", tmp], capture_output=True, text=True)
        if proc.returncode == 0:
            os.replace(tmp, out)  # atomic: concurrent builders never see a half-written file
            return out
        os.unlink(tmp)
        errors.append(f"{cc} {' '.join(flags)}:\n{proc.stderr.strip()}")
    names = ", ".join(src.name for src in sources)
    raise RuntimeError(f"could not compile {names}:\n" + "\n\n".join(errors))
