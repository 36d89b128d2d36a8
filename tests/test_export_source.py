"""The export source reads one tensor at a time; streamed safetensors; bad sources; output permissions."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from export_models import small_checkpoints
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lowbit.cli import main
from lowbit.errors import LowbitError
from lowbit.export import export_model
from lowbit.export.source import open_source
from lowbit.kernels.qlinear import PackedLinear
from lowbit.models.stream import write_safetensors


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    """The small Llama in full precision and as RTN checkpoints of several formats."""
    return small_checkpoints(tmp_path_factory.getbasetemp() / "export-models")


def test_open_source_reads_no_weights_and_serves_layers(ckpts):
    import lowbit

    src = open_source(ckpts["w4g32"])
    assert all(t.is_meta for t in src.model.state_dict().values())  # nothing read until asked
    name = "model.layers.1.mlp.down_proj"
    assert src.is_packed(name) and src.spec.bits == 4 and src.quantized
    m = src.linear(name)
    ref = lowbit.load(ckpts["w4g32"]).get_submodule(name)
    assert isinstance(m, PackedLinear)
    assert torch.equal(m.dequantized_weight(), ref.dequantized_weight())
    assert "model.embed_tokens.weight" in src.float_names() and not any("proj" in n for n in src.float_names())
    fp = open_source(ckpts["fp"])
    assert not fp.quantized and len(fp.block_linear_names) == 14
    rtn = fp.linear(name, rtn=src.spec)
    assert isinstance(rtn, PackedLinear) and torch.equal(rtn.dequantized_weight(), ref.dequantized_weight())
    lin = fp.linear(name)
    assert lin.weight.dtype == torch.float32 and not lin.weight.is_meta


def _copy_with(ckpts, tmp_path: Path, change) -> Path:
    """A copy of the fp16 source whose weights went through `change(tensors)`."""
    d = tmp_path / "bad"
    shutil.copytree(ckpts["fp"], d)
    f = d / "model.safetensors"
    tensors = load_file(str(f))
    change(tensors)
    save_file(tensors, str(f), metadata={"format": "pt"})
    return d


def test_bad_sources_are_one_line_errors_and_leave_nothing(ckpts, tmp_path, capsys):
    def nan(t):
        t["model.layers.0.mlp.up_proj.weight"][0, 0] = float("nan")

    def drop(t):
        del t["model.layers.1.self_attn.o_proj.weight"]

    def reshape(t):
        t["model.norm.weight"] = t["model.norm.weight"][:-1].clone()

    for change, words in ((nan, "NaN or Inf"), (drop, "no tensor model.layers.1.self_attn.o_proj.weight"),
                          (reshape, "has shape (255,) in the files")):
        d = _copy_with(ckpts, tmp_path, change)
        for fmt in ("gguf", "compressed-tensors"):
            out = tmp_path / f"out-{fmt}"
            assert main(["export", str(d), "--format", fmt, "--out", str(out)]) == 2
            err = capsys.readouterr().err
            lines = err.strip().splitlines()  # a note on RTN may come first; the error is one line, last
            assert words in lines[-1] and lines[-1].startswith("lowbit: error:") and "Traceback" not in err
            assert not out.exists()
        shutil.rmtree(d)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_write_safetensors_streams_and_checks_the_plan(tmp_path):
    tensors = {"a": torch.randn(3, 5).to(torch.bfloat16), "b": torch.arange(7, dtype=torch.int64),
               "c": torch.randn(2, 2, 3, dtype=torch.float16), "empty": torch.zeros(0, 4)}
    plan = [(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()]
    write_safetensors(tmp_path / "x.safetensors", plan, iter(tensors.values()), metadata={"format": "pt"})
    with safe_open(str(tmp_path / "x.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}
        for k, v in tensors.items():
            assert torch.equal(f.get_tensor(k), v)
    with pytest.raises(RuntimeError, match="planned"):
        write_safetensors(tmp_path / "y.safetensors", plan, iter([tensors["b"]]))
    with pytest.raises(RuntimeError, match="3 tensors produced for a plan of 4"):
        write_safetensors(tmp_path / "z.safetensors", plan, iter(list(tensors.values())[:3]))


def test_exports_get_the_permissions_of_plain_files(ckpts, tmp_path):
    old = os.umask(0o022)
    try:
        g = export_model(str(ckpts["w4g32"]), str(tmp_path / "m.gguf"), "gguf")
        c = export_model(str(ckpts["w4g32"]), str(tmp_path / "ct"), "compressed-tensors")
    finally:
        os.umask(old)
    assert (tmp_path / "m.gguf").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "ct").stat().st_mode & 0o777 == 0o755
    assert g["peak_rss_mb"] > 0 and c["export_seconds"] >= 0
    assert json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]["format"]


def test_tied_embeddings_export_without_a_head_tensor(tmp_path):
    import transformers as tf

    from lowbit.models.load import ASSETS

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=4096, tie_word_embeddings=True, dtype="float16")
    d = tmp_path / "tied"
    tf.AutoModelForCausalLM.from_config(cfg).to(torch.float16).save_pretrained(d)
    for f in (ASSETS / "demo").glob("tokenizer*"):
        shutil.copy(f, d / f.name)
    src = open_source(d)
    assert "lm_head.weight" not in src.float_names()
    with pytest.raises(LowbitError, match="already exists"):
        export_model(str(d), str(d), "gguf")
    res = export_model(str(d), str(tmp_path / "t.gguf"), "gguf", "Q8_0")
    assert res["linears"] == 7
