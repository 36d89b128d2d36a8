"""Generation with the KV cache: same tokens as transformers' greedy search; CLI on packed checkpoints."""

import json

import pytest
import torch

from lowbit.cli import main
from lowbit.errors import LowbitError
from lowbit.kernels.lib import get_lib
from lowbit.models import load_model
from lowbit.models.generate import generate


@pytest.mark.parametrize("engine", ["lean", "transformers"])
def test_greedy_matches_transformers(tiny_models, engine):
    loaded = load_model(tiny_models["llama"])
    ids = [1, 5, 17, 42, 9]
    ours = generate(loaded.model, loaded.tokenizer, ids, max_new_tokens=12, stop_at_eos=False, engine=engine)
    ref = loaded.model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, min_new_tokens=12)
    assert ours.token_ids == ref[0, len(ids):].tolist() and ours.engine == engine
    assert ours.new_tokens == 12 and ours.decode_tokens_per_s > 0 and ours.prefill_tokens_per_s > 0


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3"])
def test_lean_forward_equals_transformers(tiny_models, family):
    """Prefill, one-token steps and a chunk after cached tokens all give transformers' logits."""
    from lowbit.models.lean import LeanDecoder

    model = load_model(tiny_models[family]).model
    ids = torch.randint(3, 4000, (12,), generator=torch.Generator().manual_seed(1)).tolist()
    with torch.inference_mode():
        full = model(input_ids=torch.tensor([ids])).logits[0]
        dec = LeanDecoder(model, 16)
        got = [dec.step(ids[:7])] + [dec.step([i]) for i in ids[7:]]
        dec.reset()
        dec.step(ids[:4])
        chunk = dec.step(ids[4:9])
    err = max((g - full[j]).abs().max().item() for g, j in zip(got, range(6, 12), strict=True))
    assert err < 1e-4 * full.abs().max().item()
    assert (chunk - full[8]).abs().max().item() < 1e-4 * full.abs().max().item()
    with pytest.raises(ValueError, match="holds 16"):
        dec.step(list(range(20)))


def test_lean_refuses_other_families(tiny_models):
    loaded = load_model(tiny_models["gemma"])
    with pytest.raises(LowbitError, match="lean engine"):
        generate(loaded.model, loaded.tokenizer, [1, 2], 2, engine="lean")
    assert generate(loaded.model, loaded.tokenizer, [1, 2], 2).engine == "transformers"  # auto falls back


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
    have_c = get_lib() is not None  # c and c-int8 run at every CPU level where a C compiler works
    for dtype, kernel in (("bf16", "auto"), ("fp32", "auto"), ("bf16", "c-int8"), ("fp32", "torch")):
        assert main(["generate", str(out), "--prompt", "def main", "--max-new-tokens", "6", "--json",
                     "--dtype", dtype, "--kernel", kernel]) == 0
        res = json.loads(capsys.readouterr().out)
        assert res["new_tokens"] <= 6 and res["prompt_tokens"] > 0 and "decode_tokens_per_s" in res
        expect = {"auto": "c"}.get(kernel, kernel) if have_c else "torch"
        assert res["engine"] == "lean" and expect in res["kernel"].split(",")
    assert main(["generate", str(tiny_models["bert"]), "--prompt", "x"]) == 2
    assert "causal" in capsys.readouterr().err
