"""Batch-1 decode and prefill speed of packed low-bit models against fp32 and bf16, timed interleaved.

Usage: python benchmarks/decode_speed.py [--big DIR] [--big-w4 DIR] [--rounds 5] [--new-tokens 32]
       [--prompt-tokens 128] [--shapes 1b,smollm2,gemma3] [--groups 128,64] [--levels native,avx2]
       [--llamacpp-python PY --gguf-q4_0 FILE [--gguf-q4_k FILE]]

Shapes (random weights, benchmarks/random_llama.py): "1b" (TinyLlama-1.1B), "smollm2" (SmolLM2-135M: 576/1536,
30 layers, 9/3 heads, vocabulary 49152) and "gemma3" (Gemma 3 270M's sizes as a Llama: 640/2048, 18 layers,
vocabulary 262144; 5 heads of 128 instead of 4 of 256, since the writer's q_proj is square). Levels: the W4
variants run once per kernel level (lowbit.kernels.lib; "native" is the machine's, "avx2" on an AVX-512
machine is a proxy for an AVX2-only CPU), interleaved in the same rounds; the first level keeps the plain names.

Models: the bundled demo (6.8M Llama) and a ~1.1B Llama-shaped model with random weights (built with
benchmarks/random_llama.py when --big is not given; quantized with RTN W4 g128 when --big-w4 is not given).
Variants: fp32 and bf16 dense; W4 g128 through our exact C kernel ("w4g128", bf16 activations), through the
int8-activation VNNI kernel ("w4-int8", kernel c-int8, not exact) and, on the big model, through PyTorch's int4
kernel ("w4-int4pack"); on the demo also W8 g128, W3 g128 and W2 g64 (exact C kernel). Every variant runs
through lowbit's lean decoder (models/lean.py; `--engine transformers` to time transformers' forward instead).
Every round runs every variant once (same prompt ids, greedy, no early stop); figures are medians over
rounds, ratios are against the fp32 / bf16 model measured in the same rounds.
With --llamacpp-python (a Python that has llama_cpp) and GGUF files of the big model, llama.cpp runs in a
worker process, interleaved with ours. Ends by printing one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its thread pool

import torch  # noqa: E402

from lowbit import api  # noqa: E402
from lowbit.kernels.lib import cpu_level  # noqa: E402
from lowbit.kernels.qlinear import set_kernel  # noqa: E402
from lowbit.models.checkpoint import load_with_tokenizer  # noqa: E402
from lowbit.models.generate import generate, warm_up  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import random_llama  # noqa: E402

random_llama.SHAPES.update({
    "smollm2": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152),
    "gemma3": dict(hidden_size=640, intermediate_size=2048, num_hidden_layers=18, num_attention_heads=5,
                   num_key_value_heads=1, vocab_size=262144),
})
SHAPE_LABEL = {"1b": "~1.1B Llama shape", "smollm2": "SmolLM2-135M shape", "gemma3": "Gemma-3-270M sizes"}


@contextlib.contextmanager
def at_level(level: str | None):
    """Run the enclosed code with the kernels of `level` ("native" or None: the machine's)."""
    old = os.environ.get("LOWBIT_CPU")
    if level in (None, "native"):
        os.environ.pop("LOWBIT_CPU", None)
    else:
        os.environ["LOWBIT_CPU"] = level
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("LOWBIT_CPU", None)
        else:
            os.environ["LOWBIT_CPU"] = old

LLAMACPP_WORKER = r"""
import json, sys, time
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=int(sys.argv[2]), n_threads=int(sys.argv[3]), n_batch=512,
            verbose=False)
for line in sys.stdin:
    req = json.loads(line)
    ids, n = req["ids"], req["n"]
    llm.reset()
    t0 = time.perf_counter(); llm.eval(ids); t1 = time.perf_counter()
    for _ in range(n - 1):
        tok = llm.sample(temp=0.0)
        llm.eval([tok])
    t2 = time.perf_counter()
    print(json.dumps({"prefill_s": t1 - t0, "decode_s": t2 - t1}), flush=True)
"""


def model_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters, buffers and packed-kernel state in memory."""
    n = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    for m in model.modules():
        kern = getattr(m, "_kernel", None) or {}
        n += sum(v.numel() * v.element_size() for v in kern.values() if isinstance(v, torch.Tensor))
    return n


class LlamaCpp:
    """A llama.cpp worker process (llama-cpp-python) that times prefill and greedy decode on request."""

    def __init__(self, python: str, gguf: str, ctx: int, threads: int) -> None:
        self.proc = subprocess.Popen([python, "-c", LLAMACPP_WORKER, gguf, str(ctx), str(threads)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def run(self, ids: list[int], n: int) -> tuple[float, float]:
        self.proc.stdin.write(json.dumps({"ids": ids, "n": n}) + "\n")
        self.proc.stdin.flush()
        r = json.loads(self.proc.stdout.readline())
        return len(ids) / r["prefill_s"], (n - 1) / r["decode_s"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def bench(variants: dict, ids: list[int], new: int, rounds: int, engine: str = "auto") -> dict:
    """Interleaved rounds over the variants; median prefill and decode tokens/s of each."""
    got: dict[str, dict[str, list[float]]] = {k: {"prefill": [], "decode": []} for k in variants}
    for r in range(rounds):
        for name, v in variants.items():
            if isinstance(v, LlamaCpp):
                p, d = v.run(ids, new)
            else:
                with at_level(LEVEL_OF.get(name)):
                    g = generate(v.model, v.tokenizer, ids, new, stop_at_eos=False, engine=engine)
                p, d = g.prefill_tokens_per_s, g.decode_tokens_per_s
            got[name]["prefill"].append(p)
            got[name]["decode"].append(d)
            print(f"  round {r + 1}/{rounds} {name:>10}: prefill {p:8.1f} tok/s, decode {d:7.2f} tok/s",
                  file=sys.stderr, flush=True)
    return {k: {m: statistics.median(v[m]) for m in v} for k, v in got.items()}


KERNEL_OF = {"w4-int4pack": "int4pack", "w4-int8": "c-int8"}
LEVEL_OF: dict[str, str] = {}  # variant name -> kernel level it runs at


def kernel_of(name: str) -> str:
    """The kernel a variant name asks for ("w4-int8g64@avx2" -> c-int8)."""
    base = name.split("@")[0]
    return next((k for pre, k in KERNEL_OF.items() if base.startswith(pre)), "auto")


def run_set(label: str, dirs: dict[str, str], ids: list[int], new: int, rounds: int, extra: dict,
            engine: str) -> dict:
    """Load every variant of one model, time them, and print a table with ratios."""
    variants = {}
    for name, d in dirs.items():
        dtype = torch.float32 if name == "fp32" else torch.bfloat16
        variants[name] = load_with_tokenizer(d, dtype)
        set_kernel(variants[name].model, kernel_of(name))
        with at_level(LEVEL_OF.get(name)):
            warm_up(variants[name].model)  # the packed kernels (and their level) are chosen here
    sizes = {k: model_bytes(v.model) for k, v in variants.items()}
    variants.update(extra)
    med = bench(variants, ids, new, rounds, engine)
    print(f"\n{label}: prompt {len(ids)} tokens, {new} new, {rounds} rounds, {torch.get_num_threads()} threads, "
          f"{engine} engine")
    print(f"{'variant':>16}{'MB':>9}{'prefill tok/s':>15}{'decode tok/s':>14}{'dec/fp32':>10}{'dec/bf16':>10}"
          f"{'pre/bf16':>10}")
    for k, m in med.items():
        mb = f"{sizes[k] / 1e6:9.1f}" if k in sizes else f"{'-':>9}"
        print(f"{k:>16}{mb}{m['prefill']:15.1f}{m['decode']:14.2f}{m['decode'] / med['fp32']['decode']:10.2f}"
              f"{m['decode'] / med['bf16']['decode']:10.2f}{m['prefill'] / med['bf16']['prefill']:10.2f}")
    return {"median": med, "model_mb": {k: v / 1e6 for k, v in sizes.items()}}


def quantized(src: str, root: Path, name: str, bits: int, group: int) -> str:
    out = root / name
    if not out.exists():
        api.quantize_dir(src, out, api.make_config("rtn", bits, group), progress=False)
    return str(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--big", help="a ~1B Llama-shaped model directory (default: build a random one)")
    ap.add_argument("--big-w4", help="its W4 g128 checkpoint (default: quantize it with RTN)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--skip-demo", action="store_true")
    ap.add_argument("--engine", default="auto", choices=["auto", "lean", "transformers"])
    ap.add_argument("--shapes", default="1b", help="random-weight shapes: 1b, smollm2, gemma3 (comma list)")
    ap.add_argument("--groups", default="128", help="W4 group sizes of the big shapes (comma list)")
    ap.add_argument("--levels", default="native", help="kernel levels of the W4 variants, e.g. native,avx2")
    ap.add_argument("--int4pack", action="store_true", help="also time PyTorch's int4 kernel (w4-int4pack)")
    ap.add_argument("--llamacpp-python", help="python executable with llama_cpp installed")
    ap.add_argument("--gguf-q4_0", help="GGUF Q4_0 file of the big model (for llama.cpp)")
    ap.add_argument("--gguf-q4_k", help="GGUF Q4_K file of the big model (for llama.cpp)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    tmp = Path(tempfile.mkdtemp(prefix="lowbit-decode-"))
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 4096, (a.prompt_tokens,), generator=gen).tolist()
    res: dict = {"threads": a.threads, "prompt_tokens": a.prompt_tokens, "new_tokens": a.new_tokens,
                 "engine": a.engine}
    if not a.skip_demo:
        w4 = quantized("demo", tmp, "w4", 4, 128)
        demo = {"fp32": "demo", "bf16": "demo", "w4g128": w4, "w4-int8": w4,
                "w8g128": quantized("demo", tmp, "w8", 8, 128), "w3g128": quantized("demo", tmp, "w3", 3, 128),
                "w2g64": quantized("demo", tmp, "w2", 2, 64)}
        res["demo"] = run_set("demo (6.8M Llama)", demo, ids, a.new_tokens, a.rounds, {}, a.engine)
    extra = {}
    if a.llamacpp_python:
        for key, f in (("llamacpp_q4_0", a.gguf_q4_0), ("llamacpp_q4_k", a.gguf_q4_k)):
            if f:
                extra[key] = LlamaCpp(a.llamacpp_python, f, a.prompt_tokens + a.new_tokens + 8, a.threads)
    levels = a.levels.split(",")
    res["levels"] = {lv: (cpu_level() if lv == "native" else lv) for lv in levels}
    try:
        for shape in a.shapes.split(","):
            src = a.big if (shape == "1b" and a.big) else str(tmp / shape)
            if not Path(src).exists():
                random_llama.write_random_llama(Path(src), shape)
            dirs = {"fp32": src, "bf16": src}
            for i, lv in enumerate(levels):
                tag = "" if i == 0 else f"@{lv}"
                for g in (int(x) for x in a.groups.split(",")):
                    given = a.big_w4 if (shape == "1b" and g == 128) else None
                    ck = given or quantized(src, tmp, f"{shape}-w4g{g}", 4, g)
                    for name in (f"w4g{g}{tag}", f"w4-int8g{g}{tag}") + ((f"w4-int4packg{g}{tag}",) if a.int4pack
                                                                       else ()):
                        dirs[name] = ck
                        LEVEL_OF[name] = lv
            res[shape] = run_set(f"{SHAPE_LABEL[shape]} (random weights)", dirs, ids, a.new_tokens, a.rounds,
                                 extra if shape == "1b" else {}, a.engine)
    finally:
        for w in extra.values():
            w.close()
    head = {}
    for s in res:
        if not isinstance(res[s], dict) or "median" not in res[s]:
            continue
        m = res[s]["median"]
        for name in m:
            if name.startswith("w4"):
                head[f"{s}_{name}_decode_vs_fp32"] = round(m[name]["decode"] / m["fp32"]["decode"], 3)
                head[f"{s}_{name}_prefill_vs_bf16"] = round(m[name]["prefill"] / m["bf16"]["prefill"], 3)
                for k in ("llamacpp_q4_0", "llamacpp_q4_k"):
                    if k in m:
                        head[f"{s}_{name}_decode_vs_{k}"] = round(m[name]["decode"] / m[k]["decode"], 3)
    print(json.dumps({**head, **res}, default=float))


if __name__ == "__main__":
    main()
