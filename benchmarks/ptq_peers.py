"""lowbit GPTQ against llm-compressor and Intel Neural Compressor GPTQ: same model, same calibration, one run.

Usage (in an environment with the peers installed, see docs/benchmarks.md):
    pip install llmcompressor neural-compressor-pt
    python benchmarks/ptq_peers.py [--model demo] [--samples 128] [--seq-len 256] [--repeats 3]

W4 group 128 symmetric weights, lm_head and embeddings in full precision, for every tool. Each tool starts
from a fresh copy of the fp32 model; only the quantization call is timed (model loading and evaluation are
not). Perplexity uses the evaluator's window (the model's maximum position, at most 512) with stride
half of it. Tools are run interleaved, `--repeats` rounds, and the median wall time is reported with its ratio
to lowbit's. Perplexity is measured by one evaluator (lowbit.eval.perplexity) on the demo's held-out split.
Ends by printing one JSON line with the headline figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from lowbit.data import calibration_windows, read_text, tokenize_text
from lowbit.eval import perplexity
from lowbit.models import load_model
from lowbit.models.load import ASSETS
from lowbit.ptq import GPTQConfig, quantize
from lowbit.quantizers import WeightSpec


def run_lowbit(loaded, tokens: torch.Tensor, act_order: bool) -> None:
    quantize(loaded.model, loaded.family, GPTQConfig(WeightSpec(4, 128), act_order=act_order), tokens,
             progress=False)


def run_llmcompressor(loaded, tokens: torch.Tensor) -> None:
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier

    ds = Dataset.from_dict({"input_ids": tokens.tolist(), "attention_mask": torch.ones_like(tokens).tolist()})
    recipe = GPTQModifier(targets="Linear", scheme="W4A16", ignore=["lm_head"])
    oneshot(model=loaded.model, dataset=ds, recipe=recipe, max_seq_length=tokens.shape[1],
            num_calibration_samples=tokens.shape[0], tokenizer=loaded.tokenizer)


def run_inc(loaded, tokens: torch.Tensor) -> None:
    from neural_compressor.torch.quantization import GPTQConfig as IncGPTQ
    from neural_compressor.torch.quantization import convert, prepare

    cfg = IncGPTQ(bits=4, group_size=128, use_sym=True, act_order=True, block_size=128, percdamp=0.01)
    cfg.set_local("lm_head", IncGPTQ(dtype="fp32"))
    model = prepare(loaded.model, cfg)
    with torch.no_grad():
        for s in range(0, tokens.shape[0], 16):
            model(input_ids=tokens[s:s + 16])
    loaded.model = convert(model)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tools", default="lowbit,lowbit-noact,llmcompressor,inc")
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    base = load_model(args.model)
    tokens = calibration_windows(base.tokenizer, read_text(ASSETS / "demo" / "calib.txt"), args.samples,
                                 args.seq_len, seed=0)
    eval_ids = tokenize_text(base.tokenizer, read_text(ASSETS / "demo" / "eval.txt"))
    bos = base.tokenizer.bos_token_id
    window = min(512, base.model.config.max_position_embeddings)  # the demo model was trained at 256 tokens
    fp_ppl = perplexity(base.model, eval_ids, window, window // 2, bos, progress=False)
    runners = {"lowbit": lambda m: run_lowbit(m, tokens, True), "lowbit-noact": lambda m: run_lowbit(m, tokens, False),
               "llmcompressor": lambda m: run_llmcompressor(m, tokens), "inc": lambda m: run_inc(m, tokens)}
    tools = args.tools.split(",")
    times: dict[str, list[float]] = {t: [] for t in tools}
    ppl: dict[str, float] = {}
    errors: dict[str, str] = {}
    for r in range(args.repeats):
        for tool in tools:
            if tool in errors:
                continue
            m = load_model(args.model)
            t0 = time.perf_counter()
            try:
                runners[tool](m)
            except Exception as e:  # a peer failing is a result to report, not a crash
                errors[tool] = f"{type(e).__name__}: {str(e)[:300]}"
                print(f"{tool} failed: {errors[tool]}", flush=True)
                continue
            times[tool].append(time.perf_counter() - t0)
            print(f"round {r} {tool}: {times[tool][-1]:.2f} s", flush=True)
            if tool not in ppl:
                ppl[tool] = perplexity(m.model, eval_ids, window, window // 2, bos, progress=False)
    med = {t: statistics.median(v) for t, v in times.items() if v}
    print(f"\nW4 g128 GPTQ on {args.model}, {args.samples} x {args.seq_len} calibration tokens, "
          f"{args.repeats} interleaved rounds, torch threads {torch.get_num_threads()}")
    print(f"{'tool':<15}{'perplexity':>11}{'vs fp':>8}{'median s':>10}{'time / lowbit':>15}")
    print(f"{'fp32':<15}{fp_ppl:>11.3f}{1:>8.3f}")
    for t in med:
        print(f"{t:<15}{ppl[t]:>11.3f}{ppl[t] / fp_ppl:>8.3f}{med[t]:>10.2f}{med[t] / med['lowbit']:>15.2f}")
    head = {"model": args.model, "fp_perplexity": fp_ppl, "perplexity": ppl, "median_seconds": med,
            "speedup_vs_llmcompressor": med.get("llmcompressor", float("nan")) / med["lowbit"],
            "speedup_vs_inc": med.get("inc", float("nan")) / med["lowbit"], "errors": errors}
    print(json.dumps(head))


if __name__ == "__main__":
    main()
