"""compressed-tensors export: read back with the compressed-tensors library, weights equal ours bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from export_models import small_checkpoints

from lowbit.cli import main
from lowbit.export import export_model

pytest.importorskip("compressed_tensors")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    """The small Llama in full precision and as RTN checkpoints of several formats."""
    return small_checkpoints(tmp_path_factory.getbasetemp() / "export-models")


def _ct_weights(out: Path) -> dict[str, torch.Tensor]:
    """Decompress every weight of an exported directory with compressed-tensors' own dequantizer."""
    from compressed_tensors.entrypoints.convert.converters.ct_dequantizer import CompressedTensorsDequantizer
    from safetensors.torch import load_file

    tensors = load_file(str(out / "model.safetensors"))
    return CompressedTensorsDequantizer(str(out), dtype=torch.float16).process(tensors)


@pytest.mark.parametrize("name", ["w4g32", "w8ch", "w3g64a"])
def test_decompressed_weights_equal_ours_bit_for_bit(ckpts, tmp_path, name):
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationConfig
    from safetensors.torch import load_file

    import lowbit
    from lowbit.kernels.qlinear import PackedLinear

    out = tmp_path / "ct"
    res = export_model(str(ckpts[name]), str(out), "compressed-tensors")
    assert res["carried_over"] and res["ignored"] == ["lm_head"]
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    cfg = QuantizationConfig.model_validate(qc)  # the library accepts our config block
    scheme = cfg.config_groups["group_0"]
    assert qc["format"] == "pack-quantized" and qc["quant_method"] == "compressed-tensors"
    ours = {n: m for n, m in lowbit.load(ckpts[name]).named_modules() if isinstance(m, PackedLinear)}
    assert len(ours) == 14  # 7 linears in each of 2 blocks
    theirs = _ct_weights(out)
    stored = load_file(str(out / "model.safetensors"))
    for n, m in ours.items():
        mine = m.dequantized_weight(torch.float32).to(torch.float16)  # CT dequantizes in the scale dtype (fp16)
        assert torch.equal(theirs[f"{n}.weight"].view(torch.int16), mine.view(torch.int16)), n
        # The library's own compressor, given our weights, scales and zero points, writes the same bytes.
        sd = {"weight": m.dequantized_weight(torch.float32), "weight_scale": m.scales.float()}
        if not m.spec.symmetric:
            sd["weight_zero_point"] = (m.zeros() - (1 << (m.spec.bits - 1))).to(torch.int8)
        packed = PackedQuantizationCompressor.compress(sd, scheme)
        assert torch.equal(packed["weight_packed"], stored[f"{n}.weight_packed"]), n
        if not m.spec.symmetric:
            assert torch.equal(packed["weight_zero_point"], stored[f"{n}.weight_zero_point"]), n
    assert torch.equal(theirs["lm_head.weight"], stored["lm_head.weight"])


def test_transformers_loads_the_export_and_matches_lowbit(ckpts, tmp_path):
    from transformers import AutoModelForCausalLM

    import lowbit

    out = tmp_path / "ct"
    export_model(str(ckpts["w4g32"]), str(out), "compressed-tensors")
    hf = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    ids = torch.randint(0, 4096, (1, 24))
    with torch.no_grad():
        a, b = hf(ids).logits, lowbit.load(ckpts["w4g32"])(ids).logits
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_float_source_is_quantized_with_rtn_and_says_so(ckpts, tmp_path, capsys):
    out = tmp_path / "ct"
    assert main(["export", str(ckpts["fp"]), "--format", "compressed-tensors", "--group-size", "64",
                 "--out", str(out), "--json"]) == 0
    cap = capsys.readouterr()
    assert "not quantized" in cap.err and "RTN" in cap.err
    res = json.loads(cap.out.strip().splitlines()[-1])
    assert res["scheme"] == "W4A16" and not res["carried_over"]
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["config_groups"]["group_0"]["weights"]["group_size"] == 64
    w = _ct_weights(out)["model.layers.0.self_attn.q_proj.weight"].float()
    from safetensors.torch import load_file

    ref = load_file(str(ckpts["fp"] / "model.safetensors"))["model.layers.0.self_attn.q_proj.weight"].float()
    assert (w - ref).pow(2).mean() / ref.pow(2).mean() < 0.02  # 4-bit RTN of the source


def test_bad_export_input(ckpts, tmp_path, capsys):
    def err(argv: list[str]) -> str:
        assert main(argv) == 2
        return capsys.readouterr().err

    assert "already exists" in err(["export", str(ckpts["w4g32"]), "--format", "compressed-tensors",
                                    "--out", str(ckpts["fp"])])
    assert "unknown export format" in err(["export", str(ckpts["w4g32"]), "--format", "onnx",
                                           "--out", str(tmp_path / "x")])
    assert "per-tensor" in err(["export", str(ckpts["fp"]), "--format", "compressed-tensors", "--group-size", "-1",
                                "--out", str(tmp_path / "y")])
    assert "no such directory" in err(["export", str(tmp_path / "missing"), "--format", "gguf",
                                       "--out", str(tmp_path / "z.gguf")])
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists() and not (tmp_path / "z.gguf").exists()
