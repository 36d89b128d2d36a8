"""InfoMEC, MIG, DCI on constructed latents whose answer is known."""

import numpy as np
import pytest

from lowbit.errors import LowbitError
from lowbit.eval.disentanglement import active_latents, dci, infomec, mig, nmi_matrix

N = 2000


@pytest.fixture(scope="module")
def factors():
    rng = np.random.default_rng(0)
    return np.stack([rng.integers(0, k, N) for k in (3, 6, 10, 8)], axis=1)


def test_perfect_discrete_code_scores_one(factors):
    z = np.concatenate([factors * 7 + 1, np.zeros((N, 4), dtype=int)], axis=1)  # 4 dead latents are ignored
    r = infomec(factors, z, discrete_latents=True)
    assert r["active"].tolist() == [True] * 4 + [False] * 4
    assert np.allclose(np.diag(r["nmi"][:, :4]), 1.0)
    assert r["infom"] > 0.95 and r["infoc"] > 0.95 and r["infoe"] > 0.99
    assert mig(factors, z, discrete_latents=True) > 0.95
    d = dci(factors, z)
    assert d["disentanglement"] > 0.95 and d["completeness"] > 0.9 and d["informativeness"] > 0.99


def test_perfect_continuous_code_scores_one(factors):
    rng = np.random.default_rng(1)
    z = factors * np.array([1.0, -2.0, 0.5, 3.0]) + 0.01 * rng.standard_normal(factors.shape)
    r = infomec(factors, z, discrete_latents=False)
    assert r["infom"] > 0.95 and r["infoc"] > 0.95 and r["infoe"] > 0.99
    assert mig(factors, z) > 0.8


def test_random_code_carries_no_information(factors):
    rng = np.random.default_rng(2)
    zd = rng.integers(0, 10, (N, 8))
    rd = infomec(factors, zd, discrete_latents=True)
    assert rd["nmi"].max() < 0.05 and rd["infoe"] < 0.08 and rd["infoc"] < 0.15
    zc = rng.standard_normal((N, 8))
    rc = infomec(factors, zc, discrete_latents=False)
    assert rc["nmi"].max() < 0.05 and rc["infoe"] < 0.05
    assert mig(factors, zc) < 0.05 and dci(factors, zc)["informativeness"] < 0.3


def test_permutation_and_scaling_invariance(factors):
    rng = np.random.default_rng(3)
    z = np.stack([factors[:, 0] + factors[:, 1], factors[:, 1], factors[:, 2] * 2.0, factors[:, 3], factors[:, 3] ** 2],
                 axis=1) + 0.05 * rng.standard_normal((N, 5))
    perm = np.array([3, 0, 4, 2, 1])
    a = infomec(factors, z, False)
    b = infomec(factors, z[:, perm] * 3.0 - 1.0, False)
    for k in ("infom", "infoc", "infoe"):
        assert b[k] == pytest.approx(a[k], abs=0.02)
    assert np.allclose(a["nmi"][:, perm], b["nmi"], atol=0.02)
    zd = np.round(z).astype(int)
    assert infomec(factors, zd[:, perm], True)["infom"] == pytest.approx(infomec(factors, zd, True)["infom"], abs=1e-9)


def test_entangled_code_scores_lower(factors):
    rng = np.random.default_rng(4)
    mix = rng.standard_normal((4, 4))
    z = factors @ mix + 0.01 * rng.standard_normal((N, 4))
    r = infomec(factors, z, False)
    perfect = infomec(factors, factors + 0.01 * rng.standard_normal(factors.shape), False)
    assert r["infom"] < perfect["infom"] - 0.2 and r["infoc"] < perfect["infoc"] - 0.2


def test_active_latent_rule():
    z = np.stack([np.linspace(0, 10, 100), np.linspace(0, 0.4, 100), np.linspace(0, 0.6, 100)], axis=1)
    assert active_latents(z, False).tolist() == [True, False, True]
    assert active_latents(np.array([[1, 0], [1, 2]] * 10), True).tolist() == [False, True]


def test_bad_input(factors):
    with pytest.raises(LowbitError):
        infomec(factors, np.zeros((N - 1, 2)), True)
    with pytest.raises(LowbitError):
        infomec(factors, np.full((N, 2), np.nan), False)
    dead = infomec(factors, np.zeros((N, 3), dtype=int), True)  # every latent constant: a collapsed encoder
    assert (dead["infom"], dead["infoe"], dead["infoc"]) == (0.0, 0.0, 0.0) and not dead["active"].any()
    assert nmi_matrix(factors, factors, True).shape == (4, 4)
