"""KV-cache quantization: per-token keys/values in attention, exact Hadamard keys, save/load, clear errors."""

import json

import pytest
import torch

from lowbit import api
from lowbit.cli import main
from lowbit.errors import LowbitError
from lowbit.export.checkpoint import load
from lowbit.models import load_model
from lowbit.quantizers.activation import fp_activations
from lowbit.quantizers.kv import kv_of, quantize_kv


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_kv_quantization_error_is_nonzero_bounded_and_ordered(tiny_models, family):
    m = load_model(tiny_models[family])
    ids = torch.randint(0, 4096, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = m.model(input_ids=ids).logits
        quantize_kv(m.model, m.family, 16, hadamard=True)  # q and k rotated alike: q k^T unchanged
        assert torch.allclose(m.model(input_ids=ids).logits, ref, rtol=1e-4, atol=1e-4)
        errs = {}
        for bits in (8, 4):
            quantize_kv(m.model, m.family, bits)
            errs[bits] = _rel(m.model(input_ids=ids).logits, ref)
            with fp_activations(m.model):
                assert torch.equal(m.model(input_ids=ids).logits, ref)
    assert 0 < errs[8] < errs[4] < 0.5, errs


def test_kv_quantization_with_the_cache_matches_the_full_forward(tiny_models):
    m = load_model(tiny_models["llama"])
    quantize_kv(m.model, m.family, 4)
    ids = torch.randint(0, 4096, (1, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = m.model(input_ids=ids).logits[0, -1]
        past = m.model(input_ids=ids[:, :-1], use_cache=True).past_key_values
        step = m.model(input_ids=ids[:, -1:], cache=past, use_cache=True).logits[0, -1]
    assert torch.allclose(step, full, rtol=1e-4, atol=1e-4)  # per token: quantizing after the cache read is exact


def test_kv_bits_round_trip_through_save_and_load(tiny_models, calib_file, tmp_path, capsys):
    out = tmp_path / "q"
    assert main(["quantize", str(tiny_models["llama"]), "--method", "rotate+rtn", "--bits", "4", "--group-size",
                 "32", "--kv-bits", "4", "--calib", str(calib_file), "--n-samples", "2", "--seq-len", "32",
                 "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["kv_bits"] == 4
    qcfg = json.loads((out / "lowbit_quant.json").read_text())
    assert qcfg["kv_cache"] == {"bits": 4, "hadamard": True}  # rotation recipes rotate the keys too
    a, b = load(out), load(out)
    assert kv_of(a) is not None and kv_of(a).bits == 4
    ids = torch.randint(0, 4096, (1, 24))
    with torch.no_grad():
        la, lb = a(input_ids=ids).logits, b(input_ids=ids).logits
        with fp_activations(b):
            lf = b(input_ids=ids).logits
    assert torch.equal(la, lb) and 0 < _rel(la, lf) < 0.5
    short = tmp_path / "short.txt"
    short.write_text(calib_file.read_text()[:600])
    ev = api.evaluate(out, short, window=32, progress=False)
    assert ev["kv_bits"] == 4 and ev["perplexity"] > 1


def test_bad_kv_settings_are_clear_errors(tiny_models, tmp_path, capsys):
    with pytest.raises(LowbitError, match="KV-cache bits"):
        api.make_config("gptq", 4, 32, kv_bits=3)
    with pytest.raises(LowbitError, match="KV-cache bits"):
        quantize_kv(load_model(tiny_models["llama"]).model, load_model(tiny_models["llama"]).family, 2)
    bert = load_model(tiny_models["bert"])
    with pytest.raises(LowbitError, match="encoder"):
        quantize_kv(bert.model, bert.family, 8)
    assert main(["quantize", str(tiny_models["llama"]), "--method", "rtn", "--kv-bits", "5",
                 "--out", str(tmp_path / "z")]) == 2
    assert "KV-cache bits" in capsys.readouterr().err and not (tmp_path / "z").exists()
