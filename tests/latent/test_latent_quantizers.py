"""Tests for lowbit.latent: round trips, gradients, known values, entropy terms, GQ/TDC, usage, bad input."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from lowbit.latent import BSQ, FSQ, LFQ, GaussianQuant, LatentQuantize, ResidualVQ, VectorQuantize
from lowbit.latent.gaussian import gaussian_codebook
from lowbit.latent.lfq import codebook_entropy, per_sample_entropy


def _all(dim: int = 16) -> dict[str, torch.nn.Module]:
    return {
        "vq": VectorQuantize(dim, 64),
        "vq_proj_cos": VectorQuantize(dim, 64, codebook_dim=4, distance="cosine", ema=False),
        "rvq": ResidualVQ(dim, 32, num_quantizers=3),
        "fsq": FSQ([8, 5, 5, 5], dim=dim),
        "lfq": LFQ(256, dim=dim),
        "bsq": BSQ(1 << 16, dim=dim),
        "lq": LatentQuantize(10, dim=dim),
    }


@pytest.mark.parametrize("name", list(_all()))
@pytest.mark.parametrize("channels_first", [False, True])
def test_round_trip_indices_to_codes(name: str, channels_first: bool) -> None:
    torch.manual_seed(0)
    q = _all()[name]
    q.channels_first = channels_first
    q.eval()  # no EMA update between lookup and decode
    x = torch.randn(3, 16, 5, 4) if channels_first else torch.randn(3, 5, 4, 16)
    out, idx, losses = q(x)
    assert out.shape == x.shape
    assert isinstance(losses, dict)
    assert idx.dtype == torch.long and idx.shape[:3] == (3, 5, 4)
    torch.testing.assert_close(q.indices_to_codes(idx), out, atol=1e-5, rtol=1e-5)


def test_gq_round_trip_and_indices_shape() -> None:
    torch.manual_seed(0)
    gq = GaussianQuant(dim=8, codebook_size=256, group=4, channels_first=True)
    mu, lv = torch.randn(2, 8, 3, 3), torch.randn(2, 8, 3, 3) - 2
    out, idx, _ = gq(mu, lv)
    assert idx.shape == (2, 3, 3, 2)
    torch.testing.assert_close(gq.indices_to_codes(idx), out)


@pytest.mark.parametrize("name", ["vq", "rvq", "fsq", "lfq", "bsq", "lq"])
def test_straight_through_gradient(name: str) -> None:
    torch.manual_seed(0)
    q = _all(8)[name]
    if name in ("fsq", "lfq", "bsq"):  # no projection: gradient is exactly the identity (times the bound/norm)
        q = {"fsq": FSQ([5, 5, 5, 5, 5, 5, 5, 5]), "lfq": LFQ(256), "bsq": BSQ(256)}[name]
    x = torch.randn(64, 8, requires_grad=True)
    g = torch.randn(64, 8)
    out, _, _ = q(x)
    (out * g).sum().backward()
    if name in ("vq", "rvq", "lq", "lfq"):
        torch.testing.assert_close(x.grad, g)  # d out / d x = I
    elif name == "fsq":
        z = x.detach().requires_grad_()
        (q.bound(z) / q._half_width * g).sum().backward()
        torch.testing.assert_close(x.grad, z.grad)
    else:  # BSQ: gradient of the normalisation
        z = x.detach().requires_grad_()
        (torch.nn.functional.normalize(z, dim=-1) * g).sum().backward()
        torch.testing.assert_close(x.grad, z.grad)


def test_rotation_trick_value_and_gradient() -> None:
    torch.manual_seed(0)
    q = VectorQuantize(8, 32, gradient="rotation").eval()
    x = torch.randn(50, 8, requires_grad=True)
    out, idx, _ = q(x)
    torch.testing.assert_close(out, q.embed[idx])
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert not torch.allclose(x.grad, torch.ones_like(x.grad))  # not a plain STE


def test_learnable_codebook_and_latent_values_get_gradients() -> None:
    torch.manual_seed(0)
    vq = VectorQuantize(8, 16, ema=False)
    lq = LatentQuantize([10] * 12)
    for q in (vq, lq):
        out, _, losses = q(torch.randn(32, q.dim))
        sum(losses.values()).backward()
        param = q.embed if q is vq else q.values
        assert param.grad is not None and param.grad.abs().sum() > 0


def test_fsq_grid_known_values() -> None:
    q = FSQ([3, 4])
    codes = q.indices_to_codes(torch.arange(12))
    grid = {tuple(round(v, 4) for v in row) for row in codes.tolist()}
    expected = {(a, b) for a in (-1.0, 0.0, 1.0) for b in (-1.0, -0.5, 0.0, 0.5)}
    assert grid == expected
    # quantizing the grid points (pre-bound) recovers them; large inputs saturate at the extremes
    out, idx, _ = q(torch.tensor([[100.0, 100.0], [-100.0, -100.0], [0.0, 0.0]]))
    assert out.tolist() == [[1.0, 0.5], [-1.0, -1.0], [0.0, 0.0]]
    assert q.codebook_size == 12 and idx.max() < 12


def test_fsq_index_is_mixed_radix_and_finite_check_tolerates_overflowing_sums() -> None:
    q = FSQ([8, 8, 8, 5, 5, 5])
    x = torch.randn(4096, 6) * 2
    _, idx, _ = q(x)
    level = torch.round(q.bound(x)) + q._half_width
    expected = sum(level[:, i].long() * int(q._basis[i]) for i in range(6))
    assert torch.equal(idx, expected)
    torch.testing.assert_close(q.indices_to_codes(idx), q(x)[0])
    big = torch.full((2, 6), 3e38)  # finite values whose sum overflows: no error
    assert q(big)[1].shape == (2,)


def test_lfq_signs_and_bsq_on_sphere() -> None:
    q = LFQ(8).eval()
    x = torch.tensor([[0.3, -2.0, 0.1], [-0.1, 0.5, -0.7]])
    out, idx, _ = q(x)
    assert out.tolist() == [[1.0, -1.0, 1.0], [-1.0, 1.0, -1.0]]
    assert idx.tolist() == [0b101, 0b010]  # most significant bit first
    b = BSQ(1 << 10).eval()
    out, _, _ = b(torch.randn(100, 10) * 5)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(100))
    assert torch.allclose(out.abs(), torch.full_like(out, 1 / math.sqrt(10)))


def _brute_entropies(logits_fn, z: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    codes = torch.tensor(list(itertools.product([1.0, -1.0], repeat=bits)))  # MSB first, +1 = bit set
    probs = torch.softmax(logits_fn(z, codes), dim=-1)  # tokens x K
    ps = -(probs * probs.clamp_min(1e-30).log()).sum(-1).mean()
    avg = probs.mean(0)
    return ps, -(avg * avg.clamp_min(1e-30).log()).sum()


@pytest.mark.parametrize("cls", [LFQ, BSQ])
def test_entropy_matches_brute_force(cls) -> None:
    torch.manual_seed(0)
    bits = 6
    q = cls(1 << bits, inv_temperature=2.0, entropy_group_bits=bits, entropy_chunk=16)
    z = q._prepare(torch.randn(300, bits) * 0.5)
    # q(k|z) = softmax(2 tau z . c_k) with c_k in {-s, s}^bits
    ps_b, cb_b = _brute_entropies(lambda zz, c: 2 * q.inv_temperature * zz @ (c * q.scale).t(), z, bits)
    ps, cb = q.entropy_terms(z)
    torch.testing.assert_close(ps, ps_b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cb, cb_b, atol=1e-5, rtol=1e-5)
    # grouped / factorised codebook entropy is an upper bound (subadditivity)
    a = q.bit_logits(z)
    assert codebook_entropy(a, group_bits=1) >= cb_b - 1e-5
    assert codebook_entropy(a, group_bits=3) >= cb_b - 1e-5
    # ... and exact when every token has the same distribution
    same = a[:1].expand(50, -1)
    avg_prob_entropy = per_sample_entropy(same)
    torch.testing.assert_close(codebook_entropy(same, group_bits=1), avg_prob_entropy, atol=1e-5, rtol=1e-5)


def test_entropy_gradient_matches_brute_force() -> None:
    torch.manual_seed(0)
    q = LFQ(32, inv_temperature=1.0, entropy_group_bits=5, entropy_chunk=8)
    z1 = (torch.randn(40, 5) * 0.7).requires_grad_()
    z2 = z1.detach().clone().requires_grad_()
    ps, cb = q.entropy_terms(z1)
    (ps - cb).backward()
    ps_b, cb_b = _brute_entropies(lambda zz, c: 2 * zz @ c.t(), z2, 5)
    (ps_b - cb_b).backward()
    torch.testing.assert_close(z1.grad, z2.grad, atol=1e-5, rtol=1e-4)


def test_lfq_large_codebook_no_tokens_by_k() -> None:
    q = LFQ(1 << 16).train()
    x = torch.randn(2, 512, 16, requires_grad=True)
    out, idx, losses = q(x)
    assert set(losses) == {"commitment", "entropy"}
    sum(losses.values()).backward()
    assert idx.max() < (1 << 16) and x.grad is not None


def test_gq_codebook_deterministic_from_seed() -> None:
    a = GaussianQuant(16, 1024, group=8, seed=42)
    b = GaussianQuant(16, 1024, group=8, seed=42)
    c = GaussianQuant(16, 1024, group=8, seed=7)
    assert torch.equal(a.codebook, b.codebook)
    assert not torch.equal(a.codebook, c.codebook)
    assert "codebook" not in a.state_dict()  # regenerated, not stored
    cb = gaussian_codebook(4096, 2, seed=0)
    assert abs(float(cb.mean())) < 0.01 and abs(float(cb.std()) - 1) < 0.02


def _log_normal(x: torch.Tensor, mu: torch.Tensor, sd: torch.Tensor) -> torch.Tensor:
    return torch.distributions.Normal(mu, sd).log_prob(x)


def test_gq_importance_ratio_vs_nearest_mean() -> None:
    torch.manual_seed(0)
    gq = GaussianQuant(4, 512, group=4, selection="importance")
    near = GaussianQuant(4, 512, group=4, selection="nearest")
    mu = torch.randn(200, 4)
    lv = torch.rand(200, 4) * 2 - 1.0
    _, idx, _ = gq(mu, lv)
    _, idx_n, _ = near(mu)
    cb = gq.codebook
    # brute force both rules with torch.distributions
    ratio = (
        _log_normal(cb[None], mu[:, None], (0.5 * lv).exp()[:, None]) - _log_normal(cb[None], 0.0, 1.0)
    ).sum(-1)
    assert torch.equal(idx[:, 0], ratio.argmax(1))
    assert torch.equal(idx_n[:, 0], torch.cdist(mu, cb).argmin(1))
    assert not torch.equal(idx, idx_n)  # the rules differ when sigma is not small
    # with a tiny posterior variance the importance rule reduces to nearest mean
    _, idx_t, _ = gq(mu, torch.full_like(mu, -20.0))
    assert torch.equal(idx_t, idx_n)


def test_gq_strided_groups() -> None:
    gq = GaussianQuant(8, 256, group=4, selection="nearest", strided=True)
    cont = GaussianQuant(8, 256, group=4, selection="nearest", strided=False)
    mu = torch.randn(1, 8)
    _, idx, _ = gq(mu)
    # strided: group 0 holds channels 0, 2, 4, 6
    assert idx[0, 0] == torch.cdist(mu[:, 0::2], gq.codebook).argmin()
    _, idx_c, _ = cont(mu)
    assert idx_c[0, 0] == torch.cdist(mu[:, :4], gq.codebook).argmin()


def test_tdc_weights_move_and_persist() -> None:
    gq = GaussianQuant(8, 256, group=4).train()  # target 8 bits per group
    big = torch.full((4, 8), 3.0)  # KL per group far above 8.5 bits
    lv = torch.zeros(4, 8)
    for _ in range(10):
        loss, stats = gq.tdc_loss(big, lv)
    assert stats["bits_min"] > 8.5
    assert float(gq.tdc.lam_max) == pytest.approx(1.01**10)
    assert float(gq.tdc.lam) == pytest.approx(1.01**10)
    assert float(gq.tdc.lam_min) == 1.0  # clamped at 1 from above
    small = torch.zeros(4, 8)  # KL = 0 bits: below the band
    for _ in range(5):
        gq.tdc_loss(small, lv)
    assert float(gq.tdc.lam_min) == pytest.approx(1.01**-5)
    state = gq.state_dict()
    assert {"tdc.lam", "tdc.lam_max", "tdc.lam_min"} <= set(state)
    fresh = GaussianQuant(8, 256, group=4)
    fresh.load_state_dict(state)
    assert float(fresh.tdc.lam_min) == pytest.approx(1.01**-5)
    # the weighted loss penalises groups above the band more than the plain KL
    mu = torch.full((4, 8), 3.0, requires_grad=True)
    loss, _ = fresh.eval().tdc_loss(mu, lv)
    plain = fresh.tdc.group_kl_bits(mu, lv).sum() / 4
    assert float(loss.detach()) > float(plain.detach())



def test_tdc_global_weight_does_not_cancel_lam_max() -> None:
    """Mixed batch (mean KL below target, some groups above the band): by default the above-band groups' weight
    grows with lam_max; the optional global lam shrinks with the mean and cancels it (the old default)."""
    mu = torch.zeros(4, 8)
    mu[0] = 3.0  # one token's two groups far above the 8.5-bit band, the rest at 0 bits: mean below 8
    lv = torch.zeros(4, 8)
    plain, tracked = GaussianQuant(8, 256, group=4).train(), GaussianQuant(8, 256, group=4, tdc_global_weight=True)
    tracked.train()
    for _ in range(50):
        plain.tdc_loss(mu, lv)
        tracked.tdc_loss(mu, lv)
    loss, stats = plain.eval().tdc_loss(mu, lv)  # eval: the weights stay as they are
    loss_g, _ = tracked.eval().tdc_loss(mu, lv)
    assert stats["bits_mean"] < 8.0 and stats["bits_max"] > 8.5
    kl = plain.tdc.group_kl_bits(mu, lv)
    above = kl[kl > 8.5].sum() / 4
    # lam is tracked (state_dict, statistics) but not applied by default
    assert float(plain.tdc.lam) == pytest.approx(1.01**-50)
    w = float(plain.tdc.lam_max)
    assert w == pytest.approx(1.01**50)
    assert float(loss) == pytest.approx(w * float(above) + float(plain.tdc.lam_min) * float(kl[kl < 7.5].sum() / 4))
    # applied, lam x lam_max stays ~1: the groups above the band are penalised no more than the plain KL
    assert float(loss_g) == pytest.approx(float(loss) * 1.01**-50, rel=1e-5)
    assert float(loss_g) <= float(above) * 1.0001

def test_usage_statistics() -> None:
    q = FSQ([4, 4])
    q.reset_usage()
    q(torch.randn(1000, 2) * 3)
    u = q.codebook_usage()
    assert u["used_fraction"] == 1.0 and 10 < u["perplexity"] <= 16 and u["tokens"] == 1000
    q.reset_usage()
    q(torch.zeros(10, 2))
    u = q.codebook_usage()
    assert u["used_fraction"] == 1 / 16 and u["perplexity"] == pytest.approx(1.0)
    lq = LatentQuantize([2, 4])
    lq(torch.tensor([[-1.0, -1.0], [1.0, -1.0]]))
    u = lq.codebook_usage()
    assert u["used_fraction"] == pytest.approx((2 / 2 + 1 / 4) / 2)


def test_gq_usage_is_per_group() -> None:
    """Two groups share one codebook; usage is counted per group: group 0 spread, group 1 on one code."""
    torch.manual_seed(0)
    gq = GaussianQuant(2, 16, group=1, selection="nearest")
    mu = torch.stack([torch.linspace(-3, 3, 4000), torch.zeros(4000)], dim=1)
    gq(mu)
    u = gq.codebook_usage()
    assert u["heads"] == 2 and u["tokens"] == 4000
    assert u["used_fraction"] == pytest.approx((1.0 + 1 / 16) / 2)  # pooled over groups it would be 1.0
    assert 1.0 < u["perplexity"] < (16 + 1) / 2


def test_vq_dead_code_replacement_raises_usage() -> None:
    torch.manual_seed(0)
    data = torch.randn(4096, 4) + 10.0  # far from the N(0, 1) initial codebook: most codes start dead

    def usage(threshold: float) -> float:
        q = VectorQuantize(4, 64, decay=0.8, dead_code_threshold=threshold).train()
        for _ in range(30):
            q(data[torch.randint(4096, (512,))])
        q.eval().reset_usage()
        q(data)
        return q.codebook_usage()["used_fraction"]

    assert usage(1.0) > 0.9 > usage(0.0)


def test_vq_dead_codes_revive_when_codes_outnumber_tokens() -> None:
    torch.manual_seed(0)
    data = torch.randn(50_000, 4) + 10.0  # every code of the N(0, 1) initial codebook starts dead
    q = VectorQuantize(4, 1024, decay=0.9, dead_code_threshold=1e-2).train()
    q(data[:128])
    new = q.embed[q.hits_ema == 2e-2]  # the codes replaced in that step: 128 distinct batch vectors
    assert q.replaced == 128 and new.shape[0] == 128 and torch.unique(new, dim=0).shape[0] == 128
    for _ in range(60):
        q(data[torch.randint(len(data), (128,))])
    q.eval().reset_usage()
    q(data[: 16 * 1024])
    assert q.codebook_usage()["used_fraction"] > 0.9 and q.replaced >= 1024


def test_vq_kmeans_init() -> None:
    torch.manual_seed(0)
    data = torch.cat([torch.randn(200, 2) * 0.01 + torch.tensor(c) for c in ([5.0, 5.0], [-5.0, 5.0], [0.0, -5.0])])
    q = VectorQuantize(2, 3, kmeans_init=True, ema=False).train()
    q(data)
    got = sorted(tuple(round(v) for v in row) for row in q.embed.tolist())
    assert got == [(-5, 5), (0, -5), (5, 5)]


def test_latent_quantize_product_codebook_not_materialised() -> None:
    q = LatentQuantize(10, dim=12)  # 10^12 implicit codes
    torch.testing.assert_close(q.values[0], torch.linspace(-0.5, 0.5, 10))
    out, idx, losses = q(torch.randn(8, 4, 12))
    assert set(losses) == {"quantization", "commitment"} and idx.shape == (8, 4, 12)
    mixed = LatentQuantize([2, 3, 5])
    out, idx, _ = mixed(torch.full((1, 3), 0.49))
    assert idx.tolist() == [[1, 2, 4]] and out.tolist() == [[0.5, 0.5, 0.5]]


@pytest.mark.parametrize(
    ("make", "x", "match"),
    [
        (lambda: VectorQuantize(8, 16), torch.randn(4, 7), "8 channels"),
        (lambda: FSQ([5, 5], channels_first=True), torch.randn(4, 3, 2), "channels-first"),
        (lambda: LFQ(16), torch.tensor([[0.0, float("nan"), 1.0, 2.0]]), "NaN"),
        (lambda: LatentQuantize(10, dim=3), torch.randn(5), "at least 2 dims"),
        (lambda: LFQ(16), torch.randint(0, 3, (2, 4)), "floating-point"),
    ],
)
def test_bad_input_errors(make, x, match) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        make()(x)


def test_bad_config_errors() -> None:
    with pytest.raises(ValueError, match="power of 2.*use 512 or 1024"):
        LFQ(1000)
    with pytest.raises(ValueError, match="power of 2"):
        BSQ(3)
    with pytest.raises(ValueError, match=">= 2"):
        FSQ([8, 1, 5])
    with pytest.raises(ValueError, match=">= 2"):
        LatentQuantize([10, 1])
    with pytest.raises(ValueError, match="divisible by group"):
        GaussianQuant(10, 256, group=4)
    with pytest.raises(ValueError, match="log-variance"):
        GaussianQuant(8, 256, group=4)(torch.randn(2, 8))
    with pytest.raises(ValueError, match="num_quantizers"):
        ResidualVQ(8, 16, num_quantizers=2).indices_to_codes(torch.zeros(3, 5, dtype=torch.long))
