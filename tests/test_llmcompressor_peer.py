"""benchmarks/llmcompressor_peer.py: the token file it hands the peer venv, and (where the peer venv exists) one
tiny llm-compressor GPTQ run whose dense output lowbit loads."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from lowbit.errors import LowbitError
from lowbit.models import load_model

_SPEC = importlib.util.spec_from_file_location(
    "llmcompressor_peer", Path(__file__).resolve().parents[1] / "benchmarks" / "llmcompressor_peer.py")
peer = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(peer)


def test_tokens_round_trip(tmp_path):
    ids = torch.randint(0, 50000, (3, 17), dtype=torch.long)
    peer.write_tokens(ids, tmp_path / "t.safetensors")
    back = peer.read_tokens(tmp_path / "t.safetensors")
    assert back.dtype == torch.long and torch.equal(back, ids)


@pytest.mark.parametrize("bad", [torch.zeros(4, dtype=torch.long), torch.zeros(2, 3), torch.zeros(0, 5).long(),
                                 [[1, 2]]])
def test_bad_tokens_refused(tmp_path, bad):
    with pytest.raises(LowbitError, match="LongTensor"):
        peer.write_tokens(bad, tmp_path / "t.safetensors")


def test_main_side_imports_no_llmcompressor():
    import subprocess
    import sys

    code = (f"import importlib.util, sys; s = importlib.util.spec_from_file_location('p', {str(_SPEC.origin)!r}); "
            "m = importlib.util.module_from_spec(s); s.loader.exec_module(m); "
            "print(sorted(k for k in sys.modules if k.split('.')[0] in ('llmcompressor', 'compressed_tensors')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.skipif(not peer.peer_available(), reason="peer venv with llmcompressor absent (see the module doc)")
def test_tiny_gptq_dense_output_loads(tmp_path, tiny_models):
    src = tiny_models["llama"]
    ids = torch.randint(3, 4096, (4, 32), generator=torch.Generator().manual_seed(0))
    res = peer.run_gptq(src, ids, tmp_path / "out", group_size=32)
    assert res["seconds"] > 0 and res["settings"]["group_size"] == 32 and res["max_requantize_drift"] == 0.0
    assert res["compressed_format"] == "pack-quantized" and res["quantized_linears"] == 14
    assert 0 < res["compressed_bytes"] < peer.weight_bytes(src)
    q, fp = load_model(res["dense_dir"]).model, load_model(src).model
    w = dict(q.named_parameters())["model.layers.0.mlp.down_proj.weight"]  # [64, 128]: 4 groups of 32
    ref = dict(fp.named_parameters())["model.layers.0.mlp.down_proj.weight"]
    distinct = [len(g.unique()) for g in w.reshape(256, 32)]  # 4-bit: at most 16 values in each group of 32
    assert max(distinct) <= 16 and min(len(g.unique()) for g in ref.reshape(256, 32)) > 16
    assert not torch.equal(w, ref) and (w - ref).abs().max() < ref.abs().max()
