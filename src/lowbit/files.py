"""Atomic outputs: everything lowbit writes appears whole under its final name, or not at all."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lowbit.errors import already_exists


def publish(tmp: Path, out: Path) -> None:
    """Rename a finished temporary file or directory to `out`, with the permissions a plain `open` or `mkdir`
    would have given it (mkstemp / mkdtemp make them private to the owner)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, (0o777 if tmp.is_dir() else 0o666) & ~umask)
    os.replace(tmp, out)


@contextmanager
def atomic_output(out: Path, directory: bool = False, replace: bool = False,
                  what: str | None = None) -> Iterator[Path]:
    """Yield a temporary file (or directory) beside `out` that becomes `out` only if the block finishes.

    Without `replace`, an existing `out` is an error (inputs are never overwritten); `what` names the output in
    that error (default: "--out directory" or "--out path").
    """
    if out.exists() and not replace:
        raise already_exists(out, what or ("--out directory" if directory else "--out path"))
    out.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{out.name}.tmp-"
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=out.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=out.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        publish(tmp, out)
    except BaseException:
        if directory:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: dict, indent: int = 2, replace: bool = True) -> None:
    """Write `obj` as JSON to `path` atomically (replacing an older version of that file by default)."""
    with atomic_output(path, replace=replace) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent) + "\n")


def save_safetensors(tensors: dict, path: Path, replace: bool = False) -> None:
    """Write tensors to a safetensors file atomically, tagged as written by lowbit."""
    from safetensors.torch import save_file

    with atomic_output(path, replace=replace) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", "lowbit": "1"})
