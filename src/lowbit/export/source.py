"""The model an export reads: a lowbit checkpoint (its packed codes carried over as stored) or a float model."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lowbit.errors import LowbitError
from lowbit.kernels.qlinear import PackedLinear
from lowbit.models.families import Family, block_linears
from lowbit.quantizers import WeightSpec, quantize_weight


def note(msg: str) -> None:
    """A console note on stderr (re-quantization, fallbacks): the user must know when codes were not carried over."""
    print(f"lowbit: note: {msg}", file=sys.stderr, flush=True)


@dataclass
class ExportSource:
    """A loaded source: the model (quantized linears as PackedLinear), its config, family and directory."""

    path: Path
    config: dict
    family: Family
    model: nn.Module
    quantized: bool  # True for a lowbit checkpoint, False for a full-precision directory

    @property
    def storage_dtype(self) -> torch.dtype:
        """The float dtype the source stores its unquantized tensors in."""
        name = str(self.config.get("torch_dtype") or self.config.get("dtype") or "float32")
        return {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(name, torch.float32)

    def packed(self) -> dict[str, PackedLinear]:
        """The packed linear modules by name."""
        return {n: m for n, m in self.model.named_modules() if isinstance(m, PackedLinear)}

    def linears(self) -> dict[str, nn.Module]:
        """Every linear layer of the model (packed or float, the LM head included), by module name."""
        return {n: m for n, m in self.model.named_modules() if isinstance(m, nn.Linear | PackedLinear)}

    def float_state(self) -> dict[str, torch.Tensor]:
        """Every tensor except the packed buffers, tied duplicates dropped, in the source's storage dtype."""
        seen: set[int] = set()
        out = {}
        for k, v in self.model.state_dict().items():
            owner, _, leaf = k.rpartition(".")
            if leaf != "bias" and isinstance(self.model.get_submodule(owner), PackedLinear):
                continue  # packed buffers (and any kernel caches) are written by each format's own layout
            if v.numel() and v.data_ptr() in seen:
                continue
            seen.add(v.data_ptr())
            out[k] = (v.to(self.storage_dtype) if v.is_floating_point() else v).contiguous()
        return out

    def quantize_rtn(self, spec: WeightSpec) -> None:
        """Round-to-nearest every block linear of a float source into PackedLinear modules (`spec`), in place."""
        for block in self.family.blocks(self.model):
            for name, lin in block_linears(block).items():
                parent_name, _, child = name.rpartition(".")
                parent = block.get_submodule(parent_name) if parent_name else block
                q = quantize_weight(lin.weight.data.float(), spec)
                bias = lin.bias.data if lin.bias is not None else None
                setattr(parent, child, PackedLinear.from_quantized(q, bias))


def open_source(src: str | Path) -> ExportSource:
    """Load a lowbit checkpoint or a full-precision directory (or 'demo') for export, on the CPU in float32."""
    from lowbit.export.checkpoint import load_with_tokenizer, read_quant_config
    from lowbit.models.load import resolve_source

    path = resolve_source(src)
    qcfg = read_quant_config(path)
    if qcfg and (qcfg.get("input_transforms") or int(qcfg.get("act_bits", 16) or 16) < 16):
        raise LowbitError(f"{path} quantizes activations or applies online transforms at run time (act_bits "
                          f"{qcfg.get('act_bits', 16)}, input transforms {bool(qcfg.get('input_transforms'))}); "
                          "compressed-tensors W*A16 and GGUF hold weight-only models: export a weight-only checkpoint")
    quantized = qcfg is not None
    loaded = load_with_tokenizer(path, torch.float32)
    return ExportSource(path, loaded.config, loaded.family, loaded.model, quantized)


@contextmanager
def atomic_file(out: Path) -> Iterator[Path]:
    """Yield a temporary path beside `out` that is renamed to `out` only if the block finishes without error."""
    if out.exists():
        raise LowbitError(f"{out} already exists; choose a new --out path or remove the old file")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.tmp-", dir=out.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
