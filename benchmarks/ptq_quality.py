"""PTQ quality, size and memory on the demo model and on all-MiniLM-L6-v2 (RTN vs GPTQ, 4, 3 and 2 bits).

MiniLM also gets "gptq+": asymmetric, MSE range search, 256 calibration windows of 128 tokens.

Usage: python benchmarks/ptq_quality.py [--quick] [--out docs/ptq_quality.json]

Every quantization runs in a fresh subprocess (`lowbit quantize ... --json`) so that its peak RSS is its
own; the fp32 model size and one block's calibration activations are reported beside it. Perplexity is on
the demo's held-out split; MiniLM is scored by the mean cosine of pooled embeddings to the fp32 model on the
same text. Ends by printing one JSON line with the headline figures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from lowbit.api import evaluate

SETTINGS = [("rtn", 4, 128), ("gptq", 4, 128), ("rtn", 3, 128), ("gptq", 3, 128), ("rtn", 2, 64), ("gptq", 2, 64)]


def run_quantize(src: str, method: str, bits: int, group: int, out: Path, extra: list[str]) -> dict:
    """Quantize in a subprocess and return its JSON report (including its own peak RSS)."""
    cmd = [sys.executable, "-m", "lowbit.cli", "quantize", src, "--method", method, "--bits", str(bits),
           "--group-size", str(group), "--out", str(out), "--json", *extra]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def runtime_rss_mb() -> float:
    """Peak RSS of a process that imports what `lowbit quantize` imports, without loading a model."""
    code = ("import lowbit.cli, lowbit.api, transformers.models.llama.modeling_llama, "
            "transformers.models.bert.modeling_bert; from lowbit.api import peak_rss_mb; print(peak_rss_mb())")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="4-bit and 3-bit only, fewer calibration samples")
    ap.add_argument("--out", help="also write the full results as JSON here")
    args = ap.parse_args()
    settings = SETTINGS[:4] if args.quick else SETTINGS
    calib = ["--n-samples", "32" if args.quick else "128", "--seq-len", "256"]
    tmp = Path(tempfile.mkdtemp(prefix="lowbit-bench-"))
    rows: list[dict] = []
    demo_fp = evaluate("demo", progress=False)
    runtime_rss = runtime_rss_mb()
    rows.append({"model": "demo", "method": "fp16", "bits": 16, "perplexity": demo_fp["perplexity"],
                 "bits_per_weight": demo_fp["bits_per_weight"], "bytes": demo_fp["bytes"]})
    fp32_mb = demo_fp["bytes"] * 2 / 2**20
    for method, bits, group in settings:
        q = run_quantize("demo", method, bits, group, tmp / f"demo-{method}-{bits}", calib)
        ev = evaluate(q["out"], progress=False)
        rows.append({"model": "demo", "method": method, "bits": bits, "group": group,
                     "perplexity": ev["perplexity"], "bits_per_weight": ev["bits_per_weight"], "bytes": ev["bytes"],
                     "seconds": q["quantize_seconds"], "peak_rss_mb": q["peak_rss_mb"],
                     "calib_activation_mb": q["calib_activation_mb"]})
        print(f"demo {method} W{bits} g{group}: ppl {ev['perplexity']:.3f} ({q['quantize_seconds']:.1f} s)",
              flush=True)
    text = Path(__file__).resolve().parent.parent / "src/lowbit/assets/demo/eval.txt"
    minilm_calib = ["--calib", str(text.with_name("calib.txt"))]
    best = ["--asym", "--range", "mse", "--n-samples", "256", "--seq-len", "128"]  # MiniLM's best recipe here
    minilm_runs = [(m, b, g, calib, m) for m, b, g in settings if b >= 3] + [("gptq", 4, 128, best, "gptq+")]
    for method, bits, group, extra, label in minilm_runs:
        q = run_quantize("minilm", method, bits, group, tmp / f"minilm-{label}-{bits}", extra + minilm_calib)
        ev = evaluate(q["out"], text=text, reference="minilm", progress=False)
        rows.append({"model": "minilm", "method": label, "bits": bits, "group": group,
                     "cosine_to_reference": ev["cosine_to_reference"], "bits_per_weight": ev["bits_per_weight"],
                     "bytes": ev["bytes"], "seconds": q["quantize_seconds"]})
        print(f"minilm {label} W{bits} g{group}: cosine {ev['cosine_to_reference']:.5f}", flush=True)

    fp = rows[0]["perplexity"]
    print(f"\n{'model':<8}{'method':<7}{'bits':>5}{'bits/w':>8}{'ppl / cos':>11}{'vs fp':>8}{'MB':>7}{'s':>7}"
          f"{'peak RSS':>10}")
    for r in rows:
        metric = r.get("perplexity", r.get("cosine_to_reference"))
        ratio = metric / fp if "perplexity" in r else float("nan")
        print(f"{r['model']:<8}{r['method']:<7}{r['bits']:>5}{r['bits_per_weight']:>8.3f}{metric:>11.4f}"
              f"{ratio:>8.3f}{r['bytes'] / 1e6:>7.2f}{r.get('seconds', 0):>7.1f}{r.get('peak_rss_mb', 0):>10.0f}")
    pick = {(r["model"], r["method"], r["bits"]): r for r in rows}
    g4, r3, g3 = pick[("demo", "gptq", 4)], pick[("demo", "rtn", 3)], pick[("demo", "gptq", 3)]
    gptq_rows = [r for r in rows if r["model"] == "demo" and r["method"] == "gptq"]
    headline = {
        "demo_fp16_perplexity": fp,
        "demo_gptq_w4g128_perplexity": g4["perplexity"], "demo_gptq_w4g128_ratio": g4["perplexity"] / fp,
        "demo_rtn_w3g128_perplexity": r3["perplexity"], "demo_gptq_w3g128_perplexity": g3["perplexity"],
        "w3_gptq_over_rtn_excess": (g3["perplexity"] - fp) / (r3["perplexity"] - fp),
        "minilm_gptq_w4g128_cosine": pick[("minilm", "gptq", 4)]["cosine_to_reference"],
        "minilm_rtn_w4g128_cosine": pick[("minilm", "rtn", 4)]["cosine_to_reference"],
        "minilm_best_gptq_w4g128_cosine": pick[("minilm", "gptq+", 4)]["cosine_to_reference"],
        "w4g128_weight_bytes_ratio_vs_fp16": g4["bits_per_weight"] / 16,
        "gptq_peak_rss_mb": max(r["peak_rss_mb"] for r in gptq_rows),
        "runtime_only_peak_rss_mb": runtime_rss,
        "fp32_model_mb": fp32_mb,
        "one_block_activations_mb": max(r["calib_activation_mb"] for r in gptq_rows),
    }
    headline["gptq_rss_over_runtime_mb"] = headline["gptq_peak_rss_mb"] - runtime_rss
    headline["memory_bound_mb"] = fp32_mb + headline["one_block_activations_mb"]
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows, "headline": headline}, indent=2) + "\n")
    print(json.dumps(headline))


if __name__ == "__main__":
    main()
