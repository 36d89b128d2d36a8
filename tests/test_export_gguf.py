"""GGUF export: read back with gguf.GGUFReader; carried-over weights decode to exactly ours."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from export_models import small_checkpoints

from lowbit.cli import main
from lowbit.export import export_model
from lowbit.export.ggml_blocks import dequantize_q4_k, quantize_q4_k, quantize_q6_k
from lowbit.export.gguf_writer import gguf_name, more_bits, rope_permutation

gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    """The small Llama in full precision and as RTN checkpoints of several formats."""
    return small_checkpoints(tmp_path_factory.getbasetemp() / "export-models")


def _read(path: Path) -> tuple[dict, dict]:
    """Metadata values and tensors (by name) of a GGUF file."""
    r = gguf.GGUFReader(str(path))
    meta = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    return meta, {t.name: t for t in r.tensors}


def _ours(ckpt: Path) -> dict[str, torch.Tensor]:
    """Every linear weight of a lowbit checkpoint as GGUF expects it (q and k rows permuted), by GGUF name."""
    import lowbit
    from lowbit.kernels.qlinear import PackedLinear

    out = {}
    for name, m in lowbit.load(ckpt).named_modules():
        if isinstance(m, PackedLinear):
            w = m.dequantized_weight(torch.float32)
            g = gguf_name(name)
            if g.endswith("attn_q"):
                w = w[rope_permutation(w.shape[0], 4)]
            elif g.endswith("attn_k"):
                w = w[rope_permutation(w.shape[0], 2)]
            out[f"{g}.weight"] = w
    return out


@pytest.mark.parametrize("ckpt,qtype", [("w4g32", "Q4_0"), ("w4g32", "Q8_0"), ("w3g64a", "Q4_0")])
def test_carried_over_codes_decode_to_exactly_our_weights(ckpts, tmp_path, ckpt, qtype):
    out = tmp_path / "m.gguf"
    res = export_model(str(ckpts[ckpt]), str(out), "gguf", qtype)
    assert res["carried_over"] == res["linears"] == 14
    meta, tensors = _read(out)
    assert meta["general.architecture"] == "llama" and meta["general.file_type"] == {"Q4_0": 2, "Q8_0": 7}[qtype]
    assert (meta["llama.block_count"], meta["llama.embedding_length"], meta["llama.feed_forward_length"]) == (2, 256,
                                                                                                             512)
    assert (meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]) == (4, 2)
    assert meta["llama.context_length"] == 128 and meta["llama.rope.dimension_count"] == 64
    assert meta["llama.rope.freq_base"] == pytest.approx(10000.0)
    assert meta["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
    assert meta["tokenizer.ggml.model"] == "llama" and len(meta["tokenizer.ggml.tokens"]) == 4096
    assert meta["tokenizer.ggml.tokens"][1] == "<s>" and meta["tokenizer.ggml.token_type"][3] == 6  # byte token
    assert (meta["tokenizer.ggml.bos_token_id"], meta["tokenizer.ggml.eos_token_id"]) == (1, 2)
    expected = {"token_embd.weight", "output_norm.weight", "output.weight"} | {
        f"blk.{i}.{n}.weight" for i in range(2) for n in ("attn_norm", "ffn_norm", "attn_q", "attn_k", "attn_v",
                                                          "attn_output", "ffn_gate", "ffn_up", "ffn_down")}
    assert set(tensors) == expected
    assert [int(x) for x in tensors["blk.0.ffn_down.weight"].shape] == [512, 256]  # GGUF lists ne0 (input) first
    assert tensors["token_embd.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    for name, w in _ours(ckpts[ckpt]).items():
        t = tensors[name]
        assert t.tensor_type == getattr(gguf.GGMLQuantizationType, qtype)
        theirs = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).copy())
        assert torch.equal(theirs, w), name


def test_q4_k_is_requantized_and_says_so(ckpts, tmp_path, capsys):
    out = tmp_path / "k.gguf"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many small element-wise ops: 10x faster on one thread of this shared CPU
    try:
        assert main(["export", str(ckpts["w4g32"]), "--format", "gguf", "--type", "Q4_K", "--out", str(out),
                     "--json"]) == 0
    finally:
        torch.set_num_threads(threads)
    cap = capsys.readouterr()
    assert "re-quantized" in cap.err and json.loads(cap.out.strip().splitlines()[-1])["carried_over"] == 0
    _, tensors = _read(out)
    for name, w in _ours(ckpts["w4g32"]).items():
        t = tensors[name]
        assert t.tensor_type == gguf.GGMLQuantizationType.Q4_K
        theirs = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).copy())
        assert torch.equal(theirs, dequantize_q4_k(t.data, tuple(w.shape)))  # our reference decoder agrees
        assert (theirs - w).pow(2).mean() / w.pow(2).mean() < 0.01, name  # close to the W4 g32 weights


def test_wider_formats_and_float_sources_are_requantized(ckpts, tmp_path, capsys):
    res = export_model(str(ckpts["w8ch"]), str(tmp_path / "a.gguf"), "gguf", "Q4_0")  # 8-bit codes do not fit
    assert res["carried_over"] == 0 and "re-quantized" in capsys.readouterr().err
    res = export_model(str(ckpts["fp"]), str(tmp_path / "f.gguf"), "gguf", "Q8_0")
    assert res["carried_over"] == 0 and "not quantized" in capsys.readouterr().err


def test_q4_k_packer_against_gguf_reader():
    w = torch.randn(8, 512) * torch.linspace(0.01, 1.0, 512)
    w[0, :256] = 0.0  # an all-zero super-block must not divide by zero
    w[1, :32] = torch.linspace(0.1, 0.5, 32)  # an all-positive sub-block (no offset)
    data, decoded = quantize_q4_k(w)
    assert data.shape == (8, 2 * 144)
    theirs = torch.from_numpy(gguf.quants.dequantize(data, gguf.GGMLQuantizationType.Q4_K).copy())
    assert torch.equal(theirs, decoded) and torch.equal(theirs[0, :256], torch.zeros(256))
    assert (theirs - w).pow(2).mean() / w.pow(2).mean() < 0.01


def test_q6_k_packer_against_gguf_reader():
    w = torch.randn(8, 512) * torch.linspace(0.01, 1.0, 512)
    w[0, :256] = 0.0  # an all-zero super-block
    w[1, :16] = 0.0  # an all-zero sub-block beside live ones
    w[2, 300] = 40.0  # an outlier sets the super-block's scale (positive largest value: negative d)
    w[3, 40] = -40.0
    data, decoded = quantize_q6_k(w)
    assert data.shape == (8, 2 * 210)
    theirs = torch.from_numpy(gguf.quants.dequantize(data, gguf.GGMLQuantizationType.Q6_K).copy())
    assert torch.equal(theirs, decoded) and torch.equal(theirs[0, :256], torch.zeros(256))
    assert torch.equal(theirs[1, :16], torch.zeros(16))
    assert abs(float(theirs[2, 300]) - 40.0) < 0.2 and abs(float(theirs[3, 40]) + 40.0) < 0.2
    rel = (theirs - w).pow(2).mean() / w.pow(2).mean()
    assert rel < 2e-3  # 6 bits: about 16x less error than Q4_K's 1%


def test_q4_k_m_mixes_q6_k_where_llama_cpp_does(ckpts, tmp_path):
    # llama.cpp's use_more_bits for 32 layers: the first 4, the last 4 and every third from layer 6
    picked = [i for i in range(32) if more_bits(f"blk.{i}.ffn_down", 32)]
    assert picked == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
    assert not more_bits("blk.0.attn_q", 32) and more_bits("blk.0.attn_v", 32)
    out = tmp_path / "m.gguf"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = export_model(str(ckpts["fp"]), str(out), "gguf", "Q4_K_M")
    finally:
        torch.set_num_threads(threads)
    meta, tensors = _read(out)
    assert meta["general.file_type"] == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    types = {n: t.tensor_type.name for n, t in tensors.items() if n.startswith("blk.")}
    # 2 layers: layer 1 is in the last eighth (7 * 2 // 8 = 1), layer 0 is not
    assert types["blk.1.attn_v.weight"] == types["blk.1.ffn_down.weight"] == "Q6_K"
    assert types["blk.0.attn_v.weight"] == types["blk.0.ffn_down.weight"] == "Q4_K"
    assert types["blk.1.attn_q.weight"] == "Q4_K" and res["tensors"] == {"Q4_K re-quantized": 12,
                                                                        "Q6_K re-quantized": 2}
    import lowbit

    fp = lowbit.load(ckpts["fp"])
    for name in ("blk.1.ffn_down.weight", "blk.0.ffn_down.weight"):
        t = tensors[name]
        theirs = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).copy())
        ours = fp.get_submodule(f"model.layers.{name[4]}.mlp.down_proj").weight.detach().float()
        rel = float((theirs - ours).pow(2).mean() / ours.pow(2).mean())
        assert rel < (2e-3 if t.tensor_type.name == "Q6_K" else 0.01), (name, rel)


def test_rope_permutation_turns_rotate_half_into_interleaved_pairs():
    """llama.cpp's rope rotates pairs (2i, 2i+1); HF's rotates (i, i + d/2): the permuted rows must agree."""
    heads, d, pos = 3, 8, 5.0
    x = torch.randn(heads * d)
    freq = 10000.0 ** (-torch.arange(d // 2) * 2 / d)
    cos, sin = torch.cos(pos * freq), torch.sin(pos * freq)
    h = x.view(heads, d)
    a, b = h[:, : d // 2], h[:, d // 2:]
    hf = torch.cat([a * cos - b * sin, b * cos + a * sin], dim=1).reshape(-1)
    p = x[rope_permutation(heads * d, heads)].view(heads, d // 2, 2)
    e, o = p[..., 0], p[..., 1]
    interleaved = torch.stack([e * cos - o * sin, o * cos + e * sin], dim=-1).reshape(-1)
    assert torch.allclose(interleaved, hf[rope_permutation(heads * d, heads)])


def test_unsupported_sources_are_clear_errors(tiny_models, ckpts, tmp_path, capsys):
    assert main(["export", str(tiny_models["qwen2"]), "--format", "gguf", "--out", str(tmp_path / "q.gguf")]) == 2
    assert "Llama and Mistral" in capsys.readouterr().err
    assert main(["export", str(ckpts["w4g32"]), "--format", "gguf", "--type", "Q2_K",
                 "--out", str(tmp_path / "k.gguf")]) == 2
    assert "Q8_0, Q6_K, Q4_0, Q4_K, Q4_K_M" in capsys.readouterr().err
    w4a8 = tmp_path / "w4a8"  # a checkpoint that quantizes activations at run time has no W*A16 / GGUF form
    shutil.copytree(ckpts["w4g32"], w4a8)
    qcfg = json.loads((w4a8 / "lowbit_quant.json").read_text())
    (w4a8 / "lowbit_quant.json").write_text(json.dumps({**qcfg, "act_bits": 8}))
    for fmt in ("gguf", "compressed-tensors"):
        assert main(["export", str(w4a8), "--format", fmt, "--out", str(tmp_path / "a8")]) == 2
        assert "weight-only" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w4a8"]
