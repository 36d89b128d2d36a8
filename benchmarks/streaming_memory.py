"""Peak memory of streaming quantization (`lowbit quantize --stream`) on a 7B-shaped model, and on a 1B one
against the in-memory path measured in the same run.

Usage: python benchmarks/streaming_memory.py [--workdir DIR] [--shapes 1b,7b] [--methods rtn,gptq]
       [--n-samples 16] [--seq-len 128] [--keep]

Writes random Llama-shaped models with benchmarks/random_llama.py (fp16 safetensors: 2.2 GB for 1b,
13.5 GB for 7b), then runs each quantization in a fresh `lowbit quantize ... --json` subprocess and reads its
own peak RSS (VmHWM). The in-memory path (whole fp32 model loaded) runs only where it fits in RAM (1b); for
7b its fp32 weights alone (27 GB) exceed this 24 GiB machine. Ends by printing one JSON line.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from random_llama import SHAPES, write_random_llama  # noqa: E402


def run_quantize(model: Path, out: Path, method: str, stream: bool, n_samples: int, seq_len: int) -> dict:
    """One `lowbit quantize` in a subprocess; its JSON result (with its own peak RSS) and wall time."""
    cmd = [sys.executable, "-m", "lowbit.cli", "quantize", str(model), "--method", method, "--bits", "4",
           "--group-size", "128", "--out", str(out), "--json", "--n-samples", str(n_samples), "--seq-len",
           str(seq_len), "--batch-size", "4"]
    if stream:
        cmd.append("--stream")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}",
                "wall_seconds": wall}
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"peak_rss_mb": res["peak_rss_mb"], "quantize_seconds": res["quantize_seconds"], "wall_seconds": wall,
            "bits_per_weight": res["bits_per_weight"], "shards": len(list(out.glob("model-*.safetensors")))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workdir", type=Path, help="where models and outputs go (default: a temp dir)")
    ap.add_argument("--shapes", default="1b,7b")
    ap.add_argument("--methods", default="rtn,gptq")
    ap.add_argument("--n-samples", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--keep", action="store_true", help="keep the models and outputs")
    a = ap.parse_args()
    work = a.workdir or Path(tempfile.mkdtemp(prefix="lowbit-stream-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for shape in a.shapes.split(","):
            model = work / f"llama-{shape}"
            if not model.exists():
                print(f"writing a random {shape} Llama to {model} ...", file=sys.stderr, flush=True)
                write_random_llama(model, shape)
            c = SHAPES[shape]
            params = sum(f.stat().st_size for f in model.glob("*.safetensors")) // 2
            for method in a.methods.split(","):
                modes = [True, False] if shape == "1b" else [True]
                for stream in modes:
                    out = work / f"out-{shape}-{method}-{'stream' if stream else 'memory'}"
                    shutil.rmtree(out, ignore_errors=True)
                    print(f"{shape} {method} {'streamed' if stream else 'in memory'} ...", file=sys.stderr,
                          flush=True)
                    r = run_quantize(model, out, method, stream, a.n_samples, a.seq_len)
                    r.update(shape=shape, method=method, mode="stream" if stream else "memory", params=params,
                             fp32_model_mb=params * 4 / 2**20, layers=c["num_hidden_layers"])
                    rows.append(r)
                    print(json.dumps(r), file=sys.stderr, flush=True)
                    if not a.keep:
                        shutil.rmtree(out, ignore_errors=True)
    finally:
        if not a.keep and a.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'shape':>5}{'method':>7}{'mode':>8}{'fp32 model MB':>15}{'peak RSS MB':>13}{'RSS/fp32':>10}"
          f"{'quantize s':>12}")
    for r in rows:
        rss = r.get("peak_rss_mb", float("nan"))
        print(f"{r['shape']:>5}{r['method']:>7}{r['mode']:>8}{r['fp32_model_mb']:15.0f}{rss:13.0f}"
              f"{rss / r['fp32_model_mb']:10.3f}{r.get('quantize_seconds', float('nan')):12.1f}")
    head = {f"{r['shape']}_{r['method']}_{r['mode']}_peak_rss_mb": r.get("peak_rss_mb") for r in rows}
    for r in rows:
        if r["mode"] == "stream":
            mem = next((m for m in rows if m["mode"] == "memory" and m["shape"] == r["shape"]
                        and m["method"] == r["method"] and "peak_rss_mb" in m), None)
            if mem and "peak_rss_mb" in r:
                head[f"{r['shape']}_{r['method']}_stream_vs_memory_rss"] = r["peak_rss_mb"] / mem["peak_rss_mb"]
    print(json.dumps({**head, "rows": rows}))


if __name__ == "__main__":
    main()
