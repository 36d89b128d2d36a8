"""Fast Walsh-Hadamard transform and QuaRot-style rotation: orthogonality, sizes m * 2^k, exact fp function."""

import pytest
import torch
import transformers as tf

from lowbit.errors import LowbitError
from lowbit.models import family_for
from lowbit.ptq.rotation import rotate_model
from lowbit.quantizers.activation import registry
from lowbit.quantizers.hadamard import factor, fwht, hadamard_matrix, random_hadamard


@pytest.mark.parametrize("n", [1, 2, 64, 12, 20, 28, 36, 48, 768, 1536])
def test_hadamard_is_orthonormal_with_entries_of_one_magnitude(n):
    M = hadamard_matrix(n).double()
    assert torch.allclose(M @ M.T, torch.eye(n, dtype=M.dtype), atol=1e-5)
    assert torch.allclose(M.abs() * n ** 0.5, torch.ones_like(M), atol=1e-4)  # +-1 / sqrt(n)


def test_fwht_matches_the_kronecker_product():
    m, p = factor(768)
    assert (m, p) == (12, 64)
    Hm = hadamard_matrix(m) * m ** 0.5
    Hp = hadamard_matrix(p) * p ** 0.5
    x = torch.randn(5, 768, dtype=torch.float64)
    assert torch.allclose(fwht(x), x @ torch.kron(Hm, Hp).double() / 768 ** 0.5, atol=1e-10)
    assert torch.allclose(fwht(x) @ hadamard_matrix(768).double().T, x, atol=1e-5)  # inverse = transpose


def test_random_hadamard_is_orthogonal_and_seeded():
    a, b = random_hadamard(96, seed=1), random_hadamard(96, seed=2)
    assert torch.allclose(a @ a.T, torch.eye(96), atol=1e-5)
    assert not torch.allclose(a, b)


def test_unknown_hadamard_size_is_a_clear_error():
    with pytest.raises(LowbitError, match="no Hadamard matrix"):
        factor(172)  # 43 * 4: Paley gives no matrix of order 172


def _tiny(hidden: int, inter: int, heads: int, kind=tf.LlamaConfig, **kw):
    torch.manual_seed(0)
    cfg = kind(vocab_size=300, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=2,
               num_attention_heads=heads, num_key_value_heads=heads // 2, max_position_embeddings=64, **kw)
    model = tf.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 2.0)  # non-trivial norm scales, so that fusing them is tested
    return model


@pytest.mark.parametrize("hidden,inter,heads,kind,kw", [
    (64, 128, 4, tf.LlamaConfig, {}),
    (48, 96, 4, tf.LlamaConfig, {}),  # 48 = 12 * 4, 96 = 12 * 8, head_dim 12: Kronecker with Paley's H_12
    (64, 128, 4, tf.Qwen3Config, {"head_dim": 16}),
])
def test_rotated_model_computes_the_same_function(hidden, inter, heads, kind, kw):
    model = _tiny(hidden, inter, heads, kind, **kw)
    ids = torch.randint(0, 300, (2, 40))
    with torch.no_grad():
        before = model(input_ids=ids).logits
    rotate_model(model, family_for(model.config.model_type))
    with torch.no_grad():
        after = model(input_ids=ids).logits
    assert ((after - before).norm() / before.norm()).item() < 1e-4
    assert any(t.hadamard for t in registry(model).values())
    emb = model.get_input_embeddings().weight
    assert emb.abs().amax() / emb.abs().mean() < 25  # the rotation spreads channels


def test_encoders_get_the_online_rotation_with_the_same_function(tiny_models):
    from lowbit.models import load_model

    bert = load_model(tiny_models["bert"])
    ids = torch.randint(0, bert.model.config.vocab_size, (2, 24))
    with torch.no_grad():
        before = bert.model(input_ids=ids).last_hidden_state
    w0 = {n: m.weight.clone() for n, m in bert.model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert rotate_model(bert.model, bert.family, prefix="encoder.layer") == "online"
    with torch.no_grad():
        after = bert.model(input_ids=ids).last_hidden_state
    assert ((after - before).norm() / before.norm()).item() < 1e-4
    rotated = {n for n, t in registry(bert.model).items() if t.hadamard}
    changed = {n for n, m in bert.model.named_modules() if n in w0 and not torch.equal(m.weight, w0[n])}
    assert rotated == changed and len(rotated) == 6 * bert.model.config.num_hidden_layers  # q k v o up down


def test_rotation_refuses_residual_mode_on_encoders(tiny_models):
    from lowbit.models import load_model

    bert = load_model(tiny_models["bert"])
    with pytest.raises(LowbitError, match="pre-norm decoder"):
        rotate_model(bert.model, bert.family, mode="residual")
    with pytest.raises(LowbitError, match="unknown rotate mode"):
        rotate_model(bert.model, bert.family, mode="spin")


def test_rotation_unties_tied_embeddings_and_keeps_the_function(capsys):
    tied = _tiny(64, 128, 4, tie_word_embeddings=True)
    ids = torch.randint(0, tied.config.vocab_size, (2, 12))
    with torch.no_grad():
        before = tied(input_ids=ids).logits
    assert rotate_model(tied, family_for("llama")) == "residual"
    assert "unties the LM head" in capsys.readouterr().err
    assert tied.lm_head.weight is not tied.model.embed_tokens.weight and not tied.config.tie_word_embeddings
    with torch.no_grad():
        after = tied(input_ids=ids).logits
    assert ((after - before).norm() / before.norm()).item() < 1e-4


def test_rotation_keeps_embeddings_tied_when_the_final_norm_is_ones(capsys):
    tied = _tiny(64, 128, 4, tie_word_embeddings=True)
    with torch.no_grad():
        tied.model.norm.weight.fill_(1.0)
    ids = torch.randint(0, tied.config.vocab_size, (2, 12))
    with torch.no_grad():
        before = tied(input_ids=ids).logits
    rotate_model(tied, family_for("llama"))
    assert "unties" not in capsys.readouterr().err and tied.lm_head.weight is tied.model.embed_tokens.weight
    with torch.no_grad():
        after = tied(input_ids=ids).logits
    assert ((after - before).norm() / before.norm()).item() < 1e-4
