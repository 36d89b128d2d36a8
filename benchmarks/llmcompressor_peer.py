"""llm-compressor GPTQ W4A16 as a peer, run in its own virtual environment (a subprocess).

The main environment never gets llmcompressor: `run_gptq` writes the calibration token ids to a file and runs
this same file with `--worker` in the peer interpreter, which quantizes and writes two directories:
`dense/` (a plain Hugging Face directory whose linear weights are the dequantized values, loadable by
`lowbit.models.load_model`) and `compressed/` (llm-compressor's own pack-quantized save, for its size).
Only the `oneshot` call is timed. This file imports nothing outside the standard library at the top, so the
worker runs without lowbit and the main side without llmcompressor.

Setup of the peer environment (what was used, 2026-12: llmcompressor 0.14.0.1, compressed-tensors 0.19.0,
transformers 5.17.0, torch 2.13.0+cpu):
    python3.11 -m venv /work/venv-llmc
    /work/venv-llmc/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
    /work/venv-llmc/bin/pip install llmcompressor

Settings, matched to lowbit's GPTQ: 4-bit symmetric integer weights, group-wise along the input (group_size
exactly as asked, through config_groups / QuantizationScheme), every Linear but lm_head, dampening_frac 0.01,
fp16 scales (lowbit stores fp16 scales), block_size 128, model in fp32. Activation ordering is llm-compressor's
default, "static" (= "weight": columns visited in descending Hessian-diagonal order, groups kept in the
original column order, each group's scale fitted on the original weights before the GPTQ pass), close to
lowbit's act_order=True (same order and groups; lowbit fits a group's scale when its first column is reached).

Use from the main environment:
    from benchmarks.llmcompressor_peer import run_gptq
    res = run_gptq(hf_dir, calib_ids, out_dir, group_size=64)   # res["dense_dir"] -> lowbit.models.load_model
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

PEER_PYTHON = "/work/venv-llmc/bin/python"
TOKENS_KEY = "input_ids"
COPIED = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
          "special_tokens_map.json", "tokenizer.model", "chat_template.jinja", "vocab.json", "merges.txt")


def peer_available(python: str = PEER_PYTHON) -> bool:
    """Whether the peer interpreter exists and can import llmcompressor."""
    if not Path(python).is_file():
        return False
    probe = subprocess.run([python, "-c", "import llmcompressor"], capture_output=True, env=_peer_env())
    return probe.returncode == 0


def write_tokens(ids: object, path: str | Path) -> None:
    """Write calibration token ids (a LongTensor [n, seq_len]) to a safetensors file."""
    import torch
    from safetensors.torch import save_file

    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype != torch.long or 0 in ids.shape:
        from lowbit.errors import LowbitError

        got = f"{type(ids).__name__} {getattr(ids, 'dtype', '')} {tuple(getattr(ids, 'shape', ()))}"
        raise LowbitError(f"calibration ids must be a non-empty LongTensor [n, seq_len], got {got}")
    save_file({TOKENS_KEY: ids.contiguous()}, str(path))


def read_tokens(path: str | Path) -> object:
    """Read the calibration token ids written by write_tokens."""
    from safetensors.torch import load_file

    return load_file(str(path))[TOKENS_KEY]


def weight_bytes(path: str | Path) -> int:
    """Bytes of a directory's safetensors files."""
    return sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))


def run_gptq(hf_dir: str | Path, calib_ids: object, out_dir: str | Path, group_size: int = 64,
             python: str = PEER_PYTHON, timeout: float | None = None) -> dict:
    """Quantize HF_DIR with llm-compressor GPTQ W4 (group `group_size`) on `calib_ids` in the peer venv.

    Writes OUT_DIR/dense (dequantized weights, plain HF) and OUT_DIR/compressed (pack-quantized); returns
    {"seconds", "dense_dir", "compressed_dir", "compressed_bytes", "versions", "settings", ...}.
    """
    from lowbit.errors import LowbitError
    from lowbit.files import atomic_output

    hf_dir, out_dir = Path(hf_dir).resolve(), Path(out_dir).resolve()
    if not (hf_dir / "config.json").is_file():
        raise LowbitError(f"{hf_dir} is not a Hugging Face directory (no config.json); give a converted model")
    if not Path(python).is_file():
        raise LowbitError(f"peer interpreter {python} not found; create it as this module's docstring says")
    with atomic_output(out_dir, directory=True, what="llm-compressor output directory") as tmp:
        tokens, result = tmp / "calib_tokens.safetensors", tmp / "result.json"
        write_tokens(calib_ids, tokens)
        cmd = [python, str(Path(__file__).resolve()), "--worker", "--model", str(hf_dir), "--tokens", str(tokens),
               "--out", str(tmp), "--group-size", str(group_size), "--result", str(result)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_peer_env(), timeout=timeout)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
            raise LowbitError(f"llm-compressor worker failed (exit {proc.returncode}):\n{tail}")
        res = json.loads(result.read_text())
        tokens.unlink()
    res["dense_dir"], res["compressed_dir"] = str(out_dir / "dense"), str(out_dir / "compressed")
    res["compressed_bytes"] = weight_bytes(out_dir / "compressed")
    return res


def _peer_env() -> dict:
    """The environment for the peer interpreter: offline, and without the main venv's paths."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONNOUSERSITE="1",
               TOKENIZERS_PARALLELISM="false")
    return env


# ---- worker side: runs in the peer venv, imports llmcompressor ----

def worker(model_dir: Path, tokens_path: Path, out: Path, group_size: int, result: Path) -> None:
    """Load MODEL_DIR in fp32, run oneshot GPTQ on the token windows, write dense/ and compressed/."""
    import compressed_tensors
    import llmcompressor
    import torch
    import transformers
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier

    t_load = time.perf_counter()
    ids = read_tokens(tokens_path)
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    load_seconds = time.perf_counter() - t_load
    weights = QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group", group_size=group_size,
                               scale_dtype=torch.float16)
    modifier = GPTQModifier(config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=weights)},
                            ignore=["lm_head"], dampening_frac=0.01)
    ds = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
    t0 = time.perf_counter()
    oneshot(model=model, dataset=ds, recipe=modifier, tokenizer=tok, num_calibration_samples=ids.shape[0],
            max_seq_length=ids.shape[1], shuffle_calibration_samples=False)
    seconds = time.perf_counter() - t0
    dense, drift = _dequantized(model)
    _write_dense(model_dir, out / "dense", dense)
    # non-quantized tensors (embeddings, norms) go back to the source dtype so the compressed size is comparable
    src_dtype = getattr(transformers.AutoConfig.from_pretrained(model_dir), "dtype", None) or torch.bfloat16
    src_dtype = getattr(torch, src_dtype) if isinstance(src_dtype, str) else src_dtype
    for m in model.modules():
        if getattr(m, "quantization_scheme", None) is None:
            for p in m.parameters(recurse=False):
                p.data = p.data.to(src_dtype)
    model.save_pretrained(out / "compressed", save_compressed=True)
    tok.save_pretrained(out / "compressed")
    qcfg = json.loads((out / "compressed" / "config.json").read_text()).get("quantization_config", {})
    actorder = modifier.resolve_quantization_config().config_groups["group_0"].weights.actorder
    result.write_text(json.dumps({
        "seconds": seconds, "load_seconds": load_seconds, "quantized_linears": len(dense),
        "max_requantize_drift": drift, "compressed_format": qcfg.get("format"),
        "calibration": {"samples": int(ids.shape[0]), "seq_len": int(ids.shape[1])},
        "versions": {"llmcompressor": llmcompressor.__version__, "compressed_tensors": compressed_tensors.__version__,
                     "transformers": transformers.__version__, "torch": torch.__version__,
                     "python": sys.version.split()[0]},
        "settings": {"bits": 4, "symmetric": True, "strategy": "group", "group_size": group_size,
                     "targets": ["Linear"], "ignore": ["lm_head"], "dampening_frac": modifier.dampening_frac,
                     "block_size": modifier.block_size, "actorder": str(getattr(actorder, "value", actorder)),
                     "scale_dtype": "float16", "model_dtype": "float32", "threads": torch.get_num_threads()},
    }, indent=1))


def _dequantized(model: object) -> tuple[dict, float]:
    """Fake-quantized fp32 weight of every quantized module, by module name, and the largest change that
    quantizing GPTQ's already-quantized weight again makes (0 when the weights lie on the grid)."""
    import torch
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize

    out, drift = {}, 0.0
    with torch.no_grad():
        for name, m in model.named_modules():
            scheme = getattr(m, "quantization_scheme", None)
            if scheme is None or scheme.weights is None:
                continue
            w = m.weight.detach().float()
            q = fake_quantize(w, m.weight_scale.float(), m.weight_zero_point, scheme.weights)
            drift = max(drift, (q - w).abs().max().item())
            out[name] = q.contiguous()
    return out, drift


def _write_dense(model_dir: Path, dest: Path, dense: dict) -> None:
    """A copy of MODEL_DIR with every quantized module's weight replaced by its dequantized fp32 value."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    dest.mkdir(parents=True)
    files = sorted(model_dir.glob("*.safetensors"))
    left = {f"{name}.weight": t for name, t in dense.items()}
    for f in files:
        with safe_open(str(f), framework="pt") as h:
            tensors = {k: left.pop(k) if k in left else h.get_tensor(k) for k in h.keys()}
            meta = h.metadata()
        save_file(tensors, str(dest / f.name), metadata=meta)
    if left:
        raise SystemExit(f"quantized modules not found under these names in {model_dir}: {sorted(left)[:3]}")
    for name in COPIED + tuple(p.name for p in model_dir.glob("*.safetensors.index.json")):
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, dest / name)
    cfg = json.loads((dest / "config.json").read_text())
    if cfg.pop("quantization_config", None) is not None:
        (dest / "config.json").write_text(json.dumps(cfg, indent=2))


def main() -> None:
    """Worker entry point (`--worker`), run by run_gptq in the peer interpreter."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", required=True)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--tokens", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--result", type=Path, required=True)
    a = ap.parse_args()
    worker(a.model, a.tokens, a.out, a.group_size, a.result)


if __name__ == "__main__":
    main()
