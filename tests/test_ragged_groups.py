"""A group size that does not divide a layer's width: a shorter last group, through every method, the kernels,
the checkpoint and both exports (96 = 64 + 32 and 160 = 2 x 64 + 32 wide rows, groups of 64)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from lowbit import api, load
from lowbit.export import export_model
from lowbit.kernels.qlinear import PackedLinear, set_kernel
from lowbit.models.load import ASSETS
from lowbit.quantizers import QuantizedWeight, WeightSpec, quantize_weight


@pytest.fixture(scope="module")
def odd_llama(tmp_path_factory) -> Path:
    """A two-block Llama 96 wide with a 160-wide MLP (neither a multiple of 64) and the demo tokenizer."""
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(hidden_size=96, intermediate_size=160, num_hidden_layers=2, num_attention_heads=3,
                         num_key_value_heads=1, vocab_size=4096, max_position_embeddings=128, bos_token_id=1,
                         eos_token_id=2)
    model = tf.AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(5.0)
    path = tmp_path_factory.mktemp("odd") / "fp"
    model.save_pretrained(path)
    for f in (ASSETS / "demo").glob("tokenizer*"):
        shutil.copy(f, path / f.name)
    return path


def _packed(model: torch.nn.Module) -> dict[str, PackedLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, PackedLinear)}


@pytest.mark.parametrize("bits,symmetric", [(4, True), (3, False), (2, True)])
def test_packed_storage_pads_the_last_group_and_every_kernel_agrees(bits, symmetric):
    w = torch.randn(40, 160)
    q = quantize_weight(w, WeightSpec(bits, 64, symmetric))
    m = PackedLinear.from_quantized(q, torch.randn(40))
    assert m.kernel_k == 192 and m.scales.shape == (40, 3)
    assert torch.equal(m.codes(), q.codes) and torch.equal(m.dequantized_weight(), q.dequantize())
    ref = m.dequantized_weight().detach()
    for rows in (1, 3, 17):  # decode (GEMV), small batches, prefill (dequantize + matmul)
        x = torch.randn(rows, 160)
        want = torch.nn.functional.linear(x, ref, m.bias.detach())
        for kernel in ("torch", "c", "c-int8", "int4pack"):
            set_kernel(m, kernel)
            with torch.no_grad():
                got = m(x)
            assert got.shape == (rows, 40)
            torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2 * float(want.abs().max()),
                                       msg=f"{kernel} ({m.backend()}), {rows} rows")
            assert torch.equal(m.codes(), q.codes), kernel  # whichever backend holds the codes
            m.release()
    again = PackedLinear(160, 40, q.spec, bias=True)
    again.load_state_dict(m.state_dict())
    assert torch.equal(again.dequantized_weight(), ref)


def test_quantized_weight_dequantize_matches_each_group_alone():
    w = torch.randn(6, 100)
    q = quantize_weight(w, WeightSpec(4, 64, False))
    part = QuantizedWeight(q.codes[:, 64:], q.scales[:, 1:], q.zeros[:, 1:], WeightSpec(4, 0, False))
    assert torch.equal(q.dequantize()[:, 64:], part.dequantize())


@pytest.mark.parametrize("method", ["rtn", "gptq", "awq", "cbq", "smoothquant+rtn"])
def test_every_method_quantizes_and_reloads(odd_llama, calib_file, tmp_path, method, capsys):
    out = tmp_path / method
    cfg = api.make_config(method, 4, 64, options={"cbq": {"steps": 4}} if method == "cbq" else None)
    api.quantize_dir(odd_llama, out, cfg, calib_file, progress=False,
                     calib_config=api.CalibConfig(n_samples=4, seq_len=32, batch_size=2))
    assert "does not divide the widths 96, 160" in capsys.readouterr().err
    model = load(out)
    packed = _packed(model)
    assert len(packed) == 14 and {m.scales.shape[1] for m in packed.values()} == {2, 3}
    ids = torch.randint(0, 4096, (1, 16))
    with torch.no_grad():
        a = model(input_ids=ids).logits
        set_kernel(model, "torch")
        b = model(input_ids=ids).logits
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a, b, rtol=0.05, atol=0.05 * float(b.abs().max()))


def test_streaming_writes_the_same_checkpoint(odd_llama, calib_file, tmp_path):
    cfg, calib = api.make_config("gptq", 4, 64), api.CalibConfig(n_samples=4, seq_len=32, batch_size=2)
    api.quantize_dir(odd_llama, tmp_path / "mem", cfg, calib_file, calib, progress=False)
    api.quantize_dir(odd_llama, tmp_path / "stream", cfg, calib_file, calib, progress=False, stream=True)
    a, b = load(tmp_path / "mem").state_dict(), load(tmp_path / "stream").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def odd_ckpt(odd_llama, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("oddq") / "w4g64"
    api.quantize_dir(odd_llama, out, api.make_config("rtn", 4, 64), progress=False)
    return out


def test_compressed_tensors_regroups_exactly(odd_ckpt, tmp_path, capsys):
    pytest.importorskip("compressed_tensors")
    from compressed_tensors.entrypoints.convert.converters.ct_dequantizer import CompressedTensorsDequantizer
    from compressed_tensors.quantization import QuantizationConfig
    from safetensors.torch import load_file

    out = tmp_path / "ct"
    export_model(str(odd_ckpt), str(out), "compressed-tensors")
    assert "written as groups of 32" in capsys.readouterr().err
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    cfg = QuantizationConfig.model_validate(qc)
    assert cfg.config_groups["group_1"].weights.group_size == 64 and cfg.config_groups["group_1"].targets == ["Linear"]
    assert cfg.config_groups["group_0"].weights.group_size == 32 and len(cfg.config_groups["group_0"].targets) == 14
    stored = load_file(str(out / "model.safetensors"))
    theirs = CompressedTensorsDequantizer(str(out), dtype=torch.float16).process(stored)
    for n, m in _packed(load(odd_ckpt)).items():
        mine = m.dequantized_weight(torch.float32).to(torch.float16)
        assert torch.equal(theirs[f"{n}.weight"].view(torch.int16), mine.view(torch.int16)), n


def test_gguf_q4_0_carries_the_short_groups_over(odd_ckpt, tmp_path):
    gguf = pytest.importorskip("gguf")
    from lowbit.export.gguf_writer import gguf_name, rope_permutation

    out = tmp_path / "m.gguf"
    res = export_model(str(odd_ckpt), str(out), "gguf", "Q4_0")
    assert res["carried_over"] == 14
    tensors = {t.name: t for t in gguf.GGUFReader(str(out)).tensors}
    for name, m in _packed(load(odd_ckpt)).items():
        w, g = m.dequantized_weight(torch.float32), gguf_name(name)
        if g.endswith("attn_q"):
            w = w[rope_permutation(w.shape[0], 3)]
        elif g.endswith("attn_k"):
            w = w[rope_permutation(w.shape[0], 1)]
        t = tensors[f"{g}.weight"]
        theirs = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).copy())
        assert torch.equal(theirs, w), g
