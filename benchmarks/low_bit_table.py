"""Low-bit table: RTN, GPTQ, AWQ, SmoothQuant, rotate+GPTQ and CBQ at W4A16 g128, W3A16 g128, W2A16 g64, W4A8, W4A4.

Demo model: perplexity on its held-out split (window 256, stride 128). all-MiniLM-L6-v2: mean cosine of pooled
embeddings to the fp32 model. Every cell is quantized through lowbit.api.quantize_dir (the code behind
`lowbit quantize`), written as a packed checkpoint and evaluated from disk (`lowbit eval`'s code), so
activation quantizers and online Hadamard transforms are exercised through save and load. CBQ cells run in
a subprocess (`lowbit quantize ... --json`) so that their time and peak RSS are their own. The per-block
relative error of each checkpoint against the fp model is recorded for `lowbit report`.

Usage: python benchmarks/low_bit_table.py [--models demo,minilm] [--n-samples 64] [--out docs/results/...]
KV-cache quantization: --kv-bits 16,8,4 runs every cell at each KV width (labels such as 'W4A4 g128 KV8').
Ends by printing one JSON line with the table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from lowbit import api
from lowbit.data import read_text, tokenize_text
from lowbit.errors import LowbitError
from lowbit.eval.report import block_errors, write_report
from lowbit.models import load_model
from lowbit.models.checkpoint import load_with_tokenizer
from lowbit.models.load import ASSETS
from lowbit.ptq import CalibConfig

SETTINGS = [("W4A16 g128", 4, 128, 16), ("W3A16 g128", 3, 128, 16), ("W2A16 g64", 2, 64, 16),
            ("W4A8 g128", 4, 128, 8), ("W4A4 g128", 4, 128, 4)]
METHODS = ["rtn", "gptq", "awq", "smoothquant", "rotate+gptq", "cbq", "rotate+cbq"]


def quantize_subprocess(src: str, method: str, bits: int, group: int, act: int, out: Path, n_samples: int,
                        cbq_steps: int, kv: int = 16, calib_seed: int = 0) -> dict:
    """`lowbit quantize --recipe` in a fresh process (one thread); returns its JSON line (time, own peak RSS)."""
    recipe = out.with_name(out.name + ".yaml")
    recipe.write_text(f"method: {method}\nbits: {bits}\ngroup_size: {group}\nact_bits: {act}\nkv_bits: {kv}\n"
                      f"options: {{cbq: {{steps: {cbq_steps}}}}}\n")
    cmd = [sys.executable, "-m", "lowbit.cli", "quantize", src, "--recipe", str(recipe), "--n-samples",
           str(n_samples), "--calib-seed", str(calib_seed), "--out", str(out), "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if r.returncode:
        raise RuntimeError(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def probe_ids(model_name: str, tokenizer: object, n: int = 8, length: int = 256) -> torch.Tensor:
    """A few windows of held-out tokens for the per-block error."""
    ids = tokenize_text(tokenizer, read_text(ASSETS / "demo" / "eval.txt", "eval"))
    length = min(length, 128 if model_name == "minilm" else 256)
    return ids[: n * length].reshape(n, length)


def logit_kl(fp_model: torch.nn.Module, q_model: torch.nn.Module, ids: torch.Tensor) -> float:
    """Mean KL(p_fp || p_q) of next-token distributions over the probe windows (fidelity to full precision)."""
    with torch.no_grad():
        lp = fp_model(input_ids=ids, use_cache=False).logits.float().log_softmax(-1)
        lq = q_model(input_ids=ids, use_cache=False).logits.float().log_softmax(-1)
    return float((lp.exp() * (lp - lq)).sum(-1).mean())


def run_model(name: str, tmp: Path, n_samples: int, methods: list[str], settings: list, cbq_steps: int,
              text: Path, calib_seed: int = 0) -> dict:
    """Every (setting, method) cell of one model."""
    fp = api.evaluate(name, text, reference=name if name == "minilm" else None, progress=False)
    metric = "cosine" if name == "minilm" else "perplexity"
    fp_val = fp["cosine_to_reference"] if name == "minilm" else fp["perplexity"]
    ref = load_model(name)
    ids = probe_ids(name, ref.tokenizer)
    rows = []
    for label, bits, group, act, kv in settings:
        for method in methods:
            out = tmp / f"{name}-{method.replace('+', '_')}-w{bits}a{act}kv{kv}"
            row: dict = {"method": method, "setting": label, "bits": bits, "group_size": group, "act_bits": act,
                         "kv_bits": kv}
            t0 = time.perf_counter()
            try:
                if method.endswith("cbq"):
                    q = quantize_subprocess(name, method, bits, group, act, out, n_samples, cbq_steps, kv,
                                           calib_seed)
                else:
                    cfg = api.make_config(method, bits, group, act_bits=act, kv_bits=kv)
                    calib = CalibConfig(n_samples=n_samples, seed=calib_seed)
                    q = api.quantize_dir(name, out, cfg, calib_config=calib, progress=False)
            except LowbitError as e:
                row.update(value=None, note=str(e))
                rows.append(row)
                print(f"{name} {label} {method}: not applicable ({e})", file=sys.stderr, flush=True)
                continue
            ev = api.evaluate(out, text, reference=name if name == "minilm" else None, progress=False)
            loaded = load_with_tokenizer(out)
            row.update(value=ev["cosine_to_reference"] if name == "minilm" else ev["perplexity"],
                       bits_per_weight=ev["bits_per_weight"], quantize_seconds=round(q["quantize_seconds"], 2),
                       peak_rss_mb=round(q["peak_rss_mb"], 1) if method.endswith("cbq") else None,
                       block_errors=[round(e, 5) for e in block_errors(ref.model, loaded.model, ref.family, ids)])
            if name != "minilm":
                row["kl_to_fp"] = round(logit_kl(ref.model, loaded.model, ids), 6)
            rows.append(row)
            shutil.rmtree(out, ignore_errors=True)
            print(f"{name} {label} {method}: {metric} {row['value']:.4f} (fp {fp_val:.4f}), "
                  f"{row['quantize_seconds']:.1f} s quantize, {time.perf_counter() - t0:.1f} s cell",
                  file=sys.stderr, flush=True)
    return {"metric": metric, "fp": fp_val, "rows": rows}


def print_table(name: str, model: dict, methods: list[str], settings: list, key: str = "value") -> None:
    """Markdown table: one row per method, one column per setting (`key`: value, or kl_to_fp)."""
    fmt = "{:.4f}" if model["metric"] == "cosine" or key != "value" else "{:.2f}"
    title = f"{model['metric']}; full precision {fmt.format(model['fp'])}" if key == "value" else \
        "KL(fp || quantized) of next-token distributions on 8 x 256 held-out tokens"
    print(f"\n{name} ({title})\n")
    print("| method | " + " | ".join(s[0] for s in settings) + " |")
    print("|---" * (len(settings) + 1) + "|")
    for m in methods:
        cells = []
        for s in settings:
            r = next((r for r in model["rows"] if r["method"] == m and r["setting"] == s[0]), None)
            cells.append("n/a" if r is None or r.get(key) is None else fmt.format(r[key]))
        print(f"| {m} | " + " | ".join(cells) + " |")


def headline(models: dict) -> dict:
    """The targets as measured: best method per setting, CBQ vs GPTQ, rotation at W4A4."""
    out: dict = {}
    for name, m in models.items():
        better = (lambda a, b: a < b) if m["metric"] == "perplexity" else (lambda a, b: a > b)
        cell = {(r["method"], r["setting"]): r["value"] for r in m["rows"] if r["value"] is not None}
        info: dict = {"fp": m["fp"], "best": {}}
        for s in dict.fromkeys(r["setting"] for r in m["rows"]):
            vals = {k[0]: v for k, v in cell.items() if k[1] == s}
            if vals:
                best = None
                for meth, v in vals.items():
                    if best is None or better(v, vals[best]):
                        best = meth
                info["best"][s] = best
                if "cbq" in vals and "gptq" in vals:
                    info.setdefault("cbq_not_worse_than_gptq", {})[s] = not better(vals["gptq"], vals["cbq"])
                cbqs = [k for k in vals if k.endswith("cbq")]  # cbq and its recipes (rotate+cbq, cfp+cbq)
                if len(cbqs) > 1:
                    info.setdefault("best_cbq_variant", {})[s] = min(cbqs, key=lambda k: vals[k] * (
                        1 if m["metric"] == "perplexity" else -1))
        for meth in ("rtn", "rotate+rtn", "rotate+gptq", "rotate+cbq"):
            v = cell.get((meth, "W4A4 g128"))
            key = meth.replace("+", "_")
            if m["metric"] == "perplexity":
                info[f"w4a4_{key}_vs_fp"] = v / m["fp"] if v else None
            else:  # cosine to fp: the error 1 - cosine (fp: 0)
                info[f"w4a4_{key}_cosine_error"] = round(1 - v, 4) if v else None
        out[name] = info
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default="demo,minilm")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--settings", default="all", help="comma-separated labels such as 'W2A16 g64' or 'all'")
    ap.add_argument("--n-samples", type=int, default=64, help="calibration windows (256 tokens) per method")
    ap.add_argument("--cbq-steps", type=int, default=40, help="CBQ optimiser steps per window (default here 40)")
    ap.add_argument("--eval-chars", type=int, default=0, help="evaluate on the first N characters of the held-out "
                    "split (0: all of it)")
    ap.add_argument("--kv-bits", default="16", help="comma-separated KV-cache bits per cell, e.g. 16,8,4 (label "
                    "suffix ' KV8')")
    ap.add_argument("--calib-seed", type=int, default=0, help="seed of the calibration windows' offsets (default 0)")
    ap.add_argument("--out", default="docs/results/low_bit_table.json")
    ap.add_argument("--plots", default="docs/results", help="directory for lowbit report's PNG files")
    args = ap.parse_args()
    settings = SETTINGS if args.settings == "all" else [s for s in SETTINGS if s[0] in args.settings.split(",")]
    settings = [(s[0] + ("" if kv == 16 else f" KV{kv}"), *s[1:], kv) for s in settings
                for kv in map(int, args.kv_bits.split(","))]
    methods = args.methods.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="lowbit-lowbit-table-"))
    t0 = time.perf_counter()
    try:
        text = tmp / "eval.txt"  # the demo's held-out split, or its first --eval-chars characters
        body = read_text(ASSETS / "demo" / "eval.txt", "eval")
        text.write_text(body[: args.eval_chars] if args.eval_chars else body)
        models = {n: run_model(n, tmp, args.n_samples, methods, settings, args.cbq_steps, text,
                               args.calib_seed)
                  for n in args.models.split(",")}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    table = {"models": models, "n_samples": args.n_samples, "eval_chars": args.eval_chars, "seq_len": 256,
             "cbq_steps": args.cbq_steps, "calib_seed": args.calib_seed,
             "seconds": round(time.perf_counter() - t0),
             "headline": headline(models)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(f".{out.name}.tmp")
    tmp_out.write_text(json.dumps(table, indent=1) + "\n")
    tmp_out.replace(out)
    for n, m in models.items():
        print_table(n, m, methods, settings)
        if any("kl_to_fp" in r for r in m["rows"]):
            print_table(n, m, methods, settings, "kl_to_fp")
    for p in write_report(out, args.plots):
        print(f"wrote {p}")
    print(json.dumps({"low_bit_table": {n: {f"{r['method']} {r['setting']}": r["value"] for r in m["rows"]}
                                        for n, m in models.items()}, "headline": table["headline"]}))


if __name__ == "__main__":
    main()
