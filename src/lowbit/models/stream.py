"""Read and write safetensors files tensor by tensor (plain file I/O), so a checkpoint is never held whole.

Memory-mapped loading keeps every touched page of the checkpoint resident until the file is closed, which
adds the checkpoint's size to the peak; reading each tensor into its destination keeps the peak at the
model plus one tensor.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import torch

DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}


def _header(path: Path) -> tuple[int, dict]:
    """Byte offset of the data and the tensor entries of one .safetensors file's header."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return 8 + n, header


def _read(f: BinaryIO, path: Path, name: str, offset: int, size: int, dtype: torch.dtype, shape: list[int]
          ) -> torch.Tensor:
    """One tensor read from an open file into fresh memory."""
    t = torch.empty(shape, dtype=dtype)
    if t.numel():
        f.seek(offset)
        if f.readinto(memoryview(t.view(-1).view(torch.uint8).numpy())) != size:
            raise OSError(f"{path}: tensor {name} is truncated")
    return t


def iter_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every tensor of one .safetensors file, each read into fresh memory."""
    base, header = _header(path)
    with open(path, "rb") as f:
        for name, info in header.items():
            start, end = info["data_offsets"]
            yield name, _read(f, path, name, base + start, end - start, DTYPES[info["dtype"]], info["shape"])


def load_into(model: torch.nn.Module, files: list[Path], head: str | None = "lm_head.weight") -> bool:
    """Copy the checkpoint's tensors into the model's state in place; False (nothing trusted) if keys differ.

    `head` (the family's LM-head weight) may be missing from the files: tied checkpoints do not store it.
    """
    state = model.state_dict()
    names: set[str] = set()
    for f in files:
        names |= set(_header(f)[1])
    tied = {k for k in state if k not in names and head is not None and k.endswith(head)}
    if names - set(state) or set(state) - names - tied:
        return False
    with torch.no_grad():
        for f in files:
            for name, t in iter_tensors(f):
                if state[name].shape != t.shape:
                    return False
                state[name].copy_(t)
                del t
    return True


class TensorIndex:
    """Where each tensor of a (sharded) safetensors checkpoint lies, to read any one of them on demand."""

    def __init__(self, files: list[Path]) -> None:
        self.where: dict[str, tuple[Path, int, int, torch.dtype, list[int]]] = {}
        for f in files:
            base, header = _header(f)
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
