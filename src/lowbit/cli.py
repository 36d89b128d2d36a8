"""The `lowbit` command: a thin layer over lowbit.api."""

from __future__ import annotations

import argparse
import json
import math
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

from lowbit.errors import LowbitError
from lowbit.files import check_output

MAX_NEW_TOKENS = 1 << 20


def _quantize(a: argparse.Namespace) -> None:
    from lowbit import api
    from lowbit.ptq import CalibConfig
    from lowbit.quantizers import WeightSpec

    if a.resume and not a.stream:
        raise LowbitError("--resume continues an interrupted --stream run; pass --stream --resume")
    check_output(a.out, [_source(a.src)])
    if a.gguf:
        _quantize_gguf(a)
        return
    config = api.make_config(a.method, a.bits, a.group_size, not a.asym, a.range, a.act_bits, None, a.kv_bits,
                             recipe=a.recipe, damp=a.damp, act_order=not a.no_act_order,
                             true_sequential=a.true_sequential)
    calib = CalibConfig(n_samples=a.n_samples, seq_len=a.seq_len, batch_size=a.batch_size, seed=a.calib_seed)
    head = None if a.head_bits == 16 else WeightSpec(a.head_bits, a.head_group_size, True, a.range)
    res = api.quantize_dir(a.src, a.out, config, a.calib, calib, stream=a.stream, resume=a.resume, head=head)
    print(api.describe(res) if a.json else
          f"wrote {res['out']}: {config.weight.describe()} A{res.get('act_bits', 16)}"
          f"{'' if res.get('kv_bits', 16) == 16 else ' KV' + str(res['kv_bits'])} via {res['method']}, "
          f"{'' if head is None else 'head and embedding ' + head.describe() + ', '}"
          f"{res['bits_per_weight']:.3f} bits/weight, "
          f"{res['quantize_seconds']:.1f} s quantizing, peak RSS {res['peak_rss_mb']:.0f} MiB")


def _quantize_gguf(a: argparse.Namespace) -> None:
    from lowbit import api
    from lowbit.ptq import CalibConfig

    method = "gptq" if a.method == "gptq" else "rtn" if a.method == "rtn" else None
    if method is None:
        raise LowbitError(f"--gguf takes --method gptq (default) or rtn, not {a.method}")
    calib = CalibConfig(n_samples=a.n_samples, seq_len=a.seq_len, batch_size=a.batch_size, seed=a.calib_seed)
    res = api.quantize_gguf(a.src, a.out, a.gguf, method, a.calib, calib, damp=a.damp, act_order=not a.no_act_order)
    print(api.describe(res) if a.json else
          f"wrote {res['out']}: GGUF {res['type']} via {method}, {res['bytes'] / 1e6:.1f} MB "
          f"({', '.join(f'{k} x{v}' for k, v in sorted(res['types'].items()))}), "
          f"{res['quantize_seconds']:.1f} s quantizing, peak RSS {res['peak_rss_mb']:.0f} MiB")


def _eval(a: argparse.Namespace) -> None:
    from lowbit import api

    res = api.evaluate(a.src, a.text, a.reference, a.window, a.stride, progress=not a.json)
    if a.json:
        print(api.describe(res))
    else:
        for k, v in res.items():
            print(f"{k:>20}: {v:.4f}" if isinstance(v, float) else f"{k:>20}: {v}")


def _generate(a: argparse.Namespace) -> None:
    from lowbit import api

    if not a.prompt.strip():
        raise LowbitError("--prompt is empty; give some text to continue")
    res = api.generate_dir(a.src, a.prompt, a.max_new_tokens, a.temperature, a.top_k, a.top_p, a.seed, a.dtype,
                           a.engine, a.kernel)
    if a.json:
        print(api.describe(res))
    else:
        print(a.prompt + res["text"])
        print(f"\n[{res['prompt_tokens']} prompt tokens, {res['new_tokens']} new; prefill "
              f"{res['prefill_tokens_per_s']:.1f} tok/s, decode {res['decode_tokens_per_s']:.1f} tok/s, {a.dtype}, "
              f"{res['engine']} engine, {res['kernel']} kernel]",
              file=sys.stderr)


def _source(src: str) -> Path:
    from lowbit.models.load import resolve_source

    return resolve_source(src)


def _inspect(a: argparse.Namespace) -> None:
    from lowbit import api
    from lowbit.files import verify_manifest

    if a.verify:
        manifest = verify_manifest(_source(a.src))
        print(f"{a.src}: {len(manifest['files'])} files match {len(manifest['files'])} sha256 sums in the manifest")
        return
    print(json.dumps(api.inspect_dir(a.src), indent=2, default=str))


def _report(a: argparse.Namespace) -> None:
    from lowbit.eval.report import write_report

    for path in write_report(a.table, a.out, a.model):
        print(f"wrote {path}")


def _demo(a: argparse.Namespace) -> None:
    from lowbit import api

    root = Path(tempfile.mkdtemp(prefix="lowbit-demo-")) if a.keep is None else Path(a.keep)
    rows = []
    try:
        fp = api.evaluate("demo", progress=False)
        rows.append(("fp16 (original)", 16, fp["perplexity"], fp["bytes"], None, fp["bits_per_weight"]))
        for bits in (4, 3):
            for method in ("rtn", "gptq"):
                cfg = api.make_config(method, bits, 128)
                print(f"quantizing the demo model: {method} W{bits} g128 ...", file=sys.stderr, flush=True)
                q = api.quantize_dir("demo", root / f"{method}-w{bits}g128", cfg, progress=True)
                ev = api.evaluate(q["out"], progress=False)
                rows.append((method, bits, ev["perplexity"], ev["bytes"], q["quantize_seconds"],
                             ev["bits_per_weight"]))
    finally:
        if a.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\nlowbit demo: a {fp['family']} model trained on the Python docs; perplexity on the held-out split "
          f"({fp['eval_tokens']:,} tokens, window {fp['window']}, stride {fp['stride']}); time = quantization\n")
    print(f"{'method':<16}{'bits':>5}{'bits/w':>8}{'perplexity':>12}{'vs fp16':>9}{'size MB':>9}{'time s':>8}")
    for name, bits, ppl, size, secs, bpw in rows:
        t = "-" if secs is None else f"{secs:.2f}"
        print(f"{name:<16}{bits:>5}{bpw:>8.2f}{ppl:>12.2f}{ppl / rows[0][2]:>8.3f}x{size / 1e6:>9.2f}{t:>8}")
    if a.keep is not None:
        print(f"\ncheckpoints kept in {root}")


def _export(a: argparse.Namespace) -> None:
    from lowbit.export import export_model

    check_output(a.out, [_source(a.src)])
    res = export_model(a.src, a.out, a.format, a.type, a.bits, a.group_size)
    if a.json:
        print(json.dumps(res))
    else:
        kinds = res.get("tensors") or res.get("scheme")
        print(f"wrote {res['out']} ({res['format']}, {kinds}, {res['bytes'] / 1e6:.2f} MB)")


def _convert_gguf(a: argparse.Namespace) -> None:
    from lowbit.models.convert import convert_gguf

    res = convert_gguf(a.file, a.out, a.dtype)
    print(json.dumps(res) if a.json else f"wrote {res['out']}: {res['model_type']} from {res['architecture']} GGUF, "
          f"{res['parameters'] / 1e6:.1f}M parameters in {res['dtype']}, {res['bytes'] / 1e6:.1f} MB")


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr (exit code 2), like every lowbit error."""

    def error(self, message: str) -> NoReturn:
        """Print `lowbit <command>: error: message` on one line and exit with code 2."""
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def at_least(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer from `low` (to `high`)."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < low or (high is not None and v > high):
            raise argparse.ArgumentTypeError(f"{v} is out of range; give {low}" + (f"-{high}" if high else " or more"))
        return v
    return parse


def head_bits(text: str) -> int:
    """An argparse type: --head-bits, an integer 2-8, or 16 (keep the head in float)."""
    v = text.strip()
    if v not in [str(b) for b in (*range(2, 9), 16)]:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of 2-8, or 16 to keep the head in float")
    return int(v)


def finite_float(low: float, high: float = math.inf) -> Callable[[str], float]:
    """An argparse type: a finite number in [low, high]."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(v) or not low <= v <= high:
            raise argparse.ArgumentTypeError(f"{text} is out of range; give a finite number from {low} to {high}")
        return v
    return parse


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `lowbit` command."""
    p = Parser(prog="lowbit", description="Make neural networks low-bit for real.")
    sub = p.add_subparsers(dest="cmd", required=True)

    q = sub.add_parser("quantize", help="quantize a Hugging Face model directory (or 'demo', 'minilm', 'smollm2', "
                       "'gemma3-270m')")
    q.add_argument("src")
    q.add_argument("--method", default="gptq", help="rtn, gptq (default), awq, smoothquant, cbq, or a recipe: "
                   "rotate+gptq, awq+gptq, smoothquant+rtn, cfp+cbq, rotate+cbq, ...")
    q.add_argument("--act-bits", type=int, default=16, help="activation bits: 16 (off, default), 8 or 4 (per token)")
    q.add_argument("--kv-bits", type=int, default=16,
                   help="KV-cache bits: 16 (off, default), 8 or 4 (keys after RoPE and values, per token and head)")
    q.add_argument("--recipe", help="YAML recipe file (method, bits, group_size, act_bits, options per step)")
    q.add_argument("--bits", type=int, default=4, help="weight bits, 2-8 (default 4)")
    q.add_argument("--group-size", type=int, default=128, help="group size along the input dim; 0 per channel")
    q.add_argument("--asym", action="store_true", help="asymmetric ranges (a zero point per group)")
    q.add_argument("--range", default="minmax", help="range estimation: minmax or mse (shrink search)")
    q.add_argument("--head-bits", type=head_bits, default=16,
                   help="LM head and input embedding bits: 16 keeps them in float (default), 2-8 rounds them to "
                        "nearest, symmetric (tied embeddings stay one table)")
    q.add_argument("--head-group-size", type=int, default=64,
                   help="group size of the head and embedding (default 64: a multiple of GGUF's blocks of 32)")
    q.add_argument("--true-sequential", action="store_true", help="GPTQ: re-collect each stage's inputs")
    q.add_argument("--calib", help="calibration text file (default: the demo's calibration split)")
    q.add_argument("--n-samples", type=at_least(1), default=128, help="calibration windows (default 128)")
    q.add_argument("--seq-len", type=at_least(2), default=256, help="tokens per calibration window (default 256)")
    q.add_argument("--batch-size", type=at_least(1), default=16, help="calibration windows per forward pass (memory)")
    q.add_argument("--calib-seed", type=int, default=0, help="seed of the calibration windows' offsets (default 0)")
    q.add_argument("--damp", type=finite_float(0.0), default=0.01, help="GPTQ dampening, fraction of mean diag(H)")
    q.add_argument("--no-act-order", action="store_true", help="GPTQ: keep the natural column order")
    q.add_argument("--stream", action="store_true",
                   help="never load the whole model: read, quantize and write one block at a time (large models)")
    q.add_argument("--resume", action="store_true", help="continue an interrupted --stream run")
    q.add_argument("--gguf", metavar="TYPE", help="write a GGUF file of llama.cpp's type TYPE instead (Q4_0, Q5_0, "
                   "Q8_0, Q2_K, Q3_K_S/M/L, Q4_K_S/M, Q5_K_S/M, Q6_K; llama.cpp's per-tensor mix; --method gptq "
                   "(GPTQ inside the K-quant grids) or rtn (importance-weighted, as llama.cpp with an imatrix))")
    q.add_argument("--out", required=True, help="output directory (must not exist), or the .gguf file with --gguf")
    q.add_argument("--json", action="store_true", help="print one JSON line")
    q.set_defaults(fn=_quantize)

    e = sub.add_parser("eval", help="perplexity / cosine fidelity / size of a model or checkpoint")
    e.add_argument("src")
    e.add_argument("--text", help="evaluation text file (default: the demo's held-out split)")
    e.add_argument("--reference", help="reference model: cosine of embeddings (encoders) or logits (LMs)")
    e.add_argument("--window", type=at_least(2), default=512, help="context window (capped at the model's maximum)")
    e.add_argument("--stride", type=at_least(1), help="tokens a window advances (default: half the window)")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.set_defaults(fn=_eval)

    d = sub.add_parser("demo", help="quantize the bundled demo model with RTN and GPTQ at 4 and 3 bits")
    d.add_argument("--keep", help="keep the checkpoints in this directory")
    d.set_defaults(fn=_demo)

    x = sub.add_parser("export", help="export a checkpoint to compressed-tensors (vLLM) or GGUF (llama.cpp)")
    x.add_argument("src")
    x.add_argument("--format", required=True, help="compressed-tensors or gguf")
    x.add_argument("--type", default="Q4_0", help="GGUF type: Q8_0, Q6_K, Q4_0, Q4_K or Q4_K_M (default Q4_0)")
    x.add_argument("--bits", type=int, default=4, help="RTN bits when SRC is not quantized (compressed-tensors)")
    x.add_argument("--group-size", type=int, default=128, help="RTN group size when SRC is not quantized")
    x.add_argument("--out", required=True, help="output directory (compressed-tensors) or .gguf file")
    x.add_argument("--json", action="store_true", help="print one JSON line")
    x.set_defaults(fn=_export)

    g = sub.add_parser("generate", help="continue a prompt with a model or quantized checkpoint (KV cache)")
    g.add_argument("src")
    g.add_argument("--prompt", required=True, help="text to continue")
    g.add_argument("--max-new-tokens", type=at_least(1, MAX_NEW_TOKENS), default=64,
                   help="tokens to generate (default 64)")
    g.add_argument("--temperature", type=finite_float(0.0), default=0.0, help="0 = greedy (default); >0 samples")
    g.add_argument("--top-k", type=at_least(0), default=0, help="sample among the k most likely tokens (0 = all)")
    g.add_argument("--top-p", type=finite_float(0.0, 1.0), default=1.0,
                   help="nucleus sampling mass (default 1.0 = off)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed")
    g.add_argument("--dtype", default="bf16", help="activation dtype: bf16 (fast int4 path, default) or fp32")
    g.add_argument("--engine", default="auto", choices=["auto", "lean", "transformers"],
                   help="forward used per token: lowbit's lean one (Llama/Mistral/Qwen2/Qwen3; auto picks it where "
                        "it applies) or transformers'")
    g.add_argument("--kernel", default="auto", choices=["auto", "c", "c-int8", "int4pack", "torch"],
                   help="packed-weight kernel: c (exact, default), c-int8 (int8 activations per group, faster, "
                        "not exact), int4pack (PyTorch's int4), torch (reference)")
    g.add_argument("--json", action="store_true", help="print one JSON line")
    g.set_defaults(fn=_generate)

    r = sub.add_parser("report", help="plots from a low-bit table (benchmarks/low_bit_table.py JSON)")
    r.add_argument("table", help="JSON file written by benchmarks/low_bit_table.py (or its last output line)")
    r.add_argument("--out", required=True, help="directory for the PNG files")
    r.add_argument("--model", help="which model's rows to plot (default: every model, one chart each)")
    r.set_defaults(fn=_report)

    c = sub.add_parser("convert-gguf", help="dequantize a GGUF file into a Hugging Face model directory")
    c.add_argument("file", help="the .gguf file (llama, qwen2, qwen3, phi3, gemma2, gemma3, ... architectures)")
    c.add_argument("--out", required=True, help="output directory (must not exist)")
    c.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"],
                   help="stored dtype: bf16 (default; GGUF 4-bit values kept to 2^-9 relative) or fp32 (exact)")
    c.add_argument("--json", action="store_true", help="print one JSON line")
    c.set_defaults(fn=_convert_gguf)

    i = sub.add_parser("inspect", help="what a model directory or checkpoint holds")
    i.add_argument("src")
    i.add_argument("--verify", action="store_true", help="check every file against the sha256 in lowbit_manifest.json")
    i.set_defaults(fn=_inspect)
    from lowbit.latent.disentangle_cli import add_parser as _add_disentangle
    _add_disentangle(sub)
    return p


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt inside the block, so temporary outputs are removed on `kill`."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interrupted(args: argparse.Namespace) -> str:
    """The one line printed on Ctrl-C or SIGTERM: what was kept on disk."""
    if getattr(args, "stream", False):
        out = Path(args.out)
        partial = out.parent / f".{out.name}.partial"
        if partial.exists():
            return (f"interrupted; the finished blocks are kept in {partial}: rerun with --resume to continue, "
                    "or remove it")
    return "interrupted; nothing was written"


def main(argv: list[str] | None = None) -> int:
    """Entry point: run a subcommand; user errors print one line and exit with code 2."""
    args = build_parser().parse_args(argv)
    try:
        with sigterm_as_interrupt():
            args.fn(args)
    except LowbitError as e:
        print(f"lowbit: error: {' '.join(str(e).split())}", file=sys.stderr)  # always one line
        return 2
    except KeyboardInterrupt:
        print(f"lowbit: {interrupted(args)}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
