"""Atomic outputs (everything lowbit writes appears whole under its final name, or not at all), safe copies of a
model directory's side files, output-path checks and sha256 manifests."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from lowbit.errors import LowbitError, already_exists

MANIFEST = "lowbit_manifest.json"


def file_mode(directory: bool = False) -> int:
    """The permissions a plain `open` (0666) or `mkdir` (0777) gives under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def publish(tmp: Path, out: Path) -> None:
    """Rename a finished temporary file or directory to `out`, with the permissions a plain `open` or `mkdir`
    would have given it (mkstemp / mkdtemp make them private to the owner), the files inside included."""
    if tmp.is_dir():
        for f in tmp.rglob("*"):
            if f.is_file() and not f.is_symlink():
                os.chmod(f, file_mode())
    os.chmod(tmp, file_mode(tmp.is_dir()))
    os.replace(tmp, out)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def clean_stale(out: Path) -> None:
    """Remove temporary outputs for `out` left by a killed lowbit process (its pid, in the name, is gone)."""
    if not out.parent.is_dir():
        return
    for p in out.parent.glob(f".{out.name}.tmp-*"):
        pid = p.name[len(f".{out.name}.tmp-"):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)


@contextmanager
def atomic_output(out: Path, directory: bool = False, replace: bool = False,
                  what: str | None = None) -> Iterator[Path]:
    """Yield a temporary file (or directory) beside `out` that becomes `out` only if the block finishes.

    Without `replace`, an existing `out` is an error (inputs are never overwritten); `what` names the output in
    that error (default: "--out directory" or "--out path"). Temporary outputs of killed runs are removed first.
    """
    if (out.exists() or out.is_symlink()) and not replace:
        raise already_exists(out, what or ("--out directory" if directory else "--out path"))
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(out)
    prefix = f".{out.name}.tmp-{os.getpid()}-"
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


def inside(path: Path, root: Path) -> Path:
    """`path` with its symlinks resolved, refused unless it stays inside `root` (or, for a Hugging Face cache
    snapshot, inside that repository's blobs/ folder)."""
    real, base = path.resolve(), root.resolve()
    allowed = [base]
    if base.parent.name == "snapshots":
        allowed.append(base.parent.parent / "blobs")
    if not any(real == a or a in real.parents for a in allowed):
        raise LowbitError(f"{path} is a link to {real}, outside the model directory {root}; copy the real file "
                          "into the directory")
    return real


def copy_file(src: Path, dst: Path, root: Path) -> None:
    """Copy one regular file of the model directory `root` (links followed only inside it) to `dst`, with the
    permissions a plain `open` gives (never the source's mode, never a link)."""
    real = inside(src, root)
    if not real.is_file():
        raise LowbitError(f"{src} is not a regular file; remove it from the model directory")
    shutil.copyfile(real, dst, follow_symlinks=True)
    os.chmod(dst, file_mode())


def check_output(out: str | Path, inputs: Iterable[str | Path] = (), what: str = "--out") -> Path:
    """Refuse, before any work, an `out` that exists, equals or lies inside an input, or cannot be written."""
    p = Path(out).expanduser()
    if p.exists() or p.is_symlink():
        raise already_exists(p, f"{what} path")
    real = p.resolve()
    for src in inputs:
        s = Path(src).expanduser().resolve()
        if real == s or s in real.parents:
            raise LowbitError(f"{what} {p} lies inside the input {src}; write the output somewhere else")
    parent = real.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise LowbitError(f"{what} {p}: cannot write in {parent} (permission denied or not a directory); choose "
                          "a writable location")
    return p


def sha256_file(path: Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def hash_files(root: Path, names: Iterable[str]) -> dict[str, str]:
    """{name: sha256} of the named files of a directory."""
    return {n: sha256_file(root / n) for n in sorted(names)}


def write_manifest(out: Path, source: dict, extra: dict | None = None) -> dict:
    """Record the sha256 of every file in the output directory `out` (but the manifest), beside `source` (the
    hashes of the input's files) and `extra` (calibration text hash, settings); returns the manifest."""
    names = [f.name for f in out.iterdir() if f.is_file() and f.name != MANIFEST]
    manifest = {"format": "lowbit-manifest", "version": 1, "files": hash_files(out, names), "source": source,
                **(extra or {})}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_json(f: Path, fix: str) -> object:
    """The parsed JSON of file `f`, or a LowbitError saying it is not valid JSON and what to do (`fix`)."""
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LowbitError(f"{f} is not valid JSON ({e}); {fix}") from e


def verify_manifest(path: Path) -> dict:
    """Check every file a directory's manifest lists against its sha256; the manifest, or a LowbitError naming the
    first file that is missing or differs."""
    f = path / MANIFEST
    if not f.is_file():
        raise LowbitError(f"{path} has no {MANIFEST}; it was written by an older lowbit or another tool")
    manifest = read_json(f, "the manifest is damaged")
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise LowbitError(f"{f} has no 'files' mapping of name to sha256; the manifest is damaged")
    for name, digest in sorted(files.items()):
        p = path / name
        if Path(name).name != name or not p.is_file():
            raise LowbitError(f"{p} is listed in {MANIFEST} but missing; the directory is incomplete")
        if sha256_file(p) != digest:
            raise LowbitError(f"{p} differs from the sha256 recorded in {MANIFEST}; the file was changed or damaged")
    return manifest
