"""benchmarks/llamacpp_peer.py: GGUF tensors read back into Hugging Face models with the converter's transforms
undone (tiny llama and Gemma 3 written here as convert_hf_to_gguf.py writes them), its errors, its log parsing;
with LLAMA_CPP_DIR set, the real converter, llama-quantize and llama-perplexity on a tiny model."""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DEMO, save_tiny

from lowbit.errors import LowbitError
from lowbit.models import load_model

spec = importlib.util.spec_from_file_location("llamacpp_peer", Path(__file__).parents[1] / "benchmarks" /
                                              "llamacpp_peer.py")
lp = sys.modules.setdefault("llamacpp_peer", importlib.util.module_from_spec(spec))
spec.loader.exec_module(lp)
gguf = pytest.importorskip("gguf")
ARCH = {"llama": "llama", "gemma3_text": "gemma3"}


def converter_permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """convert_hf_to_gguf.py's LlamaModel.permute, as written there."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_like_converter(model: torch.nn.Module, family: str, path: Path, extra: str | None = None) -> Path:
    """A GGUF of a model's parameters in F32 (linears in Q8_0), transformed as the converter transforms them."""
    arch, cfg = ARCH[family], model.config
    tmap = gguf.get_tensor_name_map({v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[arch], cfg.num_hidden_layers)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    for name, p in model.named_parameters():
        t = p.detach().float()
        if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            t = converter_permute(t, cfg.num_attention_heads if "q_proj" in name else cfg.num_key_value_heads)
        if arch == "gemma3" and name.endswith("norm.weight"):
            t = t + 1
        a, gname = t.numpy(), tmap.get_name(name, try_suffixes=(".weight", ".bias"))
        if ".mlp." in name:
            w.add_tensor(gname, gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0),
                         raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(gname, a)
    if extra:
        w.add_tensor(extra, np.zeros(4, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.arange(1, 40)[None]).logits[0]


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_reads_back_what_the_converter_writes(family, tmp_path):
    ref = load_model(save_tiny(family, tmp_path / "m")).model
    with torch.no_grad():  # (1 + w) norms away from 1, so a missed shift shows
        for n, p in ref.named_parameters():
            if "norm" in n:
                p.uniform_(-0.5, 1.0)
    model = copy.deepcopy(ref)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    types = lp.load_gguf_into(model, write_like_converter(ref, family, tmp_path / "f.gguf"))
    assert set(types) == {n for n, _ in ref.named_parameters()}
    assert types["model.layers.0.mlp.up_proj.weight"] == "Q8_0"
    a, b = logits(model), logits(ref)
    assert 0 < (a - b).abs().max() < 0.05 * b.abs().max()  # Q8_0 MLPs: close, not equal
    for n, p in model.named_parameters():
        if ".mlp." not in n:
            assert torch.allclose(p, dict(ref.named_parameters())[n], rtol=0, atol=1e-7), n  # fp32 (1 + w) - 1


def test_unmapped_tensor_and_missing_tools_are_one_line_errors(tmp_path, monkeypatch):
    ref = load_model(save_tiny("llama", tmp_path / "m")).model
    path = write_like_converter(ref, "llama", tmp_path / "x.gguf", extra="blk.7.attn_q.weight")
    with pytest.raises(LowbitError, match="blk.7.attn_q.weight maps to no parameter"):
        lp.load_gguf_into(copy.deepcopy(ref), path)
    monkeypatch.delenv("LLAMA_CPP_DIR", raising=False)
    with pytest.raises(LowbitError, match="set LLAMA_CPP_DIR"):
        lp.tools()
    with pytest.raises(LowbitError, match="lacks convert_hf_to_gguf.py"):
        lp.tools(tmp_path)


def test_parses_llama_quantize_fallbacks():
    log = ("warning: blk.0.attn_v.weight                  - ncols    576 not divisible by 256 (required for type"
           "    q6_K) -> falling back to    q8_0\n")
    assert lp.fallbacks(log) == {"blk.0.attn_v.weight": (576, 256, "q6_K", "q8_0")}


@pytest.fixture(scope="module")
def real_tools():
    try:
        return lp.tools()
    except LowbitError as e:
        pytest.skip(str(e))


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_llamacpp_converter_round_trip_and_quantize(real_tools, family, tmp_path):
    src = save_tiny(family, tmp_path / "m")
    ref = load_model(src).model
    f16 = lp.f16_gguf(real_tools, src, tmp_path / "f16.gguf")
    model = copy.deepcopy(ref)
    lp.load_gguf_into(model, f16)
    a, b = logits(model), logits(ref)
    assert (a - b).abs().max() < 2e-3 * b.abs().max()  # f16 rounding only
    q = lp.quantize(real_tools, f16, "Q4_0", tmp_path / "q.gguf")
    assert lp.tensor_types(q)["blk.0.ffn_up.weight"] == "Q4_0"
    bits = lp.bits_per_weight(q)
    assert bits["linear_bpw"] == 4.5 and bits["bytes"] == (tmp_path / "q.gguf").stat().st_size
    text = tmp_path / "t.txt"
    text.write_text((DEMO / "eval.txt").read_text()[:3000])
    res = lp.llama_kld(real_tools, f16, q, text, ctx=64)
    assert 0 < res["kld_mean"] < res["kld_max"] and 0 < res["top1_agreement"] <= 1
