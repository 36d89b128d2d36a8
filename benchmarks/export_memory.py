"""Peak memory and time of `lowbit export` (GGUF and compressed-tensors) on a 1B-shaped Llama, against the
exporter of an earlier commit (which loaded the whole model in fp32) in the same run, and whether both wrote
the same tensors.

Usage: python benchmarks/export_memory.py [--workdir DIR] [--shape 1b] [--baseline-rev a6eca2a] [--keep]

Writes a random Llama (benchmarks/random_llama.py, fp16 safetensors), quantizes it once with streaming RTN
W4 g128 into a lowbit checkpoint, then exports both the float directory and the checkpoint to GGUF Q4_0 and
to compressed-tensors, each export in a fresh subprocess that reports its own peak RSS (VmHWM). The baseline
runs the same commands from a `git worktree` of `--baseline-rev` (skipped with `--baseline-rev ""`). GGUF
outputs are compared byte for byte, compressed-tensors outputs tensor by tensor. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from random_llama import write_random_llama  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# Runs the lowbit CLI, then prints the process's peak RSS (MiB) as the last stderr line.
WRAPPER = (
    "import sys\nimport lowbit\nfrom lowbit.cli import main\nprint('LOWBIT', lowbit.__file__, file=sys.stderr)\n"
    "code = 1\ntry:\n    code = main(sys.argv[1:])\nfinally:\n"
    "    hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1]\n"
    "    print('PEAK_RSS_MB', int(hwm) / 1024, file=sys.stderr)\nsys.exit(code)\n"
)


def run_cli(args: list[str], src_dir: Path) -> dict:
    """`lowbit ARGS` in a fresh process with the lowbit package of `src_dir`; its peak RSS and wall time."""
    env = {**os.environ, "PYTHONPATH": str(src_dir)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", WRAPPER, *args], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    lines = proc.stderr.strip().splitlines()
    peak = next((float(x.split()[1]) for x in reversed(lines) if x.startswith("PEAK_RSS_MB")), float("nan"))
    used = next((x.split()[1] for x in lines if x.startswith("LOWBIT")), "")
    if not used.startswith(str(src_dir)):
        raise SystemExit(f"the subprocess imported lowbit from {used!r}, not from {src_dir}")
    out = {"peak_rss_mb": round(peak, 1), "wall_seconds": round(wall, 2), "returncode": proc.returncode}
    if proc.returncode:
        out["error"] = next((x for x in reversed(lines) if not x.startswith("PEAK_RSS_MB")), "")[-300:]
    return out


def digest(path: Path) -> str:
    """sha256 of a file, read in 16 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def same_tensors(a: Path, b: Path) -> bool:
    """Whether two compressed-tensors exports hold the same tensor names, dtypes and values."""
    import torch
    from safetensors import safe_open

    with safe_open(str(a / "model.safetensors"), "pt") as fa, safe_open(str(b / "model.safetensors"), "pt") as fb:
        if set(fa.keys()) != set(fb.keys()):
            return False
        return all(torch.equal(fa.get_tensor(k), fb.get_tensor(k)) for k in fa.keys())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, help="where models and outputs go (default: a temp dir)")
    ap.add_argument("--shape", default="1b", choices=["1b", "7b"])
    ap.add_argument("--baseline-rev", default="a6eca2a", help="commit whose exporter is the baseline ('' = none)")
    ap.add_argument("--keep", action="store_true", help="keep the models and outputs")
    a = ap.parse_args()
    work = a.workdir or Path(tempfile.mkdtemp(prefix="lowbit-export-"))
    work.mkdir(parents=True, exist_ok=True)
    model, ckpt = work / f"llama-{a.shape}", work / f"llama-{a.shape}-w4g128"
    old_tree = work / "baseline-tree"
    rows: list[dict] = []
    try:
        if not model.exists():
            print(f"writing a random {a.shape} Llama to {model} ...", file=sys.stderr, flush=True)
            write_random_llama(model, a.shape)
        if not ckpt.exists():
            print("streaming RTN W4 g128 checkpoint ...", file=sys.stderr, flush=True)
            r = run_cli(["quantize", str(model), "--method", "rtn", "--bits", "4", "--group-size", "128",
                         "--stream", "--out", str(ckpt)], ROOT / "src")  # fmt: skip
            if r["returncode"]:
                raise SystemExit(f"quantize failed: {r.get('error')}")
        trees = {"new": ROOT / "src"}
        if a.baseline_rev:
            if not old_tree.exists():
                subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old_tree),
                                a.baseline_rev], check=True, capture_output=True)  # fmt: skip
            trees["baseline"] = old_tree / "src"
        model_mb = sum(f.stat().st_size for f in model.glob("*.safetensors")) / 2**20
        cases = [("gguf Q4_0", "float", model), ("gguf Q4_0", "checkpoint", ckpt),
                 ("compressed-tensors", "float", model), ("compressed-tensors", "checkpoint", ckpt)]
        for fmt, kind, src in cases:
            outs = {}
            for tree_name, tree in trees.items():
                tag = f"{fmt.split()[0]}-{kind}-{tree_name}"
                out = work / (tag + (".gguf" if fmt.startswith("gguf") else ""))
                shutil.rmtree(out, ignore_errors=True) if out.is_dir() else out.unlink(missing_ok=True)
                args = ["export", str(src), "--format", fmt.split()[0], "--out", str(out)]
                if fmt.startswith("gguf"):
                    args += ["--type", fmt.split()[1]]
                print(f"{fmt} from the {kind} source, {tree_name} exporter ...", file=sys.stderr, flush=True)
                r = run_cli(args, tree)
                r.update(format=fmt, source=kind, exporter=tree_name, model_fp16_mb=round(model_mb, 1))
                if not r["returncode"]:
                    r["out_mb"] = round(sum(f.stat().st_size for f in ([out] if out.is_file() else out.glob("*")))
                                        / 2**20, 1)  # fmt: skip
                    outs[tree_name] = out
                rows.append(r)
                print(json.dumps(r), file=sys.stderr, flush=True)
            if len(outs) == 2:
                new, old = outs["new"], outs["baseline"]
                rows[-2]["same_output_as_baseline"] = (digest(new) == digest(old)) if new.is_file() \
                    else same_tensors(new, old)
            for out in outs.values():
                if not a.keep:
                    shutil.rmtree(out, ignore_errors=True) if out.is_dir() else out.unlink(missing_ok=True)
    finally:
        if old_tree.exists():
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old_tree)],
                           capture_output=True)  # fmt: skip
        if not a.keep and a.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'format':>20}{'source':>12}{'exporter':>10}{'peak RSS MB':>13}{'seconds':>9}{'out MB':>8}{'same':>6}")
    for r in rows:
        same = str(r.get("same_output_as_baseline", ""))
        print(f"{r['format']:>20}{r['source']:>12}{r['exporter']:>10}{r['peak_rss_mb']:13.0f}"
              f"{r['wall_seconds']:9.1f}{r.get('out_mb', float('nan')):8.0f}{same:>6}")
    head: dict = {"shape": a.shape, "model_fp16_mb": rows[0]["model_fp16_mb"] if rows else None}
    for r in rows:
        if r["exporter"] == "new":
            key = f"{r['format'].split()[0]}_{r['source']}"
            head[f"{key}_peak_rss_mb"] = r["peak_rss_mb"]
            base = next((b for b in rows if b["exporter"] == "baseline" and b["format"] == r["format"]
                         and b["source"] == r["source"] and not b["returncode"]), None)  # fmt: skip
            if base:
                head[f"{key}_rss_vs_baseline"] = round(r["peak_rss_mb"] / base["peak_rss_mb"], 3)
                head[f"{key}_same_output"] = r.get("same_output_as_baseline")
    print(json.dumps({**head, "rows": rows}))


if __name__ == "__main__":
    main()
