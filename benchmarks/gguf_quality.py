"""Weight quality of every GGUF type lowbit writes, measured as the perplexity of the model the file holds.

The demo model (fp16) is exported to Q8_0, Q6_K, Q4_0, Q4_K and Q4_K_M. Each file is read back with the gguf
package's reader and dequantizer (not our packer), its linear weights are put back into the fp32 model (the q
and k rows un-permuted to Hugging Face's rope layout), and the perplexity is measured on the demo's held-out
split exactly as `lowbit eval demo` does, beside fp16 in the same run. Embeddings, head and norms stay as
stored (the exporter keeps them in F16 / F32). This measures the formats' rounding, not llama.cpp's runtime
(which also quantizes activations to 8 bits per block for its matmuls; see benchmarks/export_llamacpp.py).

Usage: python benchmarks/gguf_quality.py [--types Q8_0,Q6_K,Q4_0,Q4_K,Q4_K_M] [--src demo]
Ends with one JSON line: perplexity, ratio to fp16 and bits per linear weight for each type.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lowbit.api import _default_text
from lowbit.data import tokenize_text
from lowbit.eval import perplexity
from lowbit.export import export_model
from lowbit.export.gguf_writer import LAYER, hparams, rope_permutation
from lowbit.models.checkpoint import load_with_tokenizer


def gguf_linears(path: Path, hp: dict) -> tuple[dict[str, torch.Tensor], dict[str, str], float]:
    """Every block linear weight of a GGUF file, dequantized by the gguf package, by Hugging Face module name;
    their GGML types; and the bits per weight they take."""
    import gguf

    names = {v: k for k, v in LAYER.items() if not k.endswith(".weight")}
    out, types, nbits, numel = {}, {}, 0, 0
    for t in gguf.GGUFReader(str(path)).tensors:
        if not t.name.startswith("blk.") or not t.name.endswith(".weight") or t.name.split(".")[2] not in names:
            continue
        layer, short = t.name.split(".")[1], t.name.split(".")[2]
        w = torch.from_numpy(np.ascontiguousarray(gguf.quants.dequantize(t.data, t.tensor_type))).float()
        heads = {"attn_q": hp["n_head"], "attn_k": hp["n_kv"]}.get(short)
        if heads:
            w = w[torch.argsort(rope_permutation(w.shape[0], heads))]
        hf = f"model.layers.{layer}.{names[short]}"
        out[hf], types[hf] = w, t.tensor_type.name
        nbits += int(t.n_bytes) * 8
        numel += w.numel()
    return out, types, nbits / numel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default="demo")
    ap.add_argument("--types", default="Q8_0,Q6_K,Q4_0,Q4_K,Q4_K_M")
    ap.add_argument("--window", type=int, default=512)
    a = ap.parse_args()
    loaded = load_with_tokenizer(a.src)
    model, hp = loaded.model, hparams(loaded.config)
    ids = tokenize_text(loaded.tokenizer, _default_text("eval"))
    bos = getattr(loaded.tokenizer, "bos_token_id", None)
    win = min(a.window, getattr(model.config, "max_position_embeddings", a.window) or a.window)  # as lowbit eval
    original = {n: m.weight.data.clone() for n, m in model.named_modules() if n.startswith("model.layers.")
                and isinstance(m, torch.nn.Linear)}  # fmt: skip
    base = perplexity(model, ids, win, win // 2, bos, progress=False)
    print(f"fp16 {a.src}: perplexity {base:.3f} over {ids.numel()} tokens", flush=True)
    rows = {"fp16": {"perplexity": round(base, 3), "ratio": 1.0, "bits_per_linear_weight": 16.0}}
    with tempfile.TemporaryDirectory() as tmp:
        for qtype in a.types.split(","):
            out = Path(tmp) / f"{qtype}.gguf"
            t0 = time.perf_counter()
            res = export_model(a.src, str(out), "gguf", qtype)
            export_s = time.perf_counter() - t0
            weights, types, bpw = gguf_linears(out, hp)
            if set(weights) != set(original):
                raise SystemExit(f"{qtype}: the GGUF file holds {len(weights)} of {len(original)} block linears")
            with torch.no_grad():
                for name, w in weights.items():
                    model.get_submodule(name).weight.copy_(w)
            ppl = perplexity(model, ids, win, win // 2, bos, progress=False)
            with torch.no_grad():
                for name, w in original.items():
                    model.get_submodule(name).weight.copy_(w)
            mix = {k: sum(v == k for v in types.values()) for k in sorted(set(types.values()))}
            rows[qtype] = {"perplexity": round(ppl, 3), "ratio": round(ppl / base, 4),
                           "bits_per_linear_weight": round(bpw, 3), "types": mix, "file_bytes": res["bytes"],
                           "export_seconds": round(export_s, 2)}  # fmt: skip
            print(f"{qtype:7s} perplexity {ppl:.3f} ({ppl / base:.4f}x fp16), {bpw:.3f} bits per linear weight,"
                  f" {mix}, {res['bytes'] / 1e6:.2f} MB, export {export_s:.1f} s", flush=True)
    print("\n| GGUF type | linear weights | bits per linear weight | perplexity | vs fp16 |\n|---|---|---|---|---|")
    for k, r in rows.items():
        mix = ", ".join(f"{n} {t}" for t, n in r.get("types", {}).items()) or "fp16"
        print(f"| {k} | {mix} | {r['bits_per_linear_weight']:.3f} | {r['perplexity']:.3f} | {r['ratio']:.4f}x |")
    print(json.dumps({"benchmark": "gguf_quality", "src": a.src, "eval_tokens": int(ids.numel()), "rows": rows}))


if __name__ == "__main__":
    main()
