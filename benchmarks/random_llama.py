"""Write a Llama-shaped model with random weights as sharded fp16 safetensors (for speed and memory tests).

Usage: python benchmarks/random_llama.py OUT --shape {1b,7b} [--shard-mb 2000]

Shapes: "1b" is TinyLlama-1.1B's (hidden 2048, 22 layers, MLP 5632, 32 heads / 4 KV heads, vocab 32000);
"7b" is Llama-2-7B's (hidden 4096, 32 layers, MLP 11008, 32 heads, vocab 32000). Tensors are generated and
written one shard at a time, so memory stays near one shard. The demo's SentencePiece tokenizer is copied
(its ids are < 4096, valid in the larger vocabulary).
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import save_file

from lowbit.models.load import ASSETS

SHAPES = {
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
               num_key_value_heads=4, vocab_size=32000),
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000),
}


def _tensors(c: dict) -> Iterator[tuple[str, list[int]]]:
    h, m, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    kv = h // c["num_attention_heads"] * c["num_key_value_heads"]
    yield "model.embed_tokens.weight", [v, h]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        yield p + "input_layernorm.weight", [h]
        for name, shape in (("q", [h, h]), ("k", [kv, h]), ("v", [kv, h]), ("o", [h, h])):
            yield p + f"self_attn.{name}_proj.weight", shape
        yield p + "post_attention_layernorm.weight", [h]
        for name, shape in (("gate", [m, h]), ("up", [m, h]), ("down", [h, m])):
            yield p + f"mlp.{name}_proj.weight", shape
    yield "model.norm.weight", [h]
    yield "lm_head.weight", [v, h]


def write_random_llama(out: Path, shape: str = "1b", shard_mb: int = 2000, seed: int = 0) -> int:
    """Write config, tokenizer and sharded fp16 weights to `out`; returns the number of parameters."""
    c = SHAPES[shape]
    out.mkdir(parents=True, exist_ok=False)
    gen = torch.Generator().manual_seed(seed)
    shard: dict[str, torch.Tensor] = {}
    weight_map: dict[str, str] = {}
    n_params, size, index = 0, 0, 0

    def flush() -> None:
        nonlocal shard, size, index
        index += 1
        name = f"model-{index:05d}.safetensors"
        save_file(shard, str(out / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
        shard, size = {}, 0

    for name, dims in _tensors(c):
        if len(dims) == 1:
            t = torch.ones(dims, dtype=torch.float16)
        else:
            t = (torch.randn(dims, generator=gen) * 0.02).to(torch.float16)
        shard[name] = t
        size += t.numel() * 2
        n_params += t.numel()
        if size >= shard_mb * 2**20:
            flush()
    if shard:
        flush()
    names = sorted(set(weight_map.values()))
    for fname in names:  # rename to the -of-N convention
        new = fname.replace(".safetensors", f"-of-{len(names):05d}.safetensors")
        (out / fname).rename(out / new)
        weight_map = {k: (new if v == fname else v) for k, v in weight_map.items()}
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": n_params * 2}, "weight_map": weight_map}, indent=1))
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
              "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "bos_token_id": 1,
              "eos_token_id": 2, "tie_word_embeddings": False, "torch_dtype": "float16", **c}
    (out / "config.json").write_text(json.dumps(config, indent=1))
    for f in ASSETS.joinpath("demo").glob("tokenizer*"):
        shutil.copy(f, out / f.name)
    return n_params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out", type=Path)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    ap.add_argument("--shard-mb", type=int, default=2000)
    a = ap.parse_args()
    n = write_random_llama(a.out, a.shape, a.shard_mb)
    print(json.dumps({"out": str(a.out), "shape": a.shape, "params": n}))


if __name__ == "__main__":
    main()
