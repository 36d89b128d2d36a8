"""The model an export reads, one tensor at a time: a lowbit checkpoint (packed codes as stored) or a float model."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from torch import nn

from lowbit.errors import LowbitError, not_finite
from lowbit.files import atomic_output as atomic_file  # noqa: F401 (re-exported: its old home)
from lowbit.kernels.qlinear import PackedLinear
from lowbit.models.checkpoint import install_packed, module_specs, read_quant_config, spec_of, storage_dtype
from lowbit.models.families import Family, block_linears
from lowbit.models.stream import TensorIndex, check_tensor, key_mismatch
from lowbit.quantizers import WeightSpec, quantize_weight


@dataclass
class ExportSource:
    """A source opened lazily: its structure on the meta device and an index of its tensors on disk.

    Exporters ask for one tensor or one linear layer at a time (`tensor`, `linear`), so memory holds about
    one layer, whatever the model's size; nothing is read twice unless asked for twice.
    """

    path: Path
    config: dict
    family: Family
    model: nn.Module  # on the meta device: module types, names and shapes, no storage
    index: TensorIndex
    spec: WeightSpec | None  # the packed format of a lowbit checkpoint (its top level); None for a float directory
    embeddings: dict[str, list[str]] = field(default_factory=dict)  # packed embeddings: the other paths they serve

    @property
    def quantized(self) -> bool:
        """True for a lowbit checkpoint, False for a full-precision directory."""
        return self.spec is not None

    @property
    def storage_dtype(self) -> torch.dtype:
        """The float dtype the source stores its unquantized tensors in."""
        return storage_dtype(self.config)

    @cached_property
    def structure(self) -> dict[str, torch.Tensor]:
        """The model's state dict on the meta device: every tensor's name, dtype and shape."""
        return self.model.state_dict()

    def linear_names(self) -> list[str]:
        """Every linear layer of the model (packed or float, the LM head included), in module order."""
        return [n for n, m in self.model.named_modules() if isinstance(m, nn.Linear | PackedLinear)]

    def is_packed(self, name: str) -> bool:
        """Whether the linear `name` is stored packed (a lowbit checkpoint's quantized layer)."""
        return isinstance(self.model.get_submodule(name), PackedLinear)

    @cached_property
    def block_linear_names(self) -> list[str]:
        """The linear layers inside the transformer blocks (the ones lowbit quantizes), in order."""
        prefix = self.family.blocks_prefix(self.model)
        return [f"{prefix}.{i}.{n}" for i, block in enumerate(self.family.blocks(self.model))
                for n in block_linears(block)]  # fmt: skip

    def float_names(self, skip: set[str] = frozenset()) -> list[str]:
        """Tensors outside the packed layers and outside the linear layers named in `skip`, tied copies dropped."""
        owners = set(skip) | {n for n in self.linear_names() if self.is_packed(n)}
        names = [k for k in self.structure if k.rpartition(".")[0] not in owners]
        return [k for k in names if k in self.index or not self._tied(k)]

    def _tied(self, name: str) -> bool:
        if name.rpartition(".")[0] in {a for aliases in self.embeddings.values() for a in aliases}:
            return True  # a tied head that is the packed embedding itself: stored under the embedding's name
        return name == self.family.head and self.family.ties_head(self.config)

    def shape(self, name: str) -> tuple[int, ...]:
        """A tensor's shape, from the model's structure (nothing is read)."""
        return tuple(self.structure[name].shape)

    def tensor(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """One tensor read from disk, float ones cast to `dtype` (default: the storage dtype) and checked finite."""
        t = self.index.read(name)
        if name in self.structure:  # shape, dtype kind, finite values, positive scales
            check_tensor(name, t, self.structure[name], self.path)
        if t.is_floating_point():
            if not bool(torch.isfinite(t).all()):
                raise not_finite(f"{self.path}: tensor {name}")
            t = t.to(dtype or self.storage_dtype)
        return t.contiguous()

    def linear(self, name: str, rtn: WeightSpec | None = None) -> nn.Module:
        """One linear layer read from disk: a PackedLinear as stored, else an nn.Linear in float32, or, with
        `rtn`, a block linear of a full-precision source rounded to nearest into a PackedLinear of that format."""
        shell = self.model.get_submodule(name)
        has_bias = shell.bias is not None
        if isinstance(shell, PackedLinear):
            m = PackedLinear(shell.in_features, shell.out_features, shell.spec, has_bias)
            m.load_state_dict({k: self.tensor(f"{name}.{k}", v.dtype) for k, v in m.state_dict().items()})
            return m
        w = self.tensor(f"{name}.weight", torch.float32)
        b = self.tensor(f"{name}.bias", torch.float32) if has_bias else None
        if rtn is not None and name in self.block_linear_names:
            return PackedLinear.from_quantized(quantize_weight(w, rtn), b)
        lin = nn.Linear(shell.in_features, shell.out_features, bias=has_bias, device="meta")
        lin.weight = nn.Parameter(w, requires_grad=False)
        if b is not None:
            lin.bias = nn.Parameter(b, requires_grad=False)
        return lin


def open_source(src: str | Path) -> ExportSource:
    """Open a lowbit checkpoint or a full-precision directory (or 'demo') for export, without reading weights."""
    from lowbit.models.load import build_from_config, check_weight_files, family_of, read_config, resolve_source

    path = resolve_source(src)
    qcfg = read_quant_config(path)
    if qcfg and (qcfg.get("input_transforms") or int(qcfg.get("act_bits", 16) or 16) < 16):
        raise LowbitError(f"{path} quantizes activations or applies online transforms at run time (act_bits "
                          f"{qcfg.get('act_bits', 16)}, input transforms {bool(qcfg.get('input_transforms'))}); "
                          "compressed-tensors W*A16 and GGUF hold weight-only models: export a weight-only checkpoint")
    config = read_config(path)
    family = family_of(config, path)
    index = TensorIndex(check_weight_files(path))
    try:
        model = build_from_config(path, family.kind, torch.float32, "meta")
    except Exception as e:
        raise LowbitError(f"cannot build the model that {path}/config.json describes ({type(e).__name__}: "
                          f"{str(e)[:300]})") from e
    spec, embeddings = None, {}
    if qcfg is not None:
        spec, embeddings = spec_of(qcfg), qcfg.get("embeddings", {})
        with torch.device("meta"):
            install_packed(model, module_specs(qcfg), embeddings=embeddings)
    source = ExportSource(path, config, family, model, index, spec, embeddings)
    _check_tensors(source)
    return source


def _check_tensors(src: ExportSource) -> None:
    """Every tensor the model needs is in the files with its shape (headers only), and nothing else, or a clear
    error."""
    extra = key_mismatch(set(src.structure), set(src.index.where) | set(src.structure), src.path,
                         src.family.blocks_prefix(src.model))
    if extra:
        raise LowbitError(extra)
    for name, t in src.structure.items():
        if name not in src.index:
            if src._tied(name):
                continue
            raise LowbitError(f"{src.path}: the weight files have no tensor {name}, which config.json"
                              f"{' and lowbit_quant.json' if src.quantized else ''} call for; the checkpoint is "
                              "damaged or was written by another tool")
        if src.index.shape(name) != tuple(t.shape):
            raise LowbitError(f"{src.path}: tensor {name} has shape {src.index.shape(name)} in the files "
                              f"but {tuple(t.shape)} in config.json; the checkpoint is damaged")
