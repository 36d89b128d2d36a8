"""Peak memory of `lowbit quantize` against the bound "fp32 model + one block's calibration activations".

Usage: python benchmarks/ptq_memory.py [--hidden 1024] [--layers 16] [--samples 32] [--seq-len 256]

Builds a random Llama-shaped model (fp16 safetensors, the demo tokenizer) large enough that the model, not
the Python runtime, dominates memory; quantizes it with RTN and GPTQ W4 g128, each in a fresh subprocess,
and compares each run's peak RSS minus the runtime's own peak (a process that imports the same modules
and loads nothing) with the bound. Ends by printing one JSON line.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from lowbit.models.load import ASSETS


def build_model(path: Path, hidden: int, layers: int) -> int:
    """Save a random Llama-shaped fp16 model with the demo tokenizer; return its parameter count."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=4096, hidden_size=hidden, intermediate_size=int(hidden * 2.75) // 128 * 128,
                      num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64,
                      max_position_embeddings=512, bos_token_id=1, eos_token_id=2)
    with torch.device("cpu"):
        model = LlamaForCausalLM(cfg).to(torch.float16)
    model.save_pretrained(path)
    for f in ASSETS.joinpath("demo").glob("tokenizer*"):
        shutil.copy(f, path / f.name)
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16, help="calibration windows per forward pass")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="lowbit-mem-"))
    try:
        n = build_model(tmp / "model", args.hidden, args.layers)
        code = ("import lowbit.cli, lowbit.api, transformers.models.llama.modeling_llama; "
                "from lowbit.api import peak_rss_mb; print(peak_rss_mb())")
        runtime = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                       check=True).stdout.split()[-1])
        fp32_mb = n * 4 / 2**20
        act_mb = args.samples * args.seq_len * args.hidden * 4 / 2**20
        res = {"params": n, "fp32_model_mb": fp32_mb, "one_block_activations_mb": act_mb,
               "bound_mb": fp32_mb + act_mb, "runtime_peak_rss_mb": runtime}
        calib = ASSETS / "demo" / "calib.txt"
        for method in ("rtn", "gptq"):
            cmd = [sys.executable, "-m", "lowbit.cli", "quantize", str(tmp / "model"), "--method", method,
                   "--bits", "4", "--group-size", "128", "--calib", str(calib), "--n-samples", str(args.samples),
                   "--seq-len", str(args.seq_len), "--batch-size", str(args.batch_size), "--out", str(tmp / method),
                   "--json"]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode:
                raise SystemExit(r.stderr[-2000:])
            q = json.loads(r.stdout.strip().splitlines()[-1])
            res[f"{method}_peak_rss_mb"] = q["peak_rss_mb"]
            res[f"{method}_over_runtime_mb"] = q["peak_rss_mb"] - runtime
            res[f"{method}_over_runtime_vs_bound"] = (q["peak_rss_mb"] - runtime) / res["bound_mb"]
            res[f"{method}_seconds"] = q["quantize_seconds"]
            print(f"{method}: peak RSS {q['peak_rss_mb']:.0f} MiB, {q['peak_rss_mb'] - runtime:.0f} MiB over the "
                  f"runtime; bound {res['bound_mb']:.0f} MiB (fp32 model {fp32_mb:.0f} + activations "
                  f"{act_mb:.0f}); {q['quantize_seconds']:.1f} s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
