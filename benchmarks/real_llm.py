"""Real pretrained LLMs: lowbit's methods against llm-compressor and llama.cpp on the same weights, scored by one
evaluator.

Models: SmolLM2-135M-Instruct (`smollm2`) and Gemma 3 270M (`gemma3-270m`), the bf16 directories lowbit's
aliases convert (docs/real_models.md). Every cell is one quantized model, and every model is scored by the same
code: `lowbit.eval.divergence` against the bf16 original (run in fp32) on the first `--eval-chars` characters of
the demo's held-out split (Python documentation), window 256, stride 128, every token after the first scored
once. It reports KL(reference || model) of the next-token distribution (mean and 99th percentile), top-1
agreement and perplexity.

- **lowbit** cells are written through `lowbit.api.quantize_dir` (the code behind `lowbit quantize`), so they
  are real packed checkpoints, and they are evaluated from disk. The time is the quantization call.
- **llm-compressor** GPTQ W4A16 runs in its own virtual environment (benchmarks/llmcompressor_peer.py) on the
  same calibration windows. Its dequantized weights are scored, and its compressed save gives the bytes.
- **llama.cpp** files come from llama-quantize on an f16 GGUF of the same bf16 weights, with and without an
  imatrix from the same calibration text (benchmarks/llamacpp_peer.py). They are read back with the gguf
  package's dequantizer into the same PyTorch model, and llama-perplexity's own KLD is recorded beside ours.

Bytes are the weight bytes of each file: safetensors files for lowbit and llm-compressor, tensor data for a GGUF
(its tokenizer metadata is left out; the whole file size is recorded too). Every cell is stored in
`--work`/results.json as soon as it is done, so an interrupted run continues where it stopped.

    python benchmarks/real_llm.py --models smollm2 [--cells all|LABEL,...] [--work DIR] [--plot docs/real_llm.png]

Ends by printing one JSON line with the headline figures (the issue's targets as measured).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from lowbit import api
from lowbit.data import calibration_windows, read_text, tokenize_text
from lowbit.errors import LowbitError
from lowbit.eval import divergence, perplexity
from lowbit.models import load_model, resolve_source
from lowbit.models.load import ASSETS
from lowbit.ptq import CalibConfig
from lowbit.quantizers import WeightSpec

sys.path.insert(0, str(Path(__file__).parent))

WINDOW, STRIDE = 256, 128
DEFAULT_LLAMA = "/work/llamacpp/llama_cpp_python-0.3.36"  # the sdist whose vendor/llama.cpp was built


@dataclass(frozen=True)
class Cell:
    """One quantized model: a tool, a setting (W4A16 ...), and what it ran with."""

    label: str
    tool: str  # lowbit, llama.cpp, llm-compressor
    setting: str
    method: str = ""
    bits: int = 4
    group: int = 64
    act_bits: int = 16
    asym: bool = False
    range: str = "minmax"
    head_bits: int = 16
    qtype: str = ""  # llama.cpp type
    imatrix: bool = False


def lowbit_cells() -> list[Cell]:
    """lowbit's cells: every method at every setting, and the recipes that compete on bytes."""
    c = []
    for method in ("rtn", "gptq", "awq", "awq+gptq"):
        c.append(Cell(f"{method} W4 g64", "lowbit", "W4A16", method))
    c.append(Cell("gptq W4 g128", "lowbit", "W4A16", "gptq", group=128))
    c.append(Cell("gptq W4 g64 asym mse", "lowbit", "W4A16", "gptq", asym=True, range="mse"))
    c.append(Cell("gptq W4 g64 asym mse head8", "lowbit", "W4A16", "gptq", asym=True, range="mse", head_bits=8))
    c.append(Cell("gptq W4 g32 asym mse head8", "lowbit", "W4A16", "gptq", group=32, asym=True, range="mse",
                  head_bits=8))
    c.append(Cell("gptq W5 g64 asym mse head8", "lowbit", "W5A16", "gptq", bits=5, asym=True, range="mse",
                  head_bits=8))
    for method in ("rtn", "gptq", "awq+gptq"):
        c.append(Cell(f"{method} W3 g64", "lowbit", "W3A16", method, bits=3))
    c.append(Cell("gptq W3 g64 asym mse head8", "lowbit", "W3A16", "gptq", bits=3, asym=True, range="mse",
                  head_bits=8))
    c.append(Cell("gptq W2 g64", "lowbit", "W2A16", "gptq", bits=2))
    c.append(Cell("gptq W2 g32 asym mse", "lowbit", "W2A16", "gptq", bits=2, group=32, asym=True, range="mse"))
    c.append(Cell("cbq W2 g32 asym", "lowbit", "W2A16", "cbq", bits=2, group=32, asym=True))
    for method in ("smoothquant+rtn", "smoothquant+gptq", "gptq"):
        c.append(Cell(f"{method} W4A8 g64", "lowbit", "W4A8", method, act_bits=8))
    for method in ("rtn", "rotate+rtn", "rotate+gptq", "rotate+cbq"):
        c.append(Cell(f"{method} W4A4 g64", "lowbit", "W4A4", method, act_bits=4))
    return c


LLAMA_TYPES = ("Q4_0", "Q4_K_M", "Q3_K_M", "Q2_K", "IQ4_XS")


def peer_cells() -> list[Cell]:
    """llm-compressor's GPTQ W4A16 g64 and llama.cpp's types with and without an imatrix."""
    c = [Cell("llm-compressor gptq W4 g64", "llm-compressor", "W4A16", "gptq")]
    for t in LLAMA_TYPES:
        for im in (False, True):
            c.append(Cell(f"llama.cpp {t}{' imatrix' if im else ''}", "llama.cpp", t, qtype=t, imatrix=im))
    return c


class Bench:
    """The shared state of one model's run: reference model, evaluation ids, calibration, work directory."""

    def __init__(self, name: str, work: Path, eval_chars: int, n_samples: int, progress: bool) -> None:
        self.name, self.work, self.progress = name, work, progress
        self.src = resolve_source(name)
        self.ref = load_model(self.src)
        body = read_text(ASSETS / "demo" / "eval.txt", "eval")[:eval_chars]
        self.text = work / "eval.txt"
        self.text.write_text(body)
        self.ids = tokenize_text(self.ref.tokenizer, body)
        self.bos = getattr(self.ref.tokenizer, "bos_token_id", None)
        self.cache: list[torch.Tensor] = []  # the reference's logits per window, computed once
        self.calib_text = work / "calib.txt"
        self.calib_text.write_text(read_text(ASSETS / "demo" / "calib.txt", "calibration"))
        self.calib = CalibConfig(n_samples=n_samples, seq_len=WINDOW)
        self.calib_ids = calibration_windows(self.ref.tokenizer, self.calib_text.read_text(), n_samples, WINDOW)

    def score(self, model: torch.nn.Module) -> dict:
        """The one evaluator: divergence from the reference on the evaluation windows."""
        d = divergence(model, self.ref.model, self.ids, WINDOW, STRIDE, self.bos, self.progress, self.cache)
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in d.items()}

    def fresh(self) -> torch.nn.Module:
        """A fresh fp32 copy of the reference model (for peers' weights)."""
        return load_model(self.src).model


def run_lowbit(b: Bench, cell: Cell) -> dict:
    """Quantize with lowbit's API into a checkpoint, reload it from disk and score it."""
    out = b.work / "ckpt" / cell.label.replace(" ", "_").replace("+", "_")
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    cfg = api.make_config(cell.method, cell.bits, cell.group, not cell.asym, cell.range, cell.act_bits)
    head = WeightSpec(cell.head_bits, 64, range=cell.range) if cell.head_bits < 16 else None
    q = api.quantize_dir(b.src, out, cfg, b.calib_text, b.calib, progress=b.progress, head=head)
    from lowbit.models.checkpoint import load_with_tokenizer

    row = {"seconds": round(q["quantize_seconds"], 2), "bits_per_weight": round(q["bits_per_weight"], 4),
           "bytes": api.weight_bytes(out), **b.score(load_with_tokenizer(out).model)}
    shutil.rmtree(out, ignore_errors=True)
    return row


def run_llmcompressor(b: Bench, cell: Cell) -> dict:
    """llm-compressor's GPTQ in its own venv on the same calibration windows; its dense weights scored here."""
    import llmcompressor_peer

    done = b.work / f"llmc-g{cell.group}.json"  # a finished quantization (same windows) is scored, not redone
    if done.exists():
        res = json.loads(done.read_text())
    else:
        res = llmcompressor_peer.run_gptq(b.src, b.calib_ids, b.work / f"llmc-g{cell.group}", group_size=cell.group)
        done.write_text(json.dumps(res, indent=1) + "\n")
    model = load_model(res["dense_dir"]).model
    return {"seconds": round(res["seconds"], 2), "bytes": res["compressed_bytes"],
            "versions": res.get("versions"), **b.score(model)}


def run_llamacpp(b: Bench, cell: Cell) -> dict:
    """llama-quantize on an f16 GGUF of the same weights, read back with gguf's dequantizer and scored here."""
    import llamacpp_peer as lp

    tools = lp.tools(os.environ.get("LLAMA_CPP_DIR", DEFAULT_LLAMA))
    f16 = b.work / "gguf" / "f16.gguf"
    if not f16.exists():
        f16.parent.mkdir(parents=True, exist_ok=True)
        lp.f16_gguf(tools, b.src, f16)
    imatrix = None
    if cell.imatrix:
        imatrix = b.work / "gguf" / "imatrix.gguf"
        if not imatrix.exists():
            lp.imatrix(tools, f16, b.calib_text, imatrix, ctx=WINDOW)
    out = b.work / "gguf" / f"{cell.qtype}{'-imatrix' if cell.imatrix else ''}.gguf"
    t0 = time.perf_counter()
    lp.quantize(tools, f16, cell.qtype, out, imatrix)
    seconds = time.perf_counter() - t0
    model = b.fresh()
    lp.load_gguf_into(model, out)
    import gguf

    tensors = gguf.GGUFReader(str(out)).tensors
    bpw = lp.bits_per_weight(out)
    row = {"seconds": round(seconds, 2), "bytes": sum(int(r.n_bytes) for r in tensors), "file_bytes": bpw["bytes"],
           "bits_per_weight": round(bpw["linear_bpw"], 4),
           "types": dict(Counter(r.tensor_type.name for r in tensors)), **b.score(model)}
    try:
        row["llama_perplexity"] = lp.llama_kld(tools, f16, out, b.text, ctx=WINDOW)
    except Exception as e:  # llama.cpp's own evaluator is a cross-check, not the score
        row["llama_perplexity"] = {"error": str(e)[:300]}
    return row


RUNNERS = {"lowbit": run_lowbit, "llm-compressor": run_llmcompressor, "llama.cpp": run_llamacpp}


def load_results(path: Path) -> dict:
    """Cells finished by an earlier run (model|label -> row)."""
    return json.loads(path.read_text()) if path.exists() else {}


def save_results(path: Path, results: dict) -> None:
    """Write the results atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    tmp.replace(path)


def run_model(name: str, cells: list[Cell], args: argparse.Namespace, results: dict, path: Path) -> None:
    """Every cell of one model not already in `results`."""
    work = Path(args.work) / name
    work.mkdir(parents=True, exist_ok=True)
    bench = Bench(name, work, args.eval_chars, args.n_samples, not args.quiet)
    key = f"{name}|fp"
    if key not in results:
        results[key] = {"model": name, "label": "fp (bf16 weights)", "tool": "reference", "setting": "bf16",
                        "bytes": api.weight_bytes(bench.src), "eval_tokens": int(bench.ids.numel()),
                        "perplexity": round(perplexity(bench.ref.model, bench.ids, WINDOW, STRIDE, bench.bos,
                                                       False), 4)}
        save_results(path, results)
    for cell in cells:
        key = f"{name}|{cell.label}"
        if key in results and not args.redo:
            continue
        print(f"[{name}] {cell.label} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            row = RUNNERS[cell.tool](bench, cell)
        except (LowbitError, RuntimeError, ValueError, FileNotFoundError) as e:
            row = {"error": str(e).splitlines()[0][:400] if str(e) else type(e).__name__}
        results[key] = {"model": name, **asdict(cell), **row, "cell_seconds": round(time.perf_counter() - t0, 1)}
        save_results(path, results)
        r = results[key]
        print(f"[{name}] {cell.label}: " + (f"KLD {r['kld_mean']:.4f}, ppl {r['perplexity']:.3f}, "
              f"{r['bytes'] / 1e6:.1f} MB, {r.get('seconds', 0):.0f} s" if "kld_mean" in r else r["error"]),
              file=sys.stderr, flush=True)


def rows_of(results: dict, name: str) -> list[dict]:
    """The scored rows of one model."""
    return [r for k, r in results.items() if k.startswith(f"{name}|") and "kld_mean" in r]


def best_within(rows: list[dict], budget: float, **match: object) -> dict | None:
    """The lowbit row of lowest KLD with no more bytes than `budget` (and the given fields)."""
    ok = [r for r in rows if r["tool"] == "lowbit" and r["bytes"] <= budget
          and all(r.get(k) == v for k, v in match.items())]
    return min(ok, key=lambda r: r["kld_mean"]) if ok else None


def headline(results: dict, names: list[str]) -> dict:
    """The issue's targets, as measured in this run."""
    out: dict = {}
    for name in names:
        rows = rows_of(results, name)
        by = {r["label"]: r for r in rows}
        fp = results.get(f"{name}|fp", {}).get("perplexity")
        h: dict = {"fp_perplexity": fp}
        ours, peer = by.get("gptq W4 g64"), by.get("llm-compressor gptq W4 g64")
        if ours and peer:
            h["gptq_w4g64_kld"] = ours["kld_mean"]
            h["llmcompressor_w4g64_kld"] = peer["kld_mean"]
            h["gptq_w4g64_speedup_vs_llmcompressor"] = round(peer["seconds"] / ours["seconds"], 2)
        for qtype, key in (("Q4_K_M", "q4_k_m"), ("Q3_K_M", "q3_k_m"), ("Q2_K", "q2_k")):
            ref = by.get(f"llama.cpp {qtype} imatrix")
            if ref:
                best = best_within(rows, ref["bytes"])
                h[f"llamacpp_{key}_imatrix_kld"] = ref["kld_mean"]
                h[f"llamacpp_{key}_imatrix_bytes"] = ref["bytes"]
                h[f"lowbit_best_at_{key}_bytes"] = best and {"label": best["label"], "kld": best["kld_mean"],
                                                            "bytes": best["bytes"]}
        w2 = [r for r in rows if r["tool"] == "lowbit" and r["bits"] == 2]
        if w2 and fp:
            b2 = min(w2, key=lambda r: r["perplexity"])
            h["best_w2_perplexity_vs_fp"] = {"label": b2["label"], "ratio": round(b2["perplexity"] / fp, 3)}
        for r in rows:
            if r["tool"] == "lowbit" and r["act_bits"] == 4 and r["method"].startswith("rotate") and fp:
                h[f"w4a4_{r['method']}_vs_fp"] = round(r["perplexity"] / fp, 3)
        h["errors"] = {k.split("|", 1)[1]: r["error"] for k, r in results.items()
                       if k.startswith(f"{name}|") and "error" in r}
        out[name] = h
    return out


def table(results: dict, name: str) -> str:
    """Markdown table of one model's rows, sorted by bytes."""
    fp = results.get(f"{name}|fp", {})
    lines = [f"\n{name}: fp perplexity {fp.get('perplexity')}, {fp.get('eval_tokens')} tokens, "
             f"window {WINDOW} stride {STRIDE}\n",
             "| tool | cell | MB | bits/weight | KLD mean | KLD p99 | top-1 | perplexity | quantize s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows_of(results, name), key=lambda r: r["bytes"]):
        bpw = r.get("bits_per_weight")
        lines.append(f"| {r['tool']} | {r['label']} | {r['bytes'] / 1e6:.1f} | "
                     f"{'' if bpw is None else f'{bpw:.2f}'} | {r['kld_mean']:.4f} | {r['kld_p99']:.3f} | "
                     f"{100 * r['top1_agreement']:.1f}% | {r['perplexity']:.3f} | {r.get('seconds', 0):.0f} |")
    return "\n".join(lines)


def pareto(rows: list[dict]) -> list[dict]:
    """The rows not beaten in both bytes and KLD by another row, by increasing bytes."""
    front: list[dict] = []
    for r in sorted(rows, key=lambda r: (r["bytes"], r["kld_mean"])):
        if not front or r["kld_mean"] < front[-1]["kld_mean"]:
            front.append(r)
    return front


def plot(results: dict, names: list[str], out: Path) -> Path:
    """KLD against bytes: every cell a point, one Pareto line per tool (llama.cpp with and without imatrix
    apart), one panel per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(names), figsize=(6.5 * len(names), 4.8), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        groups: dict[str, list[dict]] = {}
        for r in rows_of(results, name):
            tool = r["tool"] + (" imatrix" if r.get("imatrix") else "")
            if r["tool"] == "lowbit" and r["act_bits"] < 16:
                continue  # activation quantization is not a storage trade-off
            groups.setdefault(tool, []).append(r)
        for tool, rs in sorted(groups.items()):
            xs, ys = [r["bytes"] / 1e6 for r in rs], [r["kld_mean"] for r in rs]
            front = pareto(rs)  # the line joins the cells no other cell of the tool beats in both size and KLD
            (line,) = ax.plot([r["bytes"] / 1e6 for r in front], [r["kld_mean"] for r in front],
                              "-" if len(front) > 1 else "", alpha=0.8, label=tool)
            ax.scatter(xs, ys, color=line.get_color(), s=22, alpha=0.8)
            for r in rs:
                text = r["qtype"] if tool.startswith("llama.cpp") else r["label"]
                ax.annotate(text, (r["bytes"] / 1e6, r["kld_mean"]), fontsize=6, alpha=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("weight bytes (MB)")
        ax.set_ylabel("mean KL(fp || quantized), nats")
        ax.set_title(f"{name} (weight-only)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


def select(cells: list[Cell], spec: str) -> list[Cell]:
    """`all`, or a comma-separated list of labels / tools / settings, run in that order."""
    if spec == "all":
        return cells
    out: list[Cell] = []
    for want in (s.strip() for s in spec.split(",")):  # in the order asked
        out += [c for c in cells if want in (c.label, c.tool, c.setting) and c not in out]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="smollm2,gemma3-270m")
    ap.add_argument("--cells", default="all", help="all, or labels / tools / settings, comma-separated")
    ap.add_argument("--work", default=str(Path.home() / ".cache" / "lowbit" / "real_llm"))
    ap.add_argument("--eval-chars", type=int, default=24000, help="characters of the held-out split scored")
    ap.add_argument("--n-samples", type=int, default=128, help="calibration windows of 256 tokens")
    ap.add_argument("--redo", action="store_true", help="run cells again even if results.json has them")
    ap.add_argument("--plot", default="docs/real_llm.png")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--merge", default="", help="other runs' results.json (comma-separated) to include in the "
                    "table, plot and headline (e.g. peers run in a second process with their own --work)")
    args = ap.parse_args()
    names = args.models.split(",")
    cells = select(lowbit_cells() + peer_cells(), args.cells)
    path = Path(args.work) / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    results = load_results(path)
    for name in names:
        run_model(name, cells, args, results, path)
    for other in filter(None, args.merge.split(",")):
        results = {**load_results(Path(other)), **results}
    for name in names:
        print(table(results, name))
    print(f"wrote {plot(results, names, Path(args.plot))}", file=sys.stderr)
    h = headline(results, names)
    print(json.dumps({"real_llm": h}, default=lambda x: None if isinstance(x, float) and math.isnan(x) else x))


if __name__ == "__main__":
    main()
