"""Read and write safetensors files tensor by tensor (plain file I/O), so a checkpoint is never held whole.

Memory-mapped loading keeps every touched page of the checkpoint resident until the file is closed, which
adds the checkpoint's size to the peak; reading each tensor into its destination keeps the peak at the
model plus one tensor.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import torch

from lowbit.errors import LowbitError, not_finite

QUANT = "lowbit_quant.json"
DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}


MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header


def damaged(path: Path, what: str) -> LowbitError:
    """The error for a damaged safetensors file: which file, what is wrong, what to do."""
    return LowbitError(f"{path} is corrupt or truncated ({what}); download or copy it again")


def _entry(path: Path, name: str, info: object, data_size: int) -> None:
    """Check one header entry: known dtype, a shape of non-negative ints, offsets inside the file that fit it."""
    if not isinstance(info, dict) or not isinstance(info.get("dtype"), str) or info["dtype"] not in DTYPES:
        raise damaged(path, f"tensor {name} has an unknown or missing dtype "
                            f"({info.get('dtype') if isinstance(info, dict) else info!r})")
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise damaged(path, f"tensor {name} has an invalid shape {shape!r}")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_size):
        raise damaged(path, f"tensor {name} has data offsets {offsets!r} outside the file's {data_size} data bytes")
    if offsets[1] - offsets[0] != math.prod(shape) * DTYPES[info["dtype"]].itemsize:
        raise damaged(path, f"tensor {name}: {offsets[1] - offsets[0]} bytes for a {info['dtype']} tensor of "
                            f"shape {shape}")


def read_header(path: Path) -> tuple[int, dict]:
    """Byte offset of the data and the tensor entries of one .safetensors file's header, every entry checked
    against the file's size (a LowbitError naming the file and tensor otherwise)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise damaged(path, f"{size} bytes, too short for a safetensors header")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, MAX_HEADER):
                raise damaged(path, f"the header claims {n} bytes but the file has {size}")
            header = json.loads(f.read(n))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise damaged(path, f"the header is not JSON ({e})") from e
    except OSError as e:
        raise LowbitError(f"cannot read {path} ({e})") from e
    if not isinstance(header, dict):
        raise damaged(path, "the header is not a JSON object")
    header.pop("__metadata__", None)
    for name, info in header.items():
        _entry(path, name, info, size - 8 - n)
    return 8 + n, header


def _read(f: BinaryIO, path: Path, name: str, offset: int, size: int, dtype: torch.dtype, shape: list[int]
          ) -> torch.Tensor:
    """One tensor read from an open file into fresh memory."""
    t = torch.empty(shape, dtype=dtype)
    if t.numel():
        f.seek(offset)
        if f.readinto(memoryview(t.view(-1).view(torch.uint8).numpy())) != size:
            raise damaged(path, f"tensor {name} is truncated")
    return t


def iter_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every tensor of one .safetensors file, each read into fresh memory."""
    base, header = read_header(path)
    with open(path, "rb") as f:
        for name, info in header.items():
            start, end = info["data_offsets"]
            yield name, _read(f, path, name, base + start, end - start, DTYPES[info["dtype"]], info["shape"])


def check_tensor(name: str, t: torch.Tensor, want: torch.Tensor, where: Path) -> None:
    """One tensor read from `where` against the model's: same shape, a float for a float (any precision, cast on
    copy) or the same integer dtype, finite values, positive quantization scales."""
    if tuple(t.shape) != tuple(want.shape):
        raise LowbitError(f"{where}: tensor {name} has shape {tuple(t.shape)}, config.json and {QUANT} call for "
                          f"{tuple(want.shape)}; the checkpoint is damaged or belongs to another model")
    if t.is_floating_point() != want.is_floating_point() or (not want.is_floating_point() and t.dtype != want.dtype):
        raise LowbitError(f"{where}: tensor {name} is stored as {t.dtype}, {want.dtype} expected; the checkpoint is "
                          "damaged or was written by another tool")
    if t.is_floating_point():
        if not bool(torch.isfinite(t).all()):
            raise not_finite(f"{where}: tensor {name}")
        if name.endswith(".scales") and t.numel() and not bool((t > 0).all()):
            raise LowbitError(f"{where}: quantization scales {name} hold zero or negative values; the checkpoint is "
                              "damaged")


def _layers(names: set[str], prefix: str) -> int:
    """Number of distinct block indices `<prefix>.<i>.` among tensor names."""
    pat = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    return len({m.group(1) for m in map(pat.match, names) if m})


def key_mismatch(state: set[str], names: set[str], where: Path, blocks: str | None) -> str | None:
    """One line saying how the tensor names in the files of directory `where` differ from the model's (None when
    they match)."""
    missing, unexpected = sorted(state - names), sorted(names - state)
    if not missing and not unexpected:
        return None
    if blocks:
        want, have = _layers(state, blocks), _layers(names, blocks)
        if want != have:
            return f"{where}: config.json describes {want} layers but the weights hold {have}; fix num_hidden_layers"
    parts = [f"{len(v)} {k} ({', '.join(v[:3])}{', ...' if len(v) > 3 else ''})"
             for k, v in (("missing", missing), ("unexpected", unexpected)) if v]
    return f"{where}: the weights do not match config.json: {'; '.join(parts)} tensors"


def load_into(model: torch.nn.Module, files: list[Path], head: str | None = None, blocks: str | None = None) -> None:
    """Copy the checkpoint's tensors into the model's state in place, each checked (`check_tensor`); a LowbitError
    (names of missing or unexpected tensors, or the layer counts) when the files do not hold exactly its tensors.

    `head` (the LM-head weight) may be missing from the files when the model ties it to another tensor that is
    present (tied checkpoints do not store it), as may the tensors of a module that is the same module as another
    (a packed embedding serving as the tied head, at its second path); `blocks` (the blocks' prefix) lets the
    error give layer counts.
    """
    state = model.state_dict()
    params = model.state_dict(keep_vars=True)
    names: set[str] = set()
    for f in files:
        names |= set(read_header(f)[1])
    present = [params[o] for o in names & set(params)]
    aliases = {n for n, _ in model.named_modules(remove_duplicate=False)} - {n for n, _ in model.named_modules()}
    tied = {k for k in state if k not in names and (head is not None and k.endswith(head) or k.rpartition(".")[0]
                                                    in aliases) and any(params[k] is t for t in present)}
    problem = key_mismatch(set(state) - tied, names, files[0].parent, blocks)
    if problem:
        raise LowbitError(problem)
    with torch.no_grad():
        for f in files:
            for name, t in iter_tensors(f):
                check_tensor(name, t, state[name], f)
                state[name].copy_(t)
                del t


class TensorIndex:
    """Where each tensor of a (sharded) safetensors checkpoint lies, to read any one of them on demand."""

    def __init__(self, files: list[Path]) -> None:
        self.where: dict[str, tuple[Path, int, int, torch.dtype, list[int]]] = {}
        for f in files:
            base, header = read_header(f)
            for name, info in header.items():
                start, end = info["data_offsets"]
                self.where[name] = (f, base + start, end - start, DTYPES[info["dtype"]], info["shape"])

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def shape(self, name: str) -> tuple[int, ...]:
        """A tensor's shape, from the file header."""
        return tuple(self.where[name][4])

    def dtype(self, name: str) -> torch.dtype:
        """A tensor's dtype, from the file header."""
        return self.where[name][3]

    def read(self, name: str) -> torch.Tensor:
        """One tensor, read into fresh memory with a plain file read (no mapping of the file)."""
        path, offset, size, dtype, shape = self.where[name]
        with open(path, "rb") as f:
            return _read(f, path, name, offset, size, dtype, shape)


def write_safetensors(path: Path, plan: list[tuple[str, torch.dtype, tuple[int, ...]]],
                      tensors: Iterator[torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write a .safetensors file one tensor at a time: the header from `plan` (name, dtype, shape), then each
    tensor that `tensors` yields, in plan order and checked against it, so memory holds one tensor."""
    names = {v: k for k, v in DTYPES.items()}
    header: dict = {}
    offset = 0
    for name, dtype, shape in plan:
        size = math.prod(shape) * dtype.itemsize
        header[name] = {"dtype": names[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = metadata
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        count = 0
        for (name, dtype, shape), t in zip(plan, tensors, strict=False):
            if t.dtype != dtype or tuple(t.shape) != tuple(shape):
                raise RuntimeError(f"{name}: planned {dtype} {tuple(shape)}, produced {t.dtype} {tuple(t.shape)}")
            if t.numel():
                f.write(memoryview(t.contiguous().view(-1).view(torch.uint8).numpy()))
            count += 1
        if count != len(plan):
            raise RuntimeError(f"{path}: {count} tensors produced for a plan of {len(plan)}")
