"""Model adapters: every family loads, exposes its blocks, quantizes sequentially and round-trips to disk."""

import copy

import pytest
import torch

from lowbit.errors import LowbitError
from lowbit.export import load, save_quantized
from lowbit.kernels.qlinear import PackedLinear
from lowbit.models import block_linears, capture_block_inputs, load_model
from lowbit.ptq import GPTQConfig, RTNConfig, quantize
from lowbit.quantizers import WeightSpec

FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "bert"]


def _out(model, ids):
    with torch.no_grad():
        o = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    return o.logits if hasattr(o, "logits") else o.last_hidden_state


@pytest.mark.parametrize("family", FAMILIES)
def test_family_loads_and_finds_blocks(tiny_models, family):
    loaded = load_model(tiny_models[family])
    assert loaded.family.name == family
    blocks = loaded.family.blocks(loaded.model)
    assert len(blocks) == 2
    names = block_linears(blocks[0])
    assert len(names) >= 4  # attention and MLP projections
    ids = torch.randint(5, 1000, (3, 24))
    inputs = capture_block_inputs(loaded.model, loaded.family, ids, batch_size=2)
    assert len(inputs.hidden) == 2 and inputs.hidden[0].shape == (2, 24, 64)


@pytest.mark.parametrize("family", FAMILIES)
def test_gptq_sequential_and_checkpoint_round_trip(tiny_models, family, tmp_path):
    loaded = load_model(tiny_models[family])
    ref = copy.deepcopy(loaded.model)
    ids = torch.randint(5, 1000, (8, 32))
    res = quantize(loaded.model, loaded.family, GPTQConfig(WeightSpec(4, 32)), ids, batch_size=4, progress=False)
    assert len(res.weights) == 2 * len(block_linears(loaded.family.blocks(loaded.model)[0]))
    fake = _out(loaded.model, ids)
    assert torch.isfinite(fake).all()
    rel = (fake - _out(ref, ids)).norm() / _out(ref, ids).norm()
    assert 0 < rel < 0.5
    out = tmp_path / "q"
    save_quantized(loaded.model, res.weights, tiny_models[family], out, {"method": "gptq"})
    back = load(out)
    assert sum(isinstance(m, PackedLinear) for m in back.modules()) == len(res.weights)
    assert torch.allclose(_out(back, ids), fake, atol=1e-4, rtol=1e-4)


def test_gptq_beats_rtn_on_block_outputs(tiny_models):
    torch.manual_seed(0)
    ids = torch.randint(5, 4000, (16, 64))
    errs = {}
    for cfg in (RTNConfig(WeightSpec(3, 32)), GPTQConfig(WeightSpec(3, 32))):
        loaded = load_model(tiny_models["llama"])
        ref = _out(loaded.model, ids)
        quantize(loaded.model, loaded.family, cfg, ids, progress=False)
        errs[cfg.method] = (_out(loaded.model, ids) - ref).pow(2).mean().item()
    assert errs["gptq"] < 0.8 * errs["rtn"]


def test_sequential_calibration_keeps_one_block_of_activations(tiny_models):
    loaded = load_model(tiny_models["llama"])
    ids = torch.randint(5, 1000, (8, 32))
    res = quantize(loaded.model, loaded.family, GPTQConfig(WeightSpec(4, 32)), ids, batch_size=4, progress=False)
    assert res.calib_bytes == 8 * 32 * 64 * 4  # samples x tokens x hidden x fp32: one block's inputs


def test_unsupported_architecture(tmp_path, tiny_models):
    import json
    import shutil

    d = tmp_path / "m"
    shutil.copytree(tiny_models["llama"], d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "mamba"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LowbitError, match="unsupported architecture model_type='mamba'"):
        load_model(d)


def test_true_sequential_gptq_runs_and_helps_or_matches(tiny_models):
    ids = torch.randint(5, 4000, (16, 64))
    errs = []
    for ts in (False, True):
        loaded = load_model(tiny_models["llama"])
        ref = _out(loaded.model, ids)
        quantize(loaded.model, loaded.family, GPTQConfig(WeightSpec(3, 32), true_sequential=ts), ids, progress=False)
        errs.append((_out(loaded.model, ids) - ref).pow(2).mean().item())
    assert errs[1] < 1.25 * errs[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_streaming_loader_matches_transformers(tiny_models, family):
    import transformers as tf

    auto = tf.BertModel if family == "bert" else tf.AutoModelForCausalLM
    ref = auto.from_pretrained(str(tiny_models[family]), dtype=torch.float32).eval()
    ours = load_model(tiny_models[family]).model
    ids = torch.randint(5, 1000, (2, 16))
    assert torch.equal(_out(ours, ids), _out(ref, ids))


def test_stream_reader_reads_every_tensor_exactly(tiny_models):
    from safetensors.torch import load_file

    from lowbit.models.stream import iter_tensors

    f = tiny_models["gemma"] / "model.safetensors"
    ref = load_file(str(f))
    got = dict(iter_tensors(f))
    assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref)
