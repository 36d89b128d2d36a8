"""QLAE and baselines: optimiser groups, losses, latents, traversals, CLI (tiny models)."""

import json

import numpy as np
import pytest
import torch

from lowbit.cli import main
from lowbit.errors import LowbitError
from lowbit.latent.qlae import (
    MODELS,
    DisentangleAE,
    GlobalLatentQuantize,
    QLAEConfig,
    _param_groups,
    encode,
    train,
    traverse,
)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBIT_CACHE_DIR", str(tmp_path))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convs: threads only add contention on a shared machine
    yield
    torch.set_num_threads(threads)


def _images(n=64):
    from lowbit.data import sprites

    return sprites(n, seed=5, cache=False)


def test_qlae_defaults_follow_the_paper():
    cfg = QLAEConfig(model="qlae", n_factors=5)
    assert cfg.n_latents == 10 and cfg.values_per_latent == 10 and cfg.weight_decay == 0.1
    assert (cfg.lr, cfg.clip, cfg.batch_size) == (1e-3, 1, 128)
    assert (cfg.quantization_weight, cfg.commitment_weight) == (0.01, 0.01)
    net = DisentangleAE(cfg)
    vals = net.quantizer.values
    assert vals.shape == (10, 10) and torch.allclose(vals[0], torch.linspace(-0.5, 0.5, 10))
    decay, no_decay = _param_groups(net, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert any(p is vals for p in no_decay["params"]) and not any(p is vals for p in decay["params"])
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"] if p is not vals)
    assert QLAEConfig(model="qlae_nowd").weight_decay == 0.0
    with pytest.raises(LowbitError):
        QLAEConfig(model="nope")


def test_every_model_trains_and_encodes():
    images, _ = _images(16)
    for m in MODELS:
        cfg = QLAEConfig(model=m, n_factors=2, width=2, batch_size=4, seconds=0, max_steps=1, vq_codebook=16)
        net, log = train(cfg, images, progress=False)
        assert log["steps"] == 1
        lat, bce, discrete = encode(net, images[:8])
        assert lat.shape == (8, 4) and bce > 0 and discrete == (m not in ("ae", "vae"))
        if discrete:
            assert lat.dtype == np.int64
        grid = traverse(net, images[0], lat, steps=3)
        assert grid.shape == (4, 3, 64, 64) and 0 <= grid.min() and grid.max() <= 1


def test_qlae_training_lowers_the_loss_and_moves_the_values():
    images, _ = _images(256)
    cfg = QLAEConfig(model="qlae", width=8, batch_size=32, lr=5e-3, seconds=0, max_steps=20)
    torch.manual_seed(cfg.seed)
    init = DisentangleAE(cfg)  # train() seeds the same way, so this is its initial model
    net, _ = train(cfg, images, progress=False)
    assert encode(net, images)[1] < 0.8 * encode(init, images)[1]  # BCE per image, ~2840 at init
    assert not torch.equal(net.quantizer.values.detach(), init.quantizer.values.detach())


def test_global_codebook_is_shared():
    q = GlobalLatentQuantize(10, 0.01, 0.01)
    z = torch.tensor([[0.5, -0.5, 0.04]], requires_grad=True)
    out, idx, losses = q(z)
    assert idx.tolist() == [[9, 0, 5]] and torch.allclose(out, torch.tensor([[0.5, -0.5, 1 / 18]]))
    (out.sum() + sum(losses.values())).backward()
    assert torch.allclose(z.grad, torch.ones(1, 3) + 0.02 * (z - q.values[idx]).detach() / 3, atol=1e-6)


def test_cli_disentangle(capsys, tmp_path):
    rc = main(["disentangle", "--model", "qlae", "--seed", "1", "--max-steps", "2", "--n-train", "64", "--n-eval",
               "200", "--width", "4", "--json", "--out", str(tmp_path / "o")])
    assert rc == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["model"] == "qlae" and row["steps"] == 2 and {"infom", "infoe", "infoc", "mig", "dci_d"} <= set(row)
    assert (tmp_path / "o" / "sprites-qlae-seed1-traversal.png").exists()
    assert main(["disentangle", "--model", "nope", "--max-steps", "1"]) == 2
    assert "unknown model" in capsys.readouterr().err


def test_colour_images_train():
    from lowbit.data import shapes

    images, factors = shapes(8, seed=0, cache=False)
    cfg = QLAEConfig(model="qlae", n_factors=factors.shape[1], channels=3, width=2, batch_size=4, seconds=0,
                     max_steps=1)
    net, _ = train(cfg, images, progress=False)
    lat, bce, discrete = encode(net, images)
    assert lat.shape == (8, 12) and discrete and bce > 0
    assert traverse(net, images[0], lat, steps=2).shape == (12, 2, 64, 64, 3)
