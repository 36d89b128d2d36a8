"""Generation with the KV cache: same tokens as transformers' greedy search; CLI on packed checkpoints."""

import json

import pytest
import torch

from lowbit.cli import main
from lowbit.errors import LowbitError
from lowbit.models import load_model
from lowbit.models.generate import generate


def test_greedy_matches_transformers(tiny_models):
    loaded = load_model(tiny_models["llama"])
    ids = [1, 5, 17, 42, 9]
    ours = generate(loaded.model, loaded.tokenizer, ids, max_new_tokens=12, stop_at_eos=False)
    ref = loaded.model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, min_new_tokens=12)
    assert ours.token_ids == ref[0, len(ids):].tolist()
    assert ours.new_tokens == 12 and ours.decode_tokens_per_s > 0 and ours.prefill_tokens_per_s > 0


def test_sampling_is_seeded_and_checked(tiny_models):
    loaded = load_model(tiny_models["llama"])
    a = generate(loaded.model, loaded.tokenizer, [1, 2, 3], 8, temperature=1.0, top_k=20, top_p=0.9, seed=3,
                 stop_at_eos=False)
    b = generate(loaded.model, loaded.tokenizer, [1, 2, 3], 8, temperature=1.0, top_k=20, top_p=0.9, seed=3,
                 stop_at_eos=False)
    assert a.token_ids == b.token_ids
    with pytest.raises(LowbitError, match="context"):
        generate(loaded.model, loaded.tokenizer, [1] * 10, 10_000)
    with pytest.raises(LowbitError, match="top-p"):
        generate(loaded.model, loaded.tokenizer, [1], 2, top_p=0.0)


def test_cli_generate_on_packed_checkpoint(capsys, tiny_models, tmp_path):
    out = tmp_path / "q"
    assert main(["quantize", str(tiny_models["llama"]), "--method", "rtn", "--group-size", "32", "--out",
                 str(out)]) == 0
    capsys.readouterr()
    for dtype in ("bf16", "fp32"):
        assert main(["generate", str(out), "--prompt", "def main", "--max-new-tokens", "6", "--json",
                     "--dtype", dtype]) == 0
        res = json.loads(capsys.readouterr().out)
        assert res["new_tokens"] <= 6 and res["prompt_tokens"] > 0 and "decode_tokens_per_s" in res
    assert main(["generate", str(tiny_models["bert"]), "--prompt", "x"]) == 2
    assert "causal" in capsys.readouterr().err
