"""Quantized LM head and input embedding (--head-bits): tied ones stay one packed table; per-module formats in
lowbit_quant.json; reload equality, exact bytes, every method, the lean decoder, the exports and bad input."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from conftest import first_logits

from lowbit import api
from lowbit.cli import main
from lowbit.errors import LowbitError
from lowbit.export.checkpoint import save_quantized
from lowbit.kernels.embedding import PackedEmbedding
from lowbit.kernels.qlinear import PackedLinear
from lowbit.models import load_model
from lowbit.models.checkpoint import load_with_tokenizer, replace_linears
from lowbit.ptq import CalibConfig, quantize, quantize_head
from lowbit.quantizers import WeightSpec

HEAD = WeightSpec(8, 32)
VOCAB, HIDDEN = 4096, 64


def _tied(src: Path, dst: Path, perturb_norm: bool = False) -> Path:
    """A copy of a tiny untied model whose LM head is its input embedding (and optionally whose final norm is not
    all ones, so that a rotation must untie them)."""
    import transformers as tf

    m = tf.AutoModelForCausalLM.from_pretrained(src)
    m.config.tie_word_embeddings = True
    m.lm_head.weight = m.get_input_embeddings().weight
    if perturb_norm:
        with torch.no_grad():
            m.model.norm.weight.uniform_(0.5, 1.5)
    m.save_pretrained(dst)
    for f in src.glob("tokenizer*"):
        shutil.copy(f, dst / f.name)
    return dst


@pytest.fixture(scope="module")
def models(tiny_models, tmp_path_factory) -> dict[str, Path]:
    """Tiny tied Llama and Gemma 3 and an untied Llama (the fixture's)."""
    root = tmp_path_factory.mktemp("head")
    return {"llama": _tied(tiny_models["llama"], root / "tied"), "gemma3_text": tiny_models["gemma3_text"],
            "untied": tiny_models["llama"]}


def _data_bytes(ckpt: Path) -> int:
    """Bytes of tensor data in a checkpoint's model.safetensors (its JSON header excluded)."""
    f = ckpt / "model.safetensors"
    with open(f, "rb") as h:
        (n,) = struct.unpack("<Q", h.read(8))
    return f.stat().st_size - 8 - n


def _quantized(src: Path, method: str = "rtn", head: WeightSpec | None = HEAD, tokens: torch.Tensor | None = None):
    loaded = load_model(src)
    cfg = api.make_config(method, 4, 32)
    quantize(loaded.model, loaded.family, cfg, tokens, progress=False,
             on_block=lambda done: replace_linears(loaded.model, done))
    report = quantize_head(loaded.model, loaded.family, head) if head is not None else None
    return loaded, report


@pytest.mark.parametrize("name", ["llama", "gemma3_text", "untied"])
def test_reload_equals_before_save_and_bytes_drop_exactly(models, tmp_path, name):
    loaded, report = _quantized(models[name])
    tied = name != "untied"
    assert report["tied"] is tied and report["embedding"] == "model.embed_tokens" and report["head"] == "lm_head"
    emb = loaded.model.get_input_embeddings()
    assert isinstance(emb, PackedEmbedding) and (loaded.model.get_output_embeddings() is emb) is tied
    before = first_logits(loaded.model)
    save_quantized(loaded.model, None, models[name], tmp_path / "q", {"method": "rtn"})
    api.quantize_dir(models[name], tmp_path / "plain", api.make_config("rtn", 4, 32), progress=False)
    again = load_with_tokenizer(tmp_path / "q")
    assert isinstance(again.model.get_input_embeddings(), PackedEmbedding)
    assert (again.model.get_output_embeddings() is again.model.get_input_embeddings()) is tied
    assert torch.equal(first_logits(again.model), before)
    qcfg = json.loads((tmp_path / "q" / "lowbit_quant.json").read_text())
    assert qcfg["version"] == 2 and (qcfg["bits"], qcfg["group_size"]) == (4, 32)
    assert qcfg["embeddings"] == {"model.embed_tokens": ["lm_head"] if tied else []}
    heads = ["model.embed_tokens"] + ([] if tied else ["lm_head"])
    assert qcfg["module_specs"] == {n: {"bits": 8, "group_size": 32, "symmetric": True, "range": "minmax"}
                                    for n in heads}
    assert json.loads((tmp_path / "plain" / "lowbit_quant.json").read_text())["version"] == 1
    # fp32 tables [4096, 64] become 8-bit codes plus one fp16 scale per 32 values, stored once when tied
    tables = len(heads)
    saved = tables * VOCAB * HIDDEN * 4 - tables * (VOCAB * HIDDEN + VOCAB * (HIDDEN // 32) * 2)
    assert _data_bytes(tmp_path / "plain") - _data_bytes(tmp_path / "q") == saved
    assert report["packed_bytes"] == tables * (VOCAB * HIDDEN + VOCAB * 2 * 2)
    packed = [m for m in again.model.modules() if isinstance(m, PackedLinear)]  # each module once
    bits = sum(m.storage_bits() for m in packed) / sum(m.in_features * m.out_features for m in packed)
    assert qcfg["bits_per_weight"] == pytest.approx(bits)


def test_embedding_rows_and_gemma_scale(models):
    loaded, _ = _quantized(models["gemma3_text"])
    emb = loaded.model.get_input_embeddings()
    assert emb.scale == pytest.approx(HIDDEN**0.5)
    ids = torch.tensor([[5, 7], [4095, 0]])
    want = emb.dequantized_weight()[ids] * torch.tensor(HIDDEN**0.5)
    assert torch.equal(emb(ids), want)


@pytest.mark.parametrize("method", ["gptq", "rotate+rtn"])
def test_head_quantization_composes_with_methods(models, tmp_path, calib_file, method):
    """Last, on the final weights: a rotation that unties the head (final norm not all ones) gets two tables."""
    src = _tied(models["untied"], tmp_path / "src", perturb_norm=True) if method == "rotate+rtn" else models["llama"]
    cfg = api.make_config(method, 4, 32)
    calib = CalibConfig(n_samples=4, seq_len=32, batch_size=4)
    res = api.quantize_dir(src, tmp_path / "q", cfg, calib_file, calib, progress=False, head=HEAD)
    assert res["head"]["tied"] is (method != "rotate+rtn")
    again = load_with_tokenizer(tmp_path / "q")
    assert torch.isfinite(first_logits(again.model)).all()
    assert res["bytes"] == api.inspect_dir(tmp_path / "q")["bytes"]


def test_lean_decoder_runs_a_packed_head(models, tmp_path):
    from lowbit.models.generate import generate

    loaded, _ = _quantized(models["llama"])
    save_quantized(loaded.model, None, models["llama"], tmp_path / "q", {"method": "rtn"})
    again = load_with_tokenizer(tmp_path / "q")
    ids = [1, 5, 9, 200]
    lean = generate(again.model, again.tokenizer, ids, 6, stop_at_eos=False, engine="lean")
    ref = generate(again.model, again.tokenizer, ids, 6, stop_at_eos=False, engine="transformers")
    assert lean.engine == "lean" and lean.token_ids == ref.token_ids
    res = api.generate_dir(tmp_path / "q", "def f", 4, engine="lean")
    assert res["engine"] == "lean" and res["new_tokens"] == 4


def test_cli_head_bits(models, tmp_path, capsys):
    out = tmp_path / "q"
    assert main(["quantize", str(models["llama"]), "--method", "rtn", "--group-size", "32", "--head-bits", "4",
                 "--out", str(out)]) in (0, None)
    assert "head and embedding W4 g64 sym" in capsys.readouterr().out
    assert json.loads((out / "lowbit_quant.json").read_text())["module_specs"]["model.embed_tokens"]["bits"] == 4
    info = api.inspect_dir(out)
    assert info["quantization"]["embeddings"] == {"model.embed_tokens": ["lm_head"]}
    for bad in ("9", "1", "x"):
        with pytest.raises(SystemExit) as e:
            main(["quantize", str(models["llama"]), "--head-bits", bad, "--out", str(tmp_path / bad)])
        err = capsys.readouterr().err
        assert e.value.code == 2 and "--head-bits" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(LowbitError, match="--stream"):
        api.quantize_dir(models["llama"], tmp_path / "s", api.make_config("rtn", 4, 32), stream=True, head=HEAD)


@pytest.fixture(scope="module")
def head_ckpt(models, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("headck") / "q"
    api.quantize_dir(models["untied"], out, api.make_config("rtn", 4, 32), progress=False, head=HEAD)
    return out


@pytest.mark.parametrize("edit,match", [
    (lambda c: c["module_specs"]["lm_head"].update(bits=12), r"module_specs\['lm_head'\]\.bits is 12"),
    (lambda c: c["module_specs"].update({"model.nope": c["module_specs"]["lm_head"]}), "module_specs is"),
    (lambda c: c.update(module_specs=[1]), "module_specs is"),
    (lambda c: c["module_specs"]["lm_head"].pop("symmetric"), "symmetric is 'missing'"),
    (lambda c: c["embeddings"].update({"model.embed_tokens": ["lm_head"]}), "named twice or is packed"),
    (lambda c: c.update(embeddings={"model.embed_tokens": "lm_head"}), "embeddings is"),
    (lambda c: c.update(bits_per_weight=2.0), "bits_per_weight is 2.0"),
])
def test_corrupt_per_module_specs_are_refused(head_ckpt, tmp_path, edit, match):
    ck = tmp_path / "ck"
    shutil.copytree(head_ckpt, ck)
    cfg = json.loads((ck / "lowbit_quant.json").read_text())
    edit(cfg)
    (ck / "lowbit_quant.json").write_text(json.dumps(cfg))
    with pytest.raises(LowbitError, match=match) as e:
        load_with_tokenizer(ck)
    assert "\n" not in str(e.value)


def test_a_linear_named_as_embedding_is_refused(head_ckpt, tmp_path):
    ck = tmp_path / "ck"
    shutil.copytree(head_ckpt, ck)
    cfg = json.loads((ck / "lowbit_quant.json").read_text())
    cfg["embeddings"]["model.layers.0.self_attn.q_proj"] = []
    (ck / "lowbit_quant.json").write_text(json.dumps(cfg))
    with pytest.raises(LowbitError, match="as a packed embedding"):
        load_with_tokenizer(ck)


def test_exports(tmp_path, capsys):
    """GGUF: 8-bit g64 tables carried over as Q8_0 exactly, 3-bit ones as Q4_0; groups of 16 fit no block type
    and go as F16, said so. compressed-tensors refuses in one line."""
    gguf = pytest.importorskip("gguf")
    from export_models import save_small_llama

    from lowbit.export import export_model

    src = save_small_llama(tmp_path / "fp")  # untied, 256 wide
    for bits, group, kind in ((8, 64, "Q8_0"), (3, 64, "Q4_0"), (8, 16, "F16")):
        ck = tmp_path / f"h{bits}g{group}"
        api.quantize_dir(src, ck, api.make_config("rtn", 4, 32), progress=False, head=WeightSpec(bits, group))
        res = export_model(str(ck), str(ck) + ".gguf", "gguf", "Q4_0")
        assert res["tables"] == {"token_embd.weight": kind, "output.weight": kind}
        assert res["carried_over"] == res["linears"] == 14
        tensors = {t.name: t for t in gguf.GGUFReader(str(ck) + ".gguf").tensors}
        model = load_with_tokenizer(ck).model
        for gname, m in (("token_embd.weight", model.get_input_embeddings()),
                         ("output.weight", model.get_output_embeddings())):
            t = tensors[gname]
            assert t.tensor_type == getattr(gguf.GGMLQuantizationType, kind)
            theirs = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).copy()).float()
            want = m.dequantized_weight()
            assert torch.equal(theirs, want.half().float() if kind == "F16" else want)
        assert ("F16 from the dequantized values" in capsys.readouterr().err) is (kind == "F16")
    with pytest.raises(LowbitError, match="--head-bits") as e:
        export_model(str(tmp_path / "h8g64"), str(tmp_path / "ct"), "compressed-tensors")
    assert "\n" not in str(e.value) and not (tmp_path / "ct").exists()
