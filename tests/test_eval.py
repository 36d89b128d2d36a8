"""Evaluation: sliding-window perplexity and calibration windows."""

import math

import pytest
import torch
from torch import nn

from lowbit.data import calibration_windows
from lowbit.errors import LowbitError
from lowbit.eval import divergence, perplexity
from lowbit.eval.perplexity import windows
from lowbit.models import load_model


class Bigram(nn.Module):
    """A model whose next-token distribution depends only on the current token (context-free, exact NLL)."""

    def __init__(self, vocab=11):
        super().__init__()
        self.table = nn.Parameter(torch.randn(vocab, vocab))

    def forward(self, input_ids, use_cache=False):
        return type("Out", (), {"logits": self.table[input_ids]})()


def _exact_ppl(model, ids):
    logp = torch.log_softmax(model.table[ids[:-1]], -1)
    return math.exp(-logp.gather(1, ids[1:, None]).mean().item())


@pytest.mark.parametrize("window,stride", [(8, 4), (16, 16), (7, 3), (1000, 500)])
def test_sliding_window_scores_every_token_once(window, stride):
    torch.manual_seed(0)
    m, ids = Bigram(), torch.randint(0, 11, (101,))
    with torch.no_grad():
        assert perplexity(m, ids, window, stride, progress=False) == pytest.approx(_exact_ppl(m, ids), rel=1e-5)


@pytest.mark.parametrize("window,stride", [(8, 4), (7, 3), (1000, 500)])
def test_divergence_is_exact_on_context_free_models(window, stride):
    """Bigram models: every scored position's KL(ref || model), top-1 agreement and both perplexities by hand."""
    torch.manual_seed(1)
    ref, m, ids = Bigram(), Bigram(), torch.randint(0, 11, (101,))
    with torch.no_grad():
        res = divergence(m, ref, ids, window, stride, progress=False)
        lp, lq = torch.log_softmax(ref.table[ids[:-1]], -1), torch.log_softmax(m.table[ids[:-1]], -1)
        kld = (lp.exp() * (lp - lq)).sum(-1).double()
        top1 = (ref.table[ids[:-1]].argmax(-1) == m.table[ids[:-1]].argmax(-1)).double().mean().item()
    assert res["scored_tokens"] == 100
    assert res["kld_mean"] == pytest.approx(kld.mean().item(), rel=1e-5)
    assert res["kld_p99"] == pytest.approx(torch.quantile(kld, 0.99).item(), rel=1e-4)
    assert res["top1_agreement"] == pytest.approx(top1)
    assert res["perplexity"] == pytest.approx(_exact_ppl(m, ids), rel=1e-5)
    assert res["reference_perplexity"] == pytest.approx(_exact_ppl(ref, ids), rel=1e-5)
    same = divergence(ref, ref, ids, window, stride, progress=False)
    assert same["kld_mean"] < 1e-6 and same["top1_agreement"] == 1.0
    cache: list[torch.Tensor] = []
    first = divergence(m, ref, ids, window, stride, progress=False, cache=cache)
    again = divergence(m, None, ids, window, stride, progress=False, cache=cache)  # the reference is not run again
    assert first == res and again == res and len(cache) == len(list(windows(ids.numel(), window, stride)))


def test_perplexity_of_a_real_model_is_sane(tiny_models):
    loaded = load_model(tiny_models["llama"])
    ids = torch.randint(3, 4000, (300,))
    ppl = perplexity(loaded.model, ids, 128, 64, bos=1, progress=False)
    assert 1 < ppl < 10 * 4096


def test_calibration_windows(tiny_models, calib_file):
    tok = load_model(tiny_models["llama"]).tokenizer
    w = calibration_windows(tok, calib_file.read_text(), n_samples=5, seq_len=40, seed=1)
    assert w.shape == (5, 40) and (w[:, 0] == tok.bos_token_id).all()
    assert torch.equal(w, calibration_windows(tok, calib_file.read_text(), 5, 40, seed=1))
    with pytest.raises(LowbitError, match="only"):
        calibration_windows(tok, "hi", 5, 40)


def test_encoder_windows_have_cls_and_sep(tiny_models, calib_file):
    tok = load_model(tiny_models["bert"]).tokenizer
    w = calibration_windows(tok, calib_file.read_text(), n_samples=3, seq_len=32)
    assert (w[:, 0] == tok.cls_token_id).all() and (w[:, -1] == tok.sep_token_id).all()


def test_demo_tokenizer_matches_its_sentencepiece_model():
    """transformers tokenizes the demo's text exactly as SentencePiece did in training, spaces included."""
    sentencepiece = pytest.importorskip("sentencepiece")
    from transformers import AutoTokenizer

    from lowbit.models.load import ASSETS

    DEMO_DIR = ASSETS / "demo"
    sp = sentencepiece.SentencePieceProcessor(model_file=str(DEMO_DIR / "tokenizer.model"))
    tok = AutoTokenizer.from_pretrained(str(DEMO_DIR))
    paragraphs = [p for p in (DEMO_DIR / "eval.txt").read_text(encoding="utf-8").split("\n\n") if p.strip()]
    paragraphs += ["   DTrace markers", "  - filter", "x = 1  # two spaces", " leading", "tabs\tand\nnewlines"]
    for p in paragraphs:
        assert tok(p, add_special_tokens=False)["input_ids"] == sp.encode(p), repr(p[:60])
    assert tok("a")["input_ids"][0] == sp.bos_id()
