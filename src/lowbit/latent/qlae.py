"""QLAE and baselines for disentanglement (Hsu et al., 2023, "Disentanglement via Latent Quantization").

Models share one convolutional encoder/decoder for 64x64 images and differ in the latent layer:

* ``ae``: continuous latents, AdamW weight decay 0.001 (the reference code's AE setting);
* ``vae``: beta-VAE (Higgins et al., 2017), Gaussian posterior, ``beta * KL`` (default beta 4);
* ``qlae``: ``LatentQuantize`` with 10 learnable values per latent, loss = BCE + 0.01 quantization + 0.01 commitment,
  AdamW weight decay 0.1 on weights only (not biases, not codebook values);
* ablations ``qlae_nowd`` (no weight decay), ``qlae_global`` (one 10-value codebook shared by all latents),
  ``vqvae`` (each latent is a 16-d token quantized against one shared 512-entry VQ codebook: EMA updates,
  commitment 0.25).

Number of latents defaults to twice the number of factors; lr 1e-3, gradient clipping 1, batch 128. Training
runs for a wall-clock budget (and/or a step count) with a tqdm bar whose ETA is the time budget.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lowbit.errors import LowbitError
from lowbit.quantizers.ste import straight_through

from .latent_quantize import LatentQuantize
from .vq import VectorQuantize

__all__ = ["MODELS", "QLAEConfig", "DisentangleAE", "GlobalLatentQuantize", "train", "encode", "traverse", "run",
           "load_images", "save_traversal"]

MODELS = ("ae", "vae", "qlae", "qlae_nowd", "qlae_global", "vqvae")
_DEFAULT_WD = {"ae": 1e-3, "vae": 1e-3, "qlae": 0.1, "qlae_nowd": 0.0, "qlae_global": 0.1, "vqvae": 0.01}


@dataclass
class QLAEConfig:
    """Model and training settings (defaults are the QLAE paper's)."""

    model: str = "qlae"
    n_factors: int = 5
    n_latents: int | None = None  # default: 2 x n_factors
    channels: int = 1
    width: int = 32
    values_per_latent: int = 10
    quantization_weight: float = 0.01
    commitment_weight: float = 0.01
    beta: float = 4.0
    vq_codebook: int = 512
    vq_dim: int = 16
    head_gain: float = 5.0  # init scale of the encoder's last layer (initial latent std ~0.25 instead of ~0.05)
    lr: float = 1e-3
    weight_decay: float | None = None  # default per model (_DEFAULT_WD)
    batch_size: int = 128
    clip: float = 1.0
    seconds: float = 120.0
    max_steps: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise LowbitError(f"unknown model {self.model!r}; choose one of {', '.join(MODELS)}")
        if self.n_latents is None:
            self.n_latents = 2 * self.n_factors
        if self.weight_decay is None:
            self.weight_decay = _DEFAULT_WD[self.model]
        if self.n_latents < 1 or self.width < 1 or self.batch_size < 1:
            raise LowbitError("n_latents, width and batch_size must be positive")
        if self.seconds <= 0 and not self.max_steps:
            raise LowbitError("give a positive time budget (seconds/minutes) or max_steps")


class GlobalLatentQuantize(nn.Module):
    """Ablation: one learnable scalar codebook shared by every latent dimension (QLAE's 'global codebook')."""

    def __init__(self, n_values: int, quantization_weight: float, commitment_weight: float) -> None:
        super().__init__()
        self.values = nn.Parameter(torch.linspace(-0.5, 0.5, n_values))
        self.qw, self.cw = quantization_weight, commitment_weight

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Quantize z (batch, dim) to the nearest shared value; returns (quantized, indices, losses)."""
        with torch.no_grad():
            idx = (z.detach()[..., None] - self.values).abs().argmin(dim=-1)
        zq = self.values[idx]
        losses = {
            "quantization": self.qw * (z.detach() - zq).square().mean(),
            "commitment": self.cw * (z - zq.detach()).square().mean(),
        }
        return straight_through(z, zq), idx, losses


def _conv_block(cin: int, cout: int) -> list[nn.Module]:
    """Stride-2 conv, instance norm, leaky ReLU (the reference encoder's block, fewer layers)."""
    return [nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.InstanceNorm2d(cout, affine=True), nn.LeakyReLU(0.01)]


def _encoder(c: int, w: int, out: int) -> nn.Sequential:
    return nn.Sequential(
        *_conv_block(c, w), *_conv_block(w, w), *_conv_block(w, 2 * w), *_conv_block(2 * w, 2 * w),
        nn.Flatten(), nn.Linear(2 * w * 16, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, out),
    )


def _decoder(c: int, w: int, inp: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(inp, 256), nn.ReLU(), nn.Linear(256, 2 * w * 16), nn.ReLU(), nn.Unflatten(1, (2 * w, 4, 4)),
        nn.ConvTranspose2d(2 * w, 2 * w, 4, 2, 1), nn.ReLU(),
        nn.ConvTranspose2d(2 * w, w, 4, 2, 1), nn.ReLU(),
        nn.ConvTranspose2d(w, w, 4, 2, 1), nn.ReLU(),
        nn.ConvTranspose2d(w, c, 4, 2, 1),
    )


class DisentangleAE(nn.Module):
    """Conv autoencoder for 64x64 images with a selectable latent layer (see the module docstring)."""

    def __init__(self, cfg: QLAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        k, L = cfg.model, cfg.n_latents
        self.discrete = k.startswith("qlae") or k == "vqvae"
        enc_out = 2 * L if k == "vae" else (L * cfg.vq_dim if k == "vqvae" else L)
        dec_in = L * cfg.vq_dim if k == "vqvae" else L
        self.encoder = _encoder(cfg.channels, cfg.width, enc_out)
        with torch.no_grad():  # spread the initial latents over the value range (else all images share one code)
            self.encoder[-1].weight.mul_(cfg.head_gain)
        self.decoder = _decoder(cfg.channels, cfg.width, dec_in)
        self.quantizer: nn.Module | None = None
        if k in ("qlae", "qlae_nowd"):
            self.quantizer = LatentQuantize(cfg.values_per_latent, dim=L, quantization_weight=cfg.quantization_weight,
                                            commitment_weight=cfg.commitment_weight, track_usage=False)
        elif k == "qlae_global":
            self.quantizer = GlobalLatentQuantize(cfg.values_per_latent, cfg.quantization_weight,
                                                  cfg.commitment_weight)
        elif k == "vqvae":
            self.quantizer = VectorQuantize(cfg.vq_dim, cfg.vq_codebook, commitment_weight=0.25, track_usage=False)

    def latent(self, x: Tensor, sample: bool = False) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Encode x: returns (decoder input, latents for the metrics, losses)."""
        h = self.encoder(x)
        k, L = self.cfg.model, self.cfg.n_latents
        if k == "ae":
            return h, h, {}
        if k == "vae":
            mu, logvar = h[:, :L], h[:, L:].clamp(-30, 20)
            kl = 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(1).mean()
            z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if sample else mu
            return z, mu, {"kl": self.cfg.beta * kl / x[0].numel()}  # per pixel, like the mean BCE
        if k == "vqvae":
            q, idx, losses = self.quantizer(h.view(-1, L, self.cfg.vq_dim))
            return q.reshape(x.shape[0], -1), idx, losses
        q, idx, losses = self.quantizer(h)
        return q, idx, losses

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Reconstruction logits and the loss terms (BCE mean over pixels plus the latent layer's terms)."""
        z, _, losses = self.latent(x, sample=self.training)
        logits = self.decoder(z)
        return logits, {"bce": F.binary_cross_entropy_with_logits(logits, x), **losses}

    def decode_latents(self, codes: Tensor) -> Tensor:
        """Decode metric latents (continuous values, or indices for discrete models) to images in [0, 1]."""
        k = self.cfg.model
        if k in ("qlae", "qlae_nowd"):
            z = self.quantizer.indices_to_codes(codes.long())
        elif k == "qlae_global":
            z = self.quantizer.values[codes.long()]
        elif k == "vqvae":
            z = self.quantizer.indices_to_codes(codes.long()).reshape(codes.shape[0], -1)
        else:
            z = codes.float()
        return torch.sigmoid(self.decoder(z))


def _to_batch(images: np.ndarray, idx: np.ndarray) -> Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images[idx]))
    if x.ndim == 3:  # (n, 64, 64) binary sprites
        return x[:, None].float()
    return x.permute(0, 3, 1, 2).float() / 255.0  # (n, 64, 64, 3) uint8 colour images


def _param_groups(model: DisentangleAE, wd: float) -> list[dict]:
    """Weight decay on encoder/decoder weights only: not on biases, not on quantizer (codebook) parameters."""
    q_ids = {id(p) for p in model.quantizer.parameters()} if model.quantizer is not None else set()
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if id(p) in q_ids or p.ndim < 2 else decay).append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


def train(cfg: QLAEConfig, images: np.ndarray, progress: bool = True) -> tuple[DisentangleAE, dict]:
    """Train a model on uint8 images for cfg.seconds (and/or cfg.max_steps); returns (model, training log)."""
    if images.ndim not in (3, 4) or images.shape[1] != 64 or images.shape[2] != 64:
        raise LowbitError(f"expected 64x64 images (n, 64, 64) or (n, 64, 64, 3), got {images.shape}")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = DisentangleAE(cfg)
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr)
    from tqdm.auto import tqdm

    budget = cfg.seconds if cfg.seconds > 0 else math.inf
    bar = tqdm(total=round(budget) if math.isfinite(budget) else cfg.max_steps, disable=not progress,
               unit="s" if math.isfinite(budget) else "step", desc=cfg.model, leave=False,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}] {postfix}")
    model.train()
    step, start, log, ema = 0, time.perf_counter(), [], None
    perm, pos = rng.permutation(images.shape[0]), 0
    while True:
        elapsed = time.perf_counter() - start
        if elapsed >= budget or (cfg.max_steps and step >= cfg.max_steps):
            break
        if pos + cfg.batch_size > perm.shape[0]:
            perm, pos = rng.permutation(images.shape[0]), 0
        x = _to_batch(images, perm[pos:pos + cfg.batch_size])
        pos += cfg.batch_size
        _, losses = model(x)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise LowbitError(f"{cfg.model}: loss became {float(loss)} at step {step}; lower the learning rate")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        opt.step()
        step += 1
        bce = float(losses["bce"].detach())
        ema = bce if ema is None else 0.98 * ema + 0.02 * bce
        if step % 50 == 0:
            log.append((step, round(time.perf_counter() - start, 2), bce))
        if math.isfinite(budget):
            bar.n = min(round(time.perf_counter() - start), bar.total)
        else:
            bar.n = step
        bar.set_postfix_str(f"step {step} bce {ema:.4f}", refresh=step % 10 == 0)
    bar.close()
    model.eval()
    return model, {"steps": step, "seconds": time.perf_counter() - start, "bce_ema": ema, "curve": log,
                   "config": asdict(cfg)}


@torch.no_grad()
def encode(model: DisentangleAE, images: np.ndarray, batch: int = 512) -> tuple[np.ndarray, float, bool]:
    """Metric latents for images (indices for discrete models), mean reconstruction BCE per image, discrete flag."""
    model.eval()
    lat, bce = [], 0.0
    for s in range(0, images.shape[0], batch):
        x = _to_batch(images, np.arange(s, min(images.shape[0], s + batch)))
        z, codes, _ = model.latent(x)
        logits = model.decoder(z)
        bce += float(F.binary_cross_entropy_with_logits(logits, x, reduction="sum"))
        lat.append(codes.reshape(x.shape[0], -1).cpu().numpy())
    return np.concatenate(lat), bce / images.shape[0], model.discrete


@torch.no_grad()
def traverse(model: DisentangleAE, image: np.ndarray, latents: np.ndarray, steps: int = 10) -> np.ndarray:
    """Latent traversals: (n_latents, steps, H, W[, C]) images varying one latent of `image`'s code at a time.

    Continuous latents sweep the 2nd-98th percentile of ``latents`` (the data's codes); discrete ones take the
    values seen in ``latents`` (for QLAE all of a dimension's values), evenly subsampled to ``steps``.
    """
    model.eval()
    base = model.latent(_to_batch(image[None], np.array([0])))[1].reshape(1, -1)
    rows = []
    for j in range(base.shape[1]):
        if model.discrete:
            vals = np.unique(latents[:, j])
            vals = vals[np.linspace(0, len(vals) - 1, min(steps, len(vals))).round().astype(int)]
        else:
            lo, hi = np.percentile(latents[:, j], [2, 98])
            vals = np.linspace(lo, hi, steps)
        codes = base.repeat(len(vals), 1).to(torch.float64)
        codes[:, j] = torch.from_numpy(np.asarray(vals, dtype=np.float64))
        imgs = model.decode_latents(codes.to(base.dtype) if not model.discrete else codes.long())
        imgs = imgs.permute(0, 2, 3, 1).squeeze(-1).numpy()
        if len(vals) < steps:  # pad rows of dimensions with fewer values
            imgs = np.concatenate([imgs, np.zeros((steps - len(vals), *imgs.shape[1:]), imgs.dtype)])
        rows.append(imgs)
    return np.stack(rows)


def load_images(data: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(images, factors) of the offline dataset `data` ('sprites' or 'shapes')."""
    from lowbit.data import shapes, sprites

    if data == "sprites":
        return sprites(n, seed)
    if data == "shapes":
        return shapes(n, seed)
    raise LowbitError(f"unknown dataset {data!r}; choose 'sprites' or 'shapes'")


def run(model: str, data: str = "sprites", seed: int = 0, seconds: float = 120.0, n_train: int = 100_000,
        n_eval: int = 10_000, width: int = 16, progress: bool = True, **overrides) -> tuple[dict, DisentangleAE, dict]:
    """Train one model on offline data and evaluate it: (metrics row, model, extras for plots).

    Training images: ``load_images(data, n_train, seed)``; evaluation: ``n_eval`` images with seed 10,000 + seed.
    """
    from lowbit.eval.disentanglement import dci, infomec, mig

    images, factors = load_images(data, n_train, seed)
    ev_images, ev_factors = load_images(data, n_eval, 10_000 + seed)
    cfg = QLAEConfig(model=model, n_factors=factors.shape[1], channels=3 if images.ndim == 4 else 1, width=width,
                     seconds=seconds, seed=seed, **overrides)
    net, log = train(cfg, images, progress=progress)
    lat, bce, discrete = encode(net, ev_images)
    t0 = time.perf_counter()
    info = infomec(ev_factors, lat, discrete, seed=seed)
    info_s = time.perf_counter() - t0
    d = dci(ev_factors, lat, seed=seed)
    row = {
        "model": model, "data": data, "seed": seed, "steps": log["steps"], "train_s": round(log["seconds"], 1),
        "recon_bce": bce, "infom": info["infom"], "infoe": info["infoe"], "infoc": info["infoc"],
        "mig": mig(ev_factors, lat, discrete), "dci_d": d["disentanglement"], "dci_c": d["completeness"],
        "dci_i": d["informativeness"], "active": int(info["active"].sum()), "infomec_s": round(info_s, 2),
        "n_train": n_train, "n_eval": n_eval, "width": width,
    }
    return row, net, {"images": ev_images, "latents": lat, "nmi": info["nmi"], "log": log}


def save_traversal(path: str, grid: np.ndarray, title: str = "") -> None:
    """Write a traversal grid (latents, steps, H, W[, C]) as a PNG (atomically)."""
    import os

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = grid.shape[:2]
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.8, rows * 0.8 + 0.4), squeeze=False)
    for i in range(rows):
        for j in range(cols):
            axes[i, j].imshow(grid[i, j], cmap="gray" if grid.ndim == 4 else None, vmin=0, vmax=1)
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
        axes[i, 0].set_ylabel(f"z{i}", rotation=0, labelpad=12, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    tmp = f"{path}.tmp{os.getpid()}.png"
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)
