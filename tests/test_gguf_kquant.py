"""`lowbit quantize --gguf`: llama.cpp's per-tensor mix, GPTQ-in-grid bytes read back exactly, one-line errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lowbit.cli import main
from lowbit.errors import LowbitError
from lowbit.export.gguf_mix import llama_types
from lowbit.models.load import ASSETS

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
gguf = pytest.importorskip("gguf")
tf = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A 2-block tied Llama (hidden 256, MLP 320: ffn_down rows fall back from K-quants) with a byte-level BPE."""
    from tokenizers import ByteLevelBPETokenizer

    path = tmp_path_factory.mktemp("tiny-bpe")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([(ASSETS / "demo" / "calib.txt").read_text()[:20000]], vocab_size=400,
                            special_tokens=["<|endoftext|>"])
    tok = tf.PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>",
                                     eos_token="<|endoftext|>")
    tok.save_pretrained(path)
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(hidden_size=256, intermediate_size=320, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=128, bos_token_id=0,
                         eos_token_id=0, tie_word_embeddings=True)
    model = tf.AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(5.0)
    model.save_pretrained(path)
    return path


def test_written_weights_read_back_exactly(tiny, tmp_path):
    import llamacpp_peer  # benchmarks/

    from lowbit.api import gguf_plan
    from lowbit.data import calibration_windows
    from lowbit.export.gguf_kquant import write_gguf
    from lowbit.formats.ggml import ggml_type
    from lowbit.models import load_model
    from lowbit.ptq.gguf_quant import quantize_ggml

    loaded = load_model(tiny)
    plan, fell = gguf_plan(loaded, "Q4_K_M")
    assert plan["model.layers.0.mlp.down_proj"] == "Q5_0" and fell["model.layers.1.mlp.down_proj"] == ("Q6_K",
                                                                                                        "Q8_0")
    assert plan["model.layers.1.self_attn.v_proj"] == "Q6_K" and plan["model.layers.0.self_attn.v_proj"] == "Q4_K"
    assert plan["model.embed_tokens"] == "Q6_K" and "lm_head" not in plan  # tied: token_embd is the head
    tokens = calibration_windows(loaded.tokenizer, (ASSETS / "demo" / "calib.txt").read_text(), 8, 32)
    blocks, importance, _ = quantize_ggml(loaded.model, loaded.family, plan, tokens, "gptq", progress=False)
    assert len(blocks) == 14
    out = tmp_path / "m.gguf"
    res = write_gguf(loaded.model, tiny, out, plan, blocks, importance)
    assert res["types"] == {"F32": 5, "Q4_K": 11, "Q5_0": 1, "Q6_K": 2, "Q8_0": 1}
    r = gguf.GGUFReader(str(out))
    meta = {k: f.contents() for k, f in r.fields.items() if k.startswith("tokenizer.")}
    assert meta["tokenizer.ggml.model"] == "gpt2" and len(meta["tokenizer.ggml.merges"]) > 0
    assert "output.weight" not in {t.name for t in r.tensors}
    fresh = load_model(tiny).model
    llamacpp_peer.load_gguf_into(fresh, out)
    for name, m in loaded.model.named_modules():
        if isinstance(m, torch.nn.Linear) and name != "lm_head":
            assert torch.equal(fresh.get_submodule(name).weight.data, m.weight.data), name  # GPTQ's own weights
    emb = loaded.model.get_input_embeddings().weight.data
    assert torch.equal(fresh.get_input_embeddings().weight.data, ggml_type("Q6_K").quantize(emb)[1])


def test_cli_errors_are_one_line(tiny, tmp_path, capsys):
    assert main(["quantize", str(tiny), "--gguf", "Q7_K", "--out", str(tmp_path / "a.gguf")]) == 2
    assert "unknown GGUF file type 'Q7_K'" in capsys.readouterr().err
    assert main(["quantize", str(tiny), "--gguf", "Q4_K_M", "--method", "awq", "--out", str(tmp_path / "b.gguf")]) == 2
    assert "--method gptq (default) or rtn" in capsys.readouterr().err
    from lowbit.export.gguf_kquant import write_gguf
    from lowbit.models import load_model

    with pytest.raises(LowbitError, match="multiple of 256"):  # a K-quant on rows of 320
        write_gguf(load_model(tiny).model, tiny, tmp_path / "c.gguf", {"model.layers.0.mlp.down_proj": "Q4_K"})


# tensor types of llama-quantize's files for SmolLM2-135M (hidden 576, MLP 1536, 30 layers, 9/3 heads, tied)
LLAMA_CPP_SMOLLM2 = {
    "Q4_K_M": {"Q8_0": 15, "Q5_0": 166, "Q4_K": 16, "Q6_K": 14},
    "Q3_K_M": {"Q8_0": 1, "Q4_0": 120, "Q5_0": 58, "Q5_1": 2, "Q5_K": 1, "Q4_K": 29},
    "Q2_K": {"Q8_0": 1, "Q4_0": 180, "Q3_K": 30},
    "Q5_K_M": {"Q8_0": 15, "Q5_1": 166, "Q5_K": 16, "Q6_K": 14},
}


@pytest.mark.parametrize("ftype", list(LLAMA_CPP_SMOLLM2))
def test_mix_matches_llama_cpp_on_smollm2_shapes(ftype):
    shapes = {"token_embd.weight": 576}
    for i in range(30):
        shapes |= {f"blk.{i}.{n}.weight": 576 for n in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate",
                                                         "ffn_up")}
        shapes[f"blk.{i}.ffn_down.weight"] = 1536
    types, fell = llama_types(ftype, shapes, 30, 3, tied=True)
    counts = {k: list(types.values()).count(k) for k in set(types.values())}
    assert counts == LLAMA_CPP_SMOLLM2[ftype]
    assert types["token_embd.weight"] == "Q8_0" and all(shapes[n] == 576 for n in fell)


@pytest.mark.skipif(not os.environ.get("LLAMA_CPP_DIR"), reason="LLAMA_CPP_DIR (a built llama.cpp) not set")
def test_llama_perplexity_runs_the_file(tiny, tmp_path):
    import llamacpp_peer

    out = tmp_path / "m.gguf"
    assert main(["quantize", str(tiny), "--gguf", "Q3_K_M", "--n-samples", "4", "--seq-len", "32", "--out",
                 str(out)]) == 0
    t = llamacpp_peer.tools(os.environ["LLAMA_CPP_DIR"])
    text = tmp_path / "t.txt"
    text.write_text((ASSETS / "demo" / "eval.txt").read_text()[:3000])
    p = subprocess.run([t.bin / "llama-perplexity", "-m", out, "-f", text, "-c", "64", "--chunks", "2", "-t", "2"],
                       capture_output=True, text=True, env={**os.environ, "LD_LIBRARY_PATH": str(t.bin)}, timeout=120)
    m = re.search(r"\[1\]([0-9.]+)", p.stdout)  # the first chunk's perplexity
    assert p.returncode == 0 and m and 1.0 < float(m[1]) < 1e6, p.stderr[-500:]
