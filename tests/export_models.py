"""Small models shared by the export tests (built once per test session)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from lowbit import api
from lowbit.models.load import ASSETS

FORMATS = {"w4g32": (4, 32, True), "w8ch": (8, 0, True), "w3g64a": (3, 64, False)}
_BUILT: dict[Path, dict[str, Path]] = {}


def save_small_llama(path: Path) -> Path:
    """A two-block fp16 Llama with 256-wide rows (so every GGUF type applies) and the demo tokenizer."""
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=4096, max_position_embeddings=128, bos_token_id=1,
                         eos_token_id=2, dtype="float16")
    model = tf.AutoModelForCausalLM.from_config(cfg).to(torch.float16)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(5.0)
    model.save_pretrained(path)
    for f in (ASSETS / "demo").glob("tokenizer*"):
        shutil.copy(f, path / f.name)
    return path


def small_checkpoints(root: Path) -> dict[str, Path]:
    """The small Llama in full precision ("fp") and as RTN checkpoints of the formats in FORMATS."""
    if root not in _BUILT:
        root.mkdir(parents=True, exist_ok=True)
        out = {"fp": save_small_llama(root / "fp")}
        for name, (bits, g, sym) in FORMATS.items():
            api.quantize_dir(out["fp"], root / name, api.make_config("rtn", bits, g, sym), progress=False)
            out[name] = root / name
        _BUILT[root] = out
    return _BUILT[root]
