"""lowbit's calibrated GGUF K-quants against llama.cpp with an imatrix, same file types, same calibration text.

For each file type (Q4_K_M, Q3_K_M, Q2_K, Q5_K_M ...): llama-quantize with an imatrix from the demo calibration
split (benchmarks/real_llm.py's llama.cpp cell), and `lowbit quantize --gguf TYPE` (lowbit.api.quantize_gguf)
with GPTQ inside the grids and with importance-weighted RTN, on the same split (128 windows of 256 tokens).
Every file is read back through the gguf package's dequantizer and scored by real_llm's one evaluator (KL
divergence against the bf16 original, top-1, perplexity); llama-perplexity --kl-divergence runs on every file
as a cross-check. Results go to --work/results.json as each cell finishes (resumable).

    python benchmarks/gguf_kquant.py --model smollm2 --types Q4_K_M,Q3_K_M,Q2_K,Q5_K_M --work /tmp/kq

Prints a table with KLD ratios against llama.cpp+imatrix of the same type and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import llamacpp_peer as lp  # noqa: E402
import real_llm  # noqa: E402

from lowbit import api  # noqa: E402


def run_lowbit_gguf(b: real_llm.Bench, qtype: str, method: str) -> dict:
    """`lowbit quantize --gguf` into a file, read back with gguf's dequantizer, scored; llama.cpp's KLD too."""
    import gguf

    out = b.work / "gguf" / f"lowbit-{qtype}-{method}.gguf"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    res = api.quantize_gguf(b.src, out, qtype, method, b.calib_text, b.calib, progress=b.progress)
    model = b.fresh()
    lp.load_gguf_into(model, out)
    tensors = gguf.GGUFReader(str(out)).tensors
    row = {"seconds": round(res["quantize_seconds"], 2), "bytes": sum(int(r.n_bytes) for r in tensors),
           "file_bytes": res["bytes"], "types": res["types"], **b.score(model)}
    tools = lp.tools(os.environ.get("LLAMA_CPP_DIR", real_llm.DEFAULT_LLAMA))
    try:
        row["llama_perplexity"] = lp.llama_kld(tools, b.work / "gguf" / "f16.gguf", out, b.text, ctx=real_llm.WINDOW)
    except Exception as e:  # llama.cpp's own evaluator is a cross-check, not the score
        row["llama_perplexity"] = {"error": str(e)[:300]}
    return row


def main() -> None:
    """Run the cells not yet in results.json, print the table and the JSON line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--types", default="Q4_K_M,Q3_K_M,Q2_K,Q5_K_M")
    ap.add_argument("--methods", default="gptq,rtn", help="lowbit methods: gptq, rtn")
    ap.add_argument("--work", default="/tmp/lowbit-gguf-kquant")
    ap.add_argument("--eval-chars", type=int, default=24000)
    ap.add_argument("--n-samples", type=int, default=128)
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args()
    work = Path(a.work) / a.model
    work.mkdir(parents=True, exist_ok=True)
    path = work / "results.json"
    results = real_llm.load_results(path)
    b = real_llm.Bench(a.model, work, a.eval_chars, a.n_samples, not a.quiet)
    cells = []
    for t in a.types.split(","):
        cells.append((f"llama.cpp {t} imatrix", lambda t=t: real_llm.run_llamacpp(
            b, real_llm.Cell(f"llama.cpp {t} imatrix", "llama.cpp", t, qtype=t, imatrix=True))))
        for m in a.methods.split(","):
            cells.append((f"lowbit {t} {m}", lambda t=t, m=m: run_lowbit_gguf(b, t, m)))
    for label, run in cells:
        if label in results:
            continue
        print(f"[{a.model}] {label} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        results[label] = {"label": label, **run(), "cell_seconds": round(time.perf_counter() - t0, 1)}
        real_llm.save_results(path, results)
    head = f"{'cell':28} {'MB':>7} {'KLD':>7} {'p99':>6} {'top1':>6} {'ppl':>7} {'lcpKLD':>7} {'s':>6} {'KLD/lcp':>7}"
    print(head)
    summary = {}
    for t in a.types.split(","):
        base = results[f"llama.cpp {t} imatrix"]
        for label in [f"llama.cpp {t} imatrix"] + [f"lowbit {t} {m}" for m in ("gptq", "rtn")]:
            r = results.get(label)
            if r is None:
                continue
            lcp = r.get("llama_perplexity", {}).get("kld_mean", float("nan"))
            ratio = r["kld_mean"] / base["kld_mean"]
            print(f"{label:28} {r['bytes'] / 1e6:7.2f} {r['kld_mean']:7.4f} {r['kld_p99']:6.3f} "
                  f"{r['top1_agreement']:6.3f} {r['perplexity']:7.3f} {lcp:7.4f} {r['seconds']:6.1f} {ratio:7.3f}")
            summary[label] = {"bytes": r["bytes"], "kld_mean": r["kld_mean"], "top1": r["top1_agreement"],
                              "ppl": r["perplexity"], "llama_kld": lcp, "seconds": r["seconds"],
                              "kld_vs_llamacpp": round(ratio, 4)}
    print(json.dumps({"model": a.model, "cells": summary}))


if __name__ == "__main__":
    main()
