"""llama.cpp as a peer on the same weights: convert a Hugging Face directory to an f16 GGUF, compute an imatrix,
quantize with llama-quantize, score with llama.cpp's own evaluator (llama-perplexity --kl-divergence), and read
any GGUF back into the Hugging Face model through the gguf package's dequantizer so that lowbit's evaluator can
score it too (the converter's transforms undone: llama's rope row permutation of q/k, Gemma 3's (1 + w) norms).

Tools come from LLAMA_CPP_DIR (llama.cpp's source directory, binaries in build/bin) or the `llama_dir` argument.
Usage (measurement): python benchmarks/llamacpp_peer.py --model smollm2 --types Q4_K_M,Q4_0 --work /tmp/lcp
Ends with one JSON line: per file, bytes, bits per weight, lowbit's divergence and llama.cpp's KLD statistics.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lowbit.errors import LowbitError
from lowbit.files import atomic_output

BINARIES = ("llama-quantize", "llama-imatrix", "llama-perplexity")
BUILD = ("cmake -B build -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DCMAKE_BUILD_TYPE=Release && cmake --build build "
         "--target llama-quantize llama-imatrix llama-perplexity")
LINEARS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
FALLBACK = re.compile(r"warning: (\S+)\s+- ncols\s+(\d+) not divisible by (\d+) \(required for type\s+(\w+)\) "
                      r"-> falling back to\s+(\w+)")


@dataclass(frozen=True)
class Tools:
    """Where llama.cpp's binaries and its HF-to-GGUF converter are."""

    root: Path
    bin: Path
    convert: Path


def tools(llama_dir: str | Path | None = None) -> Tools:
    """Locate llama-quantize, llama-imatrix, llama-perplexity and convert_hf_to_gguf.py (LLAMA_CPP_DIR by default)."""
    given = llama_dir or os.environ.get("LLAMA_CPP_DIR")
    how = f"build llama.cpp (in its source dir: {BUILD}) and set LLAMA_CPP_DIR to that dir"
    if not given:
        raise LowbitError(f"llama.cpp not found: {how}")
    root = Path(given).expanduser()
    if (root / "vendor" / "llama.cpp").is_dir():  # the llama-cpp-python sdist
        root = root / "vendor" / "llama.cpp"
    t = Tools(root, root / "build" / "bin", root / "convert_hf_to_gguf.py")
    missing = [p.name for p in [t.convert, *(t.bin / b for b in BINARIES)] if not p.is_file()]
    if missing:
        raise LowbitError(f"{root} lacks {', '.join(missing)}: {how}")
    return t


def _run(t: Tools, cmd: list[str | Path], what: str) -> str:
    """Run a llama.cpp command niced, print one line with its time, return its log; one-line error on failure."""
    env = dict(os.environ, LD_LIBRARY_PATH=f"{t.bin}:{os.environ.get('LD_LIBRARY_PATH', '')}")
    print(f"llama.cpp: {what} ...", flush=True)
    t0 = time.perf_counter()
    p = subprocess.run(["nice", "-n", "10", *map(str, cmd)], env=env, capture_output=True, text=True)
    log = p.stdout + p.stderr
    if p.returncode != 0:
        said = [ln.strip() for ln in log.splitlines() if re.search(r"\w", ln)][-2:]
        raise LowbitError(f"llama.cpp {what} failed ({p.returncode}): {' | '.join(said)}")
    print(f"llama.cpp: {what} done in {time.perf_counter() - t0:.1f} s", flush=True)
    return log


def f16_gguf(t: Tools, hf_dir: str | Path, out_path: str | Path) -> Path:
    """Convert a Hugging Face model directory to an f16 GGUF with llama.cpp's convert_hf_to_gguf.py."""
    out = Path(out_path)
    with atomic_output(out, replace=True) as tmp:
        _run(t, [sys.executable, t.convert, Path(hf_dir), "--outtype", "f16", "--outfile", tmp], f"convert {out.name}")
    return out


def imatrix(t: Tools, f16_path: str | Path, calib_text_path: str | Path, out_path: str | Path, ctx: int = 256,
            chunks: int | None = None) -> Path:
    """Importance matrix of the f16 model on a calibration text (llama-imatrix; GGUF-format imatrix, which
    llama-quantize --imatrix reads, as it does the legacy .dat)."""
    out = Path(out_path)
    cmd = [t.bin / "llama-imatrix", "-m", f16_path, "-f", calib_text_path, "-c", str(ctx), "-t", "2",
           "--output-format", "gguf"]
    with atomic_output(out, replace=True) as tmp:
        _run(t, [*cmd, "-o", tmp, *(["--chunks", str(chunks)] if chunks else [])], f"imatrix {out.name}")
    return out


def quantize(t: Tools, f16_path: str | Path, qtype: str, out_path: str | Path,
             imatrix: str | Path | None = None) -> Path:
    """Quantize an f16 GGUF to any type llama-quantize accepts; the log goes beside the file (OUT.log) and the
    per-tensor fallbacks it chose (rows not divisible by the type's block) are summed up on the console."""
    out = Path(out_path)
    cmd = [t.bin / "llama-quantize", *(["--imatrix", imatrix] if imatrix else [])]
    with atomic_output(out, replace=True) as tmp:
        log = _run(t, [*cmd, f16_path, tmp, qtype, "2"], f"quantize {qtype}{' +imatrix' if imatrix else ''}")
    out.with_name(out.name + ".log").write_text(log)
    falls = Counter(f"{a}->{b}" for *_, a, b in fallbacks(log).values())
    if falls:
        print(f"llama.cpp: {qtype}: {sum(falls.values())} tensors fell back: "
              + ", ".join(f"{k} x{n}" for k, n in falls.most_common()), flush=True)
    return out


def fallbacks(log: str) -> dict[str, tuple[int, int, str, str]]:
    """Per tensor in a llama-quantize log: (ncols, required block, wanted type, type used instead)."""
    return {m[1]: (int(m[2]), int(m[3]), m[4], m[5]) for m in FALLBACK.finditer(log)}


def tensor_types(gguf_path: str | Path) -> dict[str, str]:
    """The GGML type of every tensor of a GGUF file, by GGUF tensor name."""
    import gguf

    return {r.name: r.tensor_type.name for r in gguf.GGUFReader(str(gguf_path)).tensors}


def file_bytes(path: str | Path) -> int:
    """Size of a file in bytes."""
    return Path(path).stat().st_size


def bits_per_weight(gguf_path: str | Path) -> dict:
    """Bits per weight two ways: file bytes * 8 over every weight, and the block linear layers' own bits."""
    import gguf

    tensors = gguf.GGUFReader(str(gguf_path)).tensors
    lin = [r for r in tensors if r.name.startswith("blk.") and r.name.split(".")[2] in LINEARS]
    n_all, n_lin = sum(int(r.n_elements) for r in tensors), sum(int(r.n_elements) for r in lin)
    return {"bytes": file_bytes(gguf_path), "weights": n_all, "linear_weights": n_lin,
            "file_bpw": file_bytes(gguf_path) * 8 / n_all,
            "linear_bpw": sum(int(r.n_bytes) for r in lin) * 8 / n_lin}


def _field(reader: object, key: str) -> object:
    f = reader.fields.get(key)  # type: ignore[attr-defined]
    if f is None:
        raise LowbitError(f"GGUF metadata lacks {key}; is this a model file written by convert_hf_to_gguf.py?")
    return f.contents()


def _unpermute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Inverse of the converter's LlamaModel.permute (rows of each head: rotate-half halves interleaved)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _undo(arch: str, gname: str, hf_name: str, w: torch.Tensor, heads: tuple[int, int]) -> torch.Tensor:
    """Undo what convert_hf_to_gguf.py did to one tensor of an architecture."""
    if arch == "llama" and gname.split(".")[-2] in ("attn_q", "attn_k"):
        return _unpermute(w, heads[0] if ".attn_q." in gname else heads[1])
    if arch == "gemma3" and hf_name.endswith("norm.weight"):
        return w - 1.0  # Gemma3Model.norm_shift: every *norm.weight is stored as 1 + w
    return w


UNDONE = ("llama", "gemma3", "qwen2")  # architectures whose converter transforms `_undo` knows


def load_gguf_into(model: nn.Module, gguf_path: str | Path, arch: str | None = None) -> dict[str, str]:
    """Dequantize every tensor of a GGUF (gguf.quants.dequantize) into the Hugging Face model in place, the
    converter's transforms undone; returns the GGML type of each Hugging Face parameter."""
    import gguf

    reader = gguf.GGUFReader(str(gguf_path))
    arch = arch or str(_field(reader, "general.architecture"))
    if arch not in UNDONE:
        raise LowbitError(f"{gguf_path}: architecture {arch!r} is not supported here; supported: {', '.join(UNDONE)}")
    enum = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[arch]
    tmap = gguf.get_tensor_name_map(enum, int(_field(reader, f"{arch}.block_count")))
    heads = (int(_field(reader, f"{arch}.attention.head_count")),
             int(_field(reader, f"{arch}.attention.head_count_kv")))
    params = dict(model.named_parameters())  # tied weights appear once, under the embedding's name
    to_hf = {tmap.get_name(n, try_suffixes=(".weight", ".bias")): n for n in params}
    types: dict[str, str] = {}
    for r in reader.tensors:
        hf = to_hf.get(r.name)
        if hf is None:
            raise LowbitError(f"{gguf_path}: tensor {r.name} maps to no parameter of this {arch} model; "
                              "give the model the GGUF was converted from")
        w = torch.from_numpy(np.array(gguf.quants.dequantize(r.data, r.tensor_type), dtype=np.float32))
        w = _undo(arch, r.name, hf, w, heads)
        if w.shape != params[hf].shape:
            raise LowbitError(f"{gguf_path}: {r.name} has shape {tuple(w.shape)} but {hf} is "
                              f"{tuple(params[hf].shape)}; give the model the GGUF was converted from")
        with torch.no_grad():
            params[hf].copy_(w.to(params[hf].dtype))
        types[hf] = r.tensor_type.name
    unset = [n for n in params if n not in types]
    if unset:
        raise LowbitError(f"{gguf_path} holds no tensor for {len(unset)} parameters ({', '.join(unset[:3])}, ...)")
    return types


STATS = {"perplexity": r"Mean PPL\(Q\)\s*:\s*([\d.]+)", "reference_perplexity": r"Mean PPL\(base\)\s*:\s*([\d.]+)",
         "ppl_ratio": r"Mean PPL\(Q\)/PPL\(base\)\s*:\s*([\d.]+)", "kld_mean": r"Mean\s+KLD:\s*([\d.]+)",
         "kld_p99": r"99\.0%\s+KLD:\s*([\d.]+)", "kld_median": r"Median\s+KLD:\s*([\d.]+)",
         "kld_max": r"Maximum KLD:\s*([\d.]+)", "top1_agreement": r"Same top p:\s*([\d.]+)"}


def kld_base(t: Tools, f16_path: str | Path, text_path: str | Path, ctx: int = 256) -> Path:
    """llama-perplexity --kl-divergence-base: the f16 model's logits on a text, saved beside the f16 file once
    (reused while it is newer than both inputs)."""
    f16 = Path(f16_path)
    out = f16.with_name(f"{f16.stem}.{Path(text_path).stem}.c{ctx}.kld")
    if out.exists() and out.stat().st_mtime > max(f16.stat().st_mtime, Path(text_path).stat().st_mtime):
        return out
    with atomic_output(out, replace=True) as tmp:
        _run(t, [t.bin / "llama-perplexity", "-m", f16, "-f", text_path, "-c", str(ctx), "-t", "2",
                 "--kl-divergence-base", tmp], f"f16 logits {out.name}")
    return out


def llama_kld(t: Tools, f16_path: str | Path, q_path: str | Path, text_path: str | Path, ctx: int = 256) -> dict:
    """llama.cpp's own evaluator on a quantized GGUF against its f16: perplexities, their ratio, KLD (mean,
    median, 99th percentile, max) and same-top-1 fraction, over the second half of each ctx-token chunk."""
    base = kld_base(t, f16_path, text_path, ctx)
    log = _run(t, [t.bin / "llama-perplexity", "-m", q_path, "-c", str(ctx), "-t", "2", "--kl-divergence-base",
                   base, "--kl-divergence"], f"kl-divergence {Path(q_path).name}")
    found = {k: re.search(p, log) for k, p in STATS.items()}
    if not all(found.values()):
        tail = " | ".join(log.strip().splitlines()[-2:])
        raise LowbitError(f"llama-perplexity printed no {[k for k, m in found.items() if not m]}; it ended: {tail}")
    res = {k: float(m[1]) for k, m in found.items() if m}
    res["top1_agreement"] /= 100
    return res


def measure(src: str, types: list[str], work: Path, llama_dir: str | None, chars: int, calib_bytes: int,
            check_tokens: int = 1024) -> dict:
    """f16 GGUF, imatrix, each type with and without it; every file scored by lowbit and by llama.cpp (the f16
    file, a check of the read-back, on the first `check_tokens` tokens only)."""
    from lowbit.data import tokenize_text
    from lowbit.eval import divergence
    from lowbit.models import load_model
    from lowbit.models.load import ASSETS

    t, work = tools(llama_dir), Path(work)
    work.mkdir(parents=True, exist_ok=True)
    ref = load_model(src)
    text, calib = work / "eval.txt", work / "calib.txt"
    text.write_text((ASSETS / "demo" / "eval.txt").read_text()[:chars])
    calib.write_bytes((ASSETS / "demo" / "calib.txt").read_bytes()[:calib_bytes])
    ids = tokenize_text(ref.tokenizer, text.read_text())
    bos = getattr(ref.tokenizer, "bos_token_id", None)
    name = ref.path.name
    t0 = time.perf_counter()
    f16 = f16_gguf(t, ref.path, work / f"{name}-f16.gguf")
    times = {"convert_s": time.perf_counter() - t0}
    t0 = time.perf_counter()
    imat = imatrix(t, f16, calib, work / f"{name}-imatrix.gguf")
    times["imatrix_s"] = time.perf_counter() - t0
    model = copy.deepcopy(ref.model)
    rows = {}
    jobs = [("F16", None, f16)] + [(q, im, None) for im in (imat, None) for q in types]
    for q, im, path in jobs:
        label = q + ("+imatrix" if im else "")
        t0 = time.perf_counter()
        try:
            path = path or quantize(t, f16, q, work / f"{name}-{label}.gguf", im)
        except LowbitError as e:
            print(f"{label}: {e}")
            rows[label] = {"error": str(e)}
            continue
        row = {"quantize_s": time.perf_counter() - t0, **bits_per_weight(path)}
        row["types"] = dict(Counter(tensor_types(path).values()))
        load_gguf_into(model, path)
        if q == "F16":
            x = ids[:256][None]
            with torch.no_grad():
                row["max_abs_logit_diff"] = (model(x).logits - ref.model(x).logits).abs().max().item()
        row["lowbit"] = divergence(model, ref.model, ids[:check_tokens] if q == "F16" else ids, 256, 128, bos,
                                   progress=False)
        if q != "F16":
            row["llama.cpp"] = llama_kld(t, f16, path, text)
        print(label, {k: row[k] for k in ("bytes", "file_bpw", "linear_bpw", "types")}, "lowbit KLD",
              f"{row['lowbit']['kld_mean']:.5f}", "llama.cpp KLD", row.get("llama.cpp", {}).get("kld_mean"), flush=True)
        rows[label] = row
    return {"model": str(ref.path), "eval_chars": chars, "eval_tokens": int(ids.numel()), "bos": bos,
            "calib_bytes": calib_bytes, **times, "files": rows}


def main() -> None:
    """Command line: measure llama.cpp's types on one model."""
    import argparse
    import json

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--types", default="Q4_K_M,Q4_0")
    ap.add_argument("--work", default="/tmp/llamacpp_peer")
    ap.add_argument("--llama-dir", default=None)
    ap.add_argument("--chars", type=int, default=24000, help="characters of the demo's eval split scored")
    ap.add_argument("--calib-bytes", type=int, default=33000, help="bytes of the demo's calib split for imatrix")
    ap.add_argument("--check-tokens", type=int, default=1024, help="tokens lowbit scores the f16 read-back on")
    a = ap.parse_args()
    res = measure(a.model, a.types.split(","), Path(a.work), a.llama_dir, a.chars, a.calib_bytes, a.check_tokens)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
