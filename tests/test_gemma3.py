"""Gemma 3 (text) as a family: a tiny random model with head_dim 256, a sliding-window layer and a global one,
q/k norms and four (1 + w) norms per block, quantized by the main methods, saved, loaded and evaluated."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import transformers as tf
from conftest import DEMO, first_logits, short_text

import lowbit
from lowbit import api
from lowbit.errors import LowbitError
from lowbit.models import family_for, load_model
from lowbit.models.generate import generate
from lowbit.ptq.rotation import rotate_model
from lowbit.ptq.scaling import scale_groups

CALIB = api.CalibConfig(n_samples=4, seq_len=32, batch_size=2)


@pytest.fixture(scope="module")
def gemma3(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = tf.Gemma3TextConfig(vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=256, sliding_window=8,
                              layer_types=["sliding_attention", "full_attention"], max_position_embeddings=256,
                              bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = tf.AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(-0.5, 1.0)  # (1 + w) scales of 0.5..2
    path = tmp_path_factory.mktemp("gemma3") / "g"
    model.save_pretrained(path)
    for f in DEMO.glob("tokenizer*"):
        shutil.copy(f, path / f.name)
    return path



def test_family_knows_the_gemma3_block(gemma3):
    loaded = load_model(gemma3)
    assert loaded.family is family_for("gemma3_text") and loaded.family.norm_offset == 1.0
    ref = tf.AutoModelForCausalLM.from_pretrained(str(gemma3), dtype=torch.float32)
    assert torch.equal(first_logits(loaded.model), first_logits(ref))
    block = loaded.family.blocks(loaded.model)[0]
    groups = {g.producer: g.consumers for g in scale_groups(block, loaded.family)}
    assert groups["input_layernorm"] == ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
    assert groups["pre_feedforward_layernorm"] == ("mlp.gate_proj", "mlp.up_proj")
    assert "post_attention_layernorm" not in groups  # it normalises the attention branch, not the MLP's input


def test_rotation_runs_online_and_keeps_the_function(gemma3, capsys):
    loaded = load_model(gemma3)
    before = first_logits(loaded.model)
    assert rotate_model(loaded.model, loaded.family) == "online"
    assert "rotating every linear layer's input online" in capsys.readouterr().err
    after = first_logits(loaded.model)
    assert ((after - before).norm() / before.norm()).item() < 1e-4
    with pytest.raises(LowbitError, match="residual rotation does not apply"):
        rotate_model(load_model(gemma3).model, loaded.family, mode="residual")


@pytest.mark.parametrize("method,act", [("rtn", 16), ("gptq", 16), ("awq", 16), ("smoothquant+rtn", 8),
                                        ("rotate+gptq", 8), ("cfp+cbq", 16)])
def test_methods_quantize_save_load_and_eval(gemma3, calib_file, tmp_path, method, act):
    out = tmp_path / "q"
    opts = {"cbq": {"steps": 2}} if "cbq" in method else None
    api.quantize_dir(gemma3, out, api.make_config(method, 8, 32, act_bits=act, options=opts), calib_file, CALIB,
                     progress=False)
    fp, q = first_logits(load_model(gemma3).model), first_logits(lowbit.load(out))
    assert ((q - fp).norm() / fp.norm()).item() < 0.1, method  # W8: close to fp
    assert api.evaluate(out, short_text(calib_file), window=32, progress=False)["perplexity"] > 1.0


def test_rotate_gptq_w4a4_runs(gemma3, calib_file, tmp_path):
    out = tmp_path / "q"
    res = api.quantize_dir(gemma3, out, api.make_config("rotate+gptq", 4, 32, act_bits=4), calib_file, CALIB,
                           progress=False)
    assert res["act_bits"] == 4 and torch.isfinite(first_logits(lowbit.load(out))).all()


def test_generate_falls_back_to_the_transformers_forward(gemma3, capsys):
    loaded = load_model(gemma3)
    g = generate(loaded.model, loaded.tokenizer, "def f(x):", 4)
    assert g.engine == "transformers" and "lean engine does not run this model" in capsys.readouterr().err
    with pytest.raises(LowbitError, match="lean engine cannot run"):
        generate(loaded.model, loaded.tokenizer, "def f(x):", 4, engine="lean")
