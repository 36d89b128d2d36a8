"""Run lowbit's GGUF exports in llama.cpp and compare next-token predictions with lowbit's own model.

The demo model is quantized with GPTQ W4 g32 (symmetric), exported as Q4_0 (our codes carried over exactly),
Q8_0 (carried over exactly too: 4-bit codes fit int8) and Q4_K (re-quantized from the dequantized weights),
and run in llama.cpp (llama-cpp-python, in its own virtual environment: --llama-python) on windows of the
demo's held-out split (SentencePiece ids, the tokenizer the demo was trained with; llama.cpp's own tokenization
of held-out paragraphs is checked against it too). On the same token ids we compare llama.cpp's logits with
lowbit's (the packed GPTQ checkpoint run in PyTorch, fp32): top-1 agreement, logits cosine, and greedy
continuations. Baseline in the
same run: lowbit's full-precision demo model against the same GPTQ model (how much quantization itself moves
the predictions), so that the export's disagreement can be read against it.

    python benchmarks/export_llamacpp.py --llama-python /work/llamacpp-venv/bin/python

The llama.cpp side runs this same file with `--worker` in that interpreter (numpy and llama_cpp only).
Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TYPES = ("Q4_0", "Q8_0", "Q4_K")
# also exported straight from the full-precision demo: how each type's own rounding is made
FP_TYPES = {"Q4_0": "RTN, gguf reference", "Q4_K": "our Q4_K fit", "Q4_K_M": "our Q4_K / Q6_K mix",
            "Q6_K": "our Q6_K fit"}


def worker(job_file: str, out_file: str) -> None:
    """llama.cpp side: logits of every window and greedy continuations of every prompt, for each GGUF."""
    import llama_cpp

    job = json.loads(Path(job_file).read_text())
    res: dict[str, np.ndarray] = {}
    first = llama_cpp.Llama(model_path=next(iter(job["models"].values())), vocab_only=True, verbose=False)
    res["tokenized"] = np.array([json.dumps(first.tokenize(t.encode(), add_bos=False)) for t in job["texts"]])
    del first
    for name, path in job["models"].items():
        llm = llama_cpp.Llama(model_path=path, n_ctx=job["n_ctx"], n_batch=job["n_ctx"], logits_all=True,
                              n_threads=job["threads"], verbose=False, seed=0)
        t0 = time.perf_counter()
        logits = []
        for ids in job["windows"]:
            llm.reset()
            llm.eval(ids)
            logits.append(np.array(llm.scores[: len(ids)], dtype=np.float32))
        res[f"{name}/seconds"] = np.array(time.perf_counter() - t0)
        res[f"{name}/logits"] = np.stack(logits)
        conts = []
        for ids in job["prompts"]:
            llm.reset()
            seq = list(ids)
            llm.eval(seq)
            for _ in range(job["new_tokens"]):
                nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
                seq.append(nxt)
                llm.eval([nxt])
            conts.append(seq[len(ids):])
        res[f"{name}/greedy"] = np.array(conts, dtype=np.int64)
        del llm
    np.savez(out_file, **res)


def _lowbit_logits(model, windows: np.ndarray):  # -> np.ndarray
    import torch

    with torch.no_grad():
        return np.stack([model(torch.from_numpy(w)[None]).logits[0].float().numpy() for w in windows])


def _greedy(model, prompts: np.ndarray, n: int) -> np.ndarray:
    import torch

    out = []
    with torch.no_grad():
        for p in prompts:
            seq = torch.from_numpy(p)[None]
            for _ in range(n):
                nxt = model(seq).logits[0, -1].argmax().view(1, 1)
                seq = torch.cat([seq, nxt], dim=1)
            out.append(seq[0, len(p):].numpy())
    return np.stack(out)


def compare(a: np.ndarray, b: np.ndarray) -> dict:
    """Top-1 agreement and mean per-position logits cosine of two [windows, T, vocab] logit arrays."""
    agree = a.argmax(-1) == b.argmax(-1)
    top1 = float(agree.mean())
    top2 = np.sort(b, axis=-1)[..., -2:]
    margin = top2[..., 1] - top2[..., 0]  # the reference's top-1 minus top-2 logit
    af, bf = a.reshape(-1, a.shape[-1]).astype(np.float64), b.reshape(-1, b.shape[-1]).astype(np.float64)
    cos = (af * bf).sum(1) / (np.linalg.norm(af, axis=1) * np.linalg.norm(bf, axis=1))
    return {"top1_agreement": top1, "logits_cosine": float(cos.mean()), "logits_cosine_min": float(cos.min()),
            "max_abs_logit_diff": float(np.abs(a - b).max()), "disagreements": int((~agree).sum()),
            "max_margin_at_disagreement": float(margin[~agree].max()) if (~agree).any() else 0.0,
            "median_margin": float(np.median(margin))}


def perplexity(logits: np.ndarray, windows: np.ndarray) -> float:
    """Perplexity of next-token predictions inside the windows (position t predicts token t + 1)."""
    z = logits[:, :-1].astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, windows[:, 1:, None], axis=-1)
    return float(np.exp(nll.mean()))


def greedy_agreement(a: np.ndarray, b: np.ndarray) -> dict:
    """Share of continuation tokens equal position by position, and mean length of the common prefix."""
    same = a == b
    prefix = np.where(same.all(1), a.shape[1], np.argmin(same, axis=1))
    return {"greedy_token_agreement": float(same.mean()), "greedy_common_prefix": float(prefix.mean()),
            "greedy_prefixes": prefix.tolist()}


def main() -> None:
    """Quantize, export, run both sides, print the comparison table and one JSON line."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", nargs=2, metavar=("JOB", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--llama-python", default="/work/llamacpp-venv/bin/python",
                    help="python of the virtual environment holding llama-cpp-python")
    ap.add_argument("--ckpt", help="an existing GPTQ W4 g32 checkpoint of the demo (default: quantize one)")
    ap.add_argument("--work", help="directory for the checkpoint and GGUF files (default: a temporary one)")
    ap.add_argument("--windows", type=int, default=32, help="held-out windows (default 32)")
    ap.add_argument("--seq-len", type=int, default=128, help="tokens per window (default 128)")
    ap.add_argument("--prompts", type=int, default=16, help="greedy continuation prompts (default 16)")
    ap.add_argument("--new-tokens", type=int, default=32, help="greedy tokens per prompt (default 32)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="docs/results/export_llamacpp.json", help="raw results (JSON)")
    a = ap.parse_args()
    if a.worker:
        worker(*a.worker)
        return

    import torch

    import lowbit
    from lowbit import api
    from lowbit.export import export_model
    from lowbit.models import load_model

    torch.set_num_threads(a.threads)
    work = Path(a.work or tempfile.mkdtemp(prefix="lowbit-export-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    ckpt = Path(a.ckpt) if a.ckpt else work / "gptq-w4g32"
    if not ckpt.exists():
        print("quantizing the demo model: GPTQ W4 g32 sym ...", file=sys.stderr, flush=True)
        api.quantize_dir("demo", ckpt, api.make_config("gptq", 4, 32), progress=False)
    files, export_s, summaries = {}, {}, {}
    for t in TYPES:
        files[t] = work / f"demo-gptq-w4g32-{t}.gguf"
        if files[t].exists():
            files[t].unlink()
        t0 = time.perf_counter()
        summaries[t] = export_model(str(ckpt), str(files[t]), "gguf", t)
        export_s[t] = time.perf_counter() - t0
    for t in FP_TYPES:  # baseline exports: the full-precision model quantized on the fly
        files[f"fp-{t}"] = work / f"demo-fp-{t}.gguf"
        if files[f"fp-{t}"].exists():
            files[f"fp-{t}"].unlink()
        summaries[f"fp-{t}"] = export_model("demo", str(files[f"fp-{t}"]), "gguf", t)

    import sentencepiece as spm

    fp = load_model("demo")
    sp = spm.SentencePieceProcessor(model_file=str(fp.path / "tokenizer.model"))  # the demo was trained on these ids
    ids = np.array(sp.encode(fp.path.joinpath("eval.txt").read_text()), dtype=np.int64)
    body = a.seq_len - 1
    starts = np.linspace(0, len(ids) - body - 1, a.windows).astype(int)
    bos = sp.bos_id()
    windows = np.stack([np.concatenate([[bos], ids[s:s + body]]) for s in starts])
    prompts = windows[: a.prompts, :32]
    paragraphs = [p for p in fp.path.joinpath("eval.txt").read_text().split("\n\n") if len(p) > 200][:200]

    job = {"models": {k: str(f) for k, f in files.items()}, "windows": windows.tolist(), "prompts": prompts.tolist(),
           "new_tokens": a.new_tokens, "texts": paragraphs, "n_ctx": max(a.seq_len, 32 + a.new_tokens),
           "threads": a.threads}
    (work / "job.json").write_text(json.dumps(job))
    t0 = time.perf_counter()
    proc = subprocess.run(["nice", "-n", "10", a.llama_python, __file__, "--worker", str(work / "job.json"),
                           str(work / "llama.npz")], capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"llama.cpp worker failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    llama_s = time.perf_counter() - t0
    llama = np.load(work / "llama.npz")

    ll_ids = [json.loads(str(t)) for t in llama["tokenized"]]
    tok_match = float(np.mean([t == sp.encode(p) for t, p in zip(ll_ids, paragraphs, strict=True)]))
    hf_match = float(np.mean([t == fp.tokenizer(p, add_special_tokens=False)["input_ids"]
                              for t, p in zip(ll_ids, paragraphs, strict=True)]))
    print(f"tokenizer: llama.cpp tokenizes {len(paragraphs)} held-out paragraphs exactly as SentencePiece (the "
          f"training tokenizer) for {tok_match:.1%} of them, as transformers' tokenizer.json for {hf_match:.1%}")
    quant = lowbit.load(ckpt)
    ours = _lowbit_logits(quant, windows)
    ours_greedy = _greedy(quant, prompts, a.new_tokens)
    fp_logits = _lowbit_logits(fp.model, windows)
    base = compare(fp_logits, ours)  # baseline: fp16 demo vs the GPTQ model, both lowbit
    base.update(greedy_agreement(_greedy(fp.model, prompts, a.new_tokens), ours_greedy))

    rows = {"lowbit fp (baseline)": base}
    for t in TYPES:
        r = compare(llama[f"{t}/logits"], ours)
        r.update(greedy_agreement(llama[f"{t}/greedy"], ours_greedy))
        r.update({"carried_over": summaries[t]["carried_over"], "linears": summaries[t]["linears"],
                  "bytes": summaries[t]["bytes"], "export_seconds": export_s[t],
                  "llama_eval_seconds": float(llama[f"{t}/seconds"])})
        rows[f"llama.cpp {t}"] = r
    positions = windows.size
    print(f"\ndemo model, GPTQ W4 g32 sym checkpoint; {a.windows} held-out windows x {a.seq_len} tokens "
          f"({positions} positions); {a.prompts} greedy prompts x {a.new_tokens} tokens; reference: lowbit's "
          f"GPTQ model (PyTorch fp32)\n")
    print(f"{'predictor':<22}{'top-1 agree':>12}{'cosine':>10}{'min cos':>10}{'greedy tok':>12}{'prefix':>8}"
          f"{'carried':>9}")
    for name, r in rows.items():
        carried = f"{r['carried_over']}/{r['linears']}" if "carried_over" in r else "-"
        print(f"{name:<22}{r['top1_agreement']:>12.4f}{r['logits_cosine']:>10.5f}{r['logits_cosine_min']:>10.5f}"
              f"{r['greedy_token_agreement']:>12.3f}{r['greedy_common_prefix']:>8.1f}{carried:>9}")
    for name, r in rows.items():
        print(f"{name}: {r['disagreements']} top-1 disagreements, at reference top-1/top-2 margins up to "
              f"{r['max_margin_at_disagreement']:.3f} (median margin over all positions {r['median_margin']:.3f}); "
              f"greedy common prefixes {r['greedy_prefixes']}")
    ppl = {"lowbit fp16": perplexity(fp_logits, windows), "lowbit GPTQ W4 g32": perplexity(ours, windows)}
    ppl.update({f"llama.cpp {t} (GPTQ codes)": perplexity(llama[f"{t}/logits"], windows) for t in TYPES})
    ppl.update({f"llama.cpp {t} from fp16": perplexity(llama[f"fp-{t}/logits"], windows) for t in FP_TYPES})
    fp_rows = {t: compare(llama[f"fp-{t}/logits"], fp_logits) for t in FP_TYPES}
    print(f"\nperplexity over the {a.windows} windows (next-token, {a.windows * body} predictions):")
    for name, v in ppl.items():
        print(f"  {name:<32}{v:>9.3f}")
    for t, r in fp_rows.items():
        print(f"llama.cpp {t} exported from fp16 ({FP_TYPES[t]}) vs "
              f"lowbit fp16: top-1 {r['top1_agreement']:.4f}, cosine {r['logits_cosine']:.5f}")
    q40 = rows["llama.cpp Q4_0"]
    print(f"\nQ4_0 disagreement / quantization's own disagreement (fp vs GPTQ): "
          f"{(1 - q40['top1_agreement']) / max(1 - base['top1_agreement'], 1e-9):.3f}")
    out = {"tokenizer_paragraphs": len(paragraphs), "tokenizer_exact_match": tok_match,
           "tokenizer_json_exact_match": hf_match, "windows": a.windows,
           "seq_len": a.seq_len, "positions": int(positions), "llama_seconds": llama_s,
           "rows": rows, "perplexity": ppl, "fp_source_rows": fp_rows, "llama_cpp_python": "0.3.36",
           "threads": a.threads}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    headline = {"positions": int(positions), "tokenizer_exact_match": round(tok_match, 4)}
    for t in TYPES:
        r = rows[f"llama.cpp {t}"]
        key = t.lower()
        headline.update({f"{key}_top1_agreement": round(r["top1_agreement"], 4),
                         f"{key}_logits_cosine": round(r["logits_cosine"], 5),
                         f"{key}_greedy_agreement": round(r["greedy_token_agreement"], 4),
                         f"{key}_carried_over": f"{r['carried_over']}/{r['linears']}"})
    headline.update({f"ppl {k}": round(v, 3) for k, v in ppl.items()})
    headline.update({"baseline_fp_vs_gptq_top1": round(base["top1_agreement"], 4),
                     "baseline_fp_vs_gptq_cosine": round(base["logits_cosine"], 5)})
    print(json.dumps(headline))


if __name__ == "__main__":
    main()
