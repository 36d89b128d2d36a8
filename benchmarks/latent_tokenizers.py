"""Latent tokenizers benchmark: every lowbit.latent quantizer at 8, 12 and 16 bits per token, several seeds.

(a) Quality. A small convolutional autoencoder on two offline datasets:
    * patches: 32x32 grayscale crops (with flips) of 12 scikit-image sample images; test: 3 held-out
      images (camera, chelsea, gravel) tiled into patches and reassembled; 4x4 tokens per patch;
    * digits: scikit-learn's 8x8 digits (first 1500 train, last 297 test); 2x2 tokens per digit.
    Quantizers at the same bits per token: VQ (EMA, dead-code replacement), FSQ (the paper's levels), LFQ,
    BSQ, ResidualVQ (2 stages of 2^(bits/2)), LatentQuantize (4 values per dimension) and GQ: a Gaussian VAE
    trained with TDC (target log2 K bits per group of 16 channels), then coded by GaussianQuant without further
    training; GQ2 / GQ4 split the 16 channels into 2 / 4 groups with K = 2^(bits/2) / 2^(bits/4) codes each.
    Same encoder, decoder, optimiser, batch and steps for all. PSNR and SSIM on the test images,
    code usage (fraction used, perplexity) over the same 262,144 training tokens at every rate (``--usage-max``;
    ``--usage-factor`` caps it at a multiple of K) where the data
    has that many (with the cap 1 - exp(-N/K) a uniform code would reach), train time.
(b) Speed and memory against vector-quantize-pytorch: benchmarks/latent_speed.py, run in the same process.

Ends with one JSON line of headline figures. ``--quick``: one seed, short training, fewer repeats.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import latent_speed  # noqa: E402

from lowbit.latent import BSQ, FSQ, LFQ, GaussianQuant, LatentQuantize, ResidualVQ, VectorQuantize  # noqa: E402
from lowbit.latent.common import histogram_usage  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TRAIN_IMAGES = [
    "astronaut", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "coins",
    "moon", "page", "text", "grass", "brick", "retina",
]  # fmt: skip
TEST_IMAGES = ["camera", "chelsea", "gravel"]
QUANTIZERS = ("VQ", "FSQ", "LFQ", "BSQ", "GQ", "GQ2", "GQ4", "RVQ", "LQ", "LFQ-peer")
# "LFQ-peer": vector-quantize-pytorch's LFQ with the same settings as "LFQ", in the same training (a check that
# what LFQ does here is LFQ's, not our implementation's); not in the default run.
# GQ variants at the same bits per token: "GQ" one group of 16 channels with K = 2^bits; "GQ2" 2 groups of 8
# with K = 2^(bits/2) each; "GQ4" 4 groups of 4 with K = 2^(bits/4) (the GQ paper varies the group at fixed K).
GQ_GROUPS = {"GQ": 1, "GQ2": 2, "GQ4": 4}
FSQ_LEVELS = {8: [8, 6, 5], 10: [8, 5, 5, 5], 12: [7, 5, 5, 5, 5], 14: [8, 8, 8, 6, 5], 16: [8, 8, 8, 5, 5, 5]}
GQ_CHANNELS = 16
# The same for every quantizer (and for GQ's VAE). Patches: 2000 since 2026-12-02 (was 500): TDC moves its
# weights by 1.01 a step and needs ~700 steps to reach its clamps; at 500 GQ's VAE carried ~10 of 16 bits.
STEPS = {"patches": 2000, "digits": 400}
BATCH = {"patches": 32, "digits": 64}
SIGMA_X = 0.15  # the Gaussian VAE's pixel noise scale (its likelihood weight); --gq-sigma overrides it
# VQ/RVQ: a code is dead (and replaced) while its EMA hits per step are below this share of a uniform code's
# (tokens per step / K). A fixed 1e-3 kept codes hit once in ~200 steps alive: VQ used 36% of 256 codes on digits.
DEAD_SHARE = 0.25


# ----------------------------------------------------------------------------- data
def load_gray(name: str) -> np.ndarray:
    """A scikit-image sample image as float32 grayscale in [0, 1], halved when larger than 1000 px."""
    import skimage.data
    from skimage.color import rgb2gray
    from skimage.transform import rescale

    im = getattr(skimage.data, name)()
    im = rgb2gray(im[..., :3]) if im.ndim == 3 else im.astype(np.float64) / 255.0
    if max(im.shape) > 1000:
        im = rescale(im, 0.5, anti_aliasing=True)
    return im.astype(np.float32)


class Patches:
    """32x32 crops of scikit-image samples; test images tiled into patches (4x4 tokens per patch)."""

    name, size, downsamples = "patches", 32, 3

    def __init__(self) -> None:
        self.train_images = [torch.from_numpy(load_gray(n)) for n in TRAIN_IMAGES]
        self.test_images = [load_gray(n) for n in TEST_IMAGES]

    def sample(self, n: int, g: torch.Generator) -> torch.Tensor:
        """n random training crops (with horizontal flips)."""
        p, out = self.size, torch.empty(n, 1, self.size, self.size)
        which = torch.randint(len(self.train_images), (n,), generator=g).tolist()
        for i, w in enumerate(which):
            im = self.train_images[w]
            y = int(torch.randint(im.shape[0] - p + 1, (1,), generator=g))
            x = int(torch.randint(im.shape[1] - p + 1, (1,), generator=g))
            crop = im[y : y + p, x : x + p]
            out[i, 0] = crop.flip(1) if bool(torch.rand(1, generator=g) < 0.5) else crop
        return out

    def test_sets(self) -> list[tuple[torch.Tensor, tuple[int, int]]]:
        """Each test image cut into patches, with its cropped size for reassembly."""
        p, sets = self.size, []
        for im in self.test_images:
            h, w = (im.shape[0] // p) * p, (im.shape[1] // p) * p
            t = torch.from_numpy(im[:h, :w]).reshape(h // p, p, w // p, p).permute(0, 2, 1, 3)
            sets.append((t.reshape(-1, 1, p, p), (h, w)))
        return sets

    def assemble(self, patches: torch.Tensor, hw: tuple[int, int]) -> list[np.ndarray]:
        """Patches back into one image."""
        (h, w), p = hw, self.size
        return [patches.reshape(h // p, w // p, p, p).permute(0, 2, 1, 3).reshape(h, w).numpy()]

    def usage_pool(self, tokens: int, g: torch.Generator) -> torch.Tensor:
        """Training crops holding at least ``tokens`` tokens."""
        return self.sample(math.ceil(tokens / 16), g)


class Digits:
    """scikit-learn's 8x8 digits in [0, 1]: first 1500 train, last 297 test; 2x2 tokens per digit."""

    name, size, downsamples = "digits", 8, 2

    def __init__(self) -> None:
        from sklearn.datasets import load_digits

        x = torch.from_numpy(load_digits().images.astype(np.float32) / 16.0)[:, None]
        self.train, self.test = x[:1500], x[1500:]

    def sample(self, n: int, g: torch.Generator) -> torch.Tensor:
        """n random training digits."""
        return self.train[torch.randint(len(self.train), (n,), generator=g)]

    def test_sets(self) -> list[tuple[torch.Tensor, tuple[int, int]]]:
        """The test digits as one set."""
        return [(self.test, (8, 8))]

    def assemble(self, patches: torch.Tensor, hw: tuple[int, int]) -> list[np.ndarray]:
        """Each digit is its own image."""
        return list(patches[:, 0].numpy())

    def usage_pool(self, tokens: int, g: torch.Generator) -> torch.Tensor:
        """All training digits (6,000 tokens: too few to fill a large codebook)."""
        return self.train


# ----------------------------------------------------------------------------- model
class Encoder(nn.Module):
    """Strided conv encoder: ``downsamples`` stride-2 convs, then a 1x1 conv to the latent channels."""

    def __init__(self, out_ch: int, downsamples: int, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch = 1
        for i in range(downsamples):
            w = width // 2 if i == 0 else width
            layers += [nn.Conv2d(ch, w, 3, 2, 1), nn.GELU()]
            if i == 1:
                layers += [nn.Conv2d(w, w, 3, 1, 1), nn.GELU()]
            ch = w
        layers.append(nn.Conv2d(ch, out_ch, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 1, H, W) -> latents (B, C, H / 2^d, W / 2^d)."""
        return self.net(x)


class Decoder(nn.Module):
    """Mirror of Encoder: transposed stride-2 convs back to one channel."""

    def __init__(self, in_ch: int, upsamples: int, width: int = 32) -> None:
        super().__init__()
        outs = [width] * (upsamples - 2) + [width // 2, 1]
        layers: list[nn.Module] = [nn.Conv2d(in_ch, width, 3, 1, 1), nn.GELU()]
        ch = width
        for i, out in enumerate(outs):
            layers.append(nn.ConvTranspose2d(ch, out, 4, 2, 1))
            if out != 1:
                layers.append(nn.GELU())
            if i == 0 and out != 1:
                layers += [nn.Conv2d(out, out, 3, 1, 1), nn.GELU()]
            ch = out
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Latents -> images."""
        return self.net(z)


def dead_threshold(codebook_size: int, tokens_per_step: int) -> float:
    """Dead-code threshold on the EMA of per-step hits: DEAD_SHARE of a uniform code's share of a batch."""
    return DEAD_SHARE * tokens_per_step / codebook_size


def gq_base(name: str) -> str | None:
    """'GQ', 'GQ2' or 'GQ4' for a GQ label (optionally with '@sigma'), else None."""
    base = name.split("@")[0]
    return base if base in GQ_GROUPS else None


def gq_label(name: str, sigma: float) -> str:
    """Row label: the GQ variant, with '@sigma' when the VAE's sigma is not the default SIGMA_X."""
    return name if sigma == SIGMA_X else f"{name}@{sigma:g}"


def make_quantizer(name: str, bits: int, tokens_per_step: int = 512) -> tuple[nn.Module, int]:
    """Quantizer at ``bits`` bits per token, and the latent channels the encoder must produce."""
    if name == "VQ":
        thr = dead_threshold(1 << bits, tokens_per_step)
        return VectorQuantize(16, 1 << bits, decay=0.99, dead_code_threshold=thr, channels_first=True), 16
    if name == "RVQ":
        k = 1 << (bits // 2)
        thr = dead_threshold(k, tokens_per_step)
        return ResidualVQ(16, k, 2, decay=0.99, dead_code_threshold=thr, channels_first=True), 16
    if name == "FSQ":
        levels = FSQ_LEVELS[bits]
        return FSQ(levels, channels_first=True), len(levels)
    if name == "LFQ":
        return LFQ(1 << bits, entropy_weight=0.1, commitment_weight=0.025, channels_first=True), bits
    if name == "BSQ":
        return BSQ(1 << bits, entropy_weight=0.1, channels_first=True), bits
    if name == "LFQ-peer":
        return PeerLFQ(bits), bits
    if name == "LQ":  # 4 learnable values per dimension: 2 bits a dimension
        return LatentQuantize(4, dim=bits // 2, quantization_weight=0.1, commitment_weight=0.1,
                              channels_first=True), bits // 2  # fmt: skip
    if gq_base(name):
        heads = GQ_GROUPS[gq_base(name)]
        if bits % heads:
            raise ValueError(f"{name}: {bits} bits per token do not split into {heads} groups")
        k, group = 1 << (bits // heads), GQ_CHANNELS // heads
        return GaussianQuant(GQ_CHANNELS, k, group=group, channels_first=True), GQ_CHANNELS
    raise ValueError(f"unknown quantizer {name!r}; choose from {QUANTIZERS}")


class PeerLFQ(nn.Module):
    """vector-quantize-pytorch's LFQ (entropy 0.1, commitment 0.025, its defaults otherwise) behind our
    (quantized, indices, losses) interface, with a code histogram counted outside training."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        import vector_quantize_pytorch as peer

        self.q = peer.LFQ(dim=bits, codebook_size=1 << bits, entropy_loss_weight=0.1, commitment_loss_weight=0.025)
        self.register_buffer("counts", torch.zeros(1, 1 << bits, dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Channels-first latents -> (quantized, indices, {"aux": the peer's summed auxiliary loss})."""
        q, idx, aux = self.q(x)
        if not self.training:
            self.counts[0] += torch.bincount(idx.flatten(), minlength=self.counts.shape[1])
        return q, idx, {"aux": aux}

    def reset_usage(self) -> None:
        """Forget the code histogram."""
        self.counts.zero_()

    def codebook_usage(self) -> dict:
        """Used fraction and perplexity of the histogram, as lowbit's quantizers report them."""
        used, perplexity = histogram_usage(self.counts, torch.tensor([self.counts.shape[1]]))
        return {"used_fraction": float(used[0]), "perplexity": float(perplexity[0]),
                "max_perplexity": float(self.counts.shape[1]), "tokens": int(self.counts.sum())}


# ----------------------------------------------------------------------------- training
def gq_vae_loss(rec: torch.Tensor, x: torch.Tensor, kl_loss: torch.Tensor, sigma: float = SIGMA_X) -> torch.Tensor:
    """Gaussian VAE loss in bits per pixel: -log2 p(x|z) with noise scale sigma plus 0.1 x the TDC term."""
    nll = F.mse_loss(rec, x, reduction="sum") / x.shape[0] / (2 * sigma**2) * math.log2(math.e)
    return (nll + 0.1 * kl_loss) / x[0].numel()


def train_model(name: str, bits: int, data, steps: int, batch: int, seed: int, sigma: float = SIGMA_X) -> dict:
    """Train encoder, decoder and quantizer (for GQ: the TDC VAE with noise scale sigma); modules and seconds."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(1000 + seed)
    tokens_per_step = batch * (data.size >> data.downsamples) ** 2
    quant, ch = make_quantizer(name, bits, tokens_per_step)
    enc = Encoder(2 * ch if gq_base(name) else ch, data.downsamples)
    dec = Decoder(ch, data.downsamples)
    params = [*enc.parameters(), *dec.parameters(), *quant.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 1e-3, total_steps=steps, pct_start=max(0.05, 3 / steps))
    enc.train(), dec.train(), quant.train()
    t0 = time.perf_counter()
    for _ in range(steps):
        x = data.sample(batch, g)
        if gq_base(name):
            mu, logvar = enc(x).chunk(2, dim=1)
            z = mu + torch.randn_like(mu) * (0.5 * logvar.clamp(-30, 20)).exp()
            kl_loss, _ = quant.tdc_loss(mu, logvar)
            loss = gq_vae_loss(dec(z), x, kl_loss, sigma)
        else:
            q, _, losses = quant(enc(x))
            loss = F.mse_loss(dec(q), x) + sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
    return {"enc": enc.eval(), "dec": dec.eval(), "quant": quant.eval(), "train_s": time.perf_counter() - t0}


@torch.no_grad()
def reconstruct(name: str, m: dict, x: torch.Tensor, mode: str = "q") -> torch.Tensor:
    """Decode x through the quantizer (mode 'q'); for GQ also the posterior 'mean' or a 'sample'."""
    out = []
    for s in range(0, x.shape[0], 1024):
        h = m["enc"](x[s : s + 1024])
        if gq_base(name):
            mu, logvar = h.chunk(2, dim=1)
            if mode == "mean":
                z = mu
            elif mode == "sample":
                z = mu + torch.randn_like(mu) * (0.5 * logvar.clamp(-30, 20)).exp()
            else:
                z = m["quant"](mu, logvar)[0]
        else:
            z = m["quant"](h)[0]
        out.append(m["dec"](z).clamp(0, 1))
    return torch.cat(out)


def quality(name: str, m: dict, data, mode: str = "q") -> tuple[float, float, np.ndarray]:
    """PSNR (mean over test images of per-image PSNR; digits: over the whole test set), mean SSIM."""
    from skimage.metrics import structural_similarity

    psnrs, ssims, first = [], [], None
    for x, hw in data.test_sets():
        recs, refs = data.assemble(reconstruct(name, m, x, mode), hw), data.assemble(x, hw)
        mse = float(np.mean([np.mean((r - t) ** 2) for r, t in zip(recs, refs, strict=True)]))
        psnrs.append(10 * math.log10(1.0 / mse))
        ssims += [
            float(structural_similarity(t, r, data_range=1.0, win_size=7)) for r, t in zip(recs, refs, strict=True)
        ]
        first = recs[0] if first is None else first
    return float(np.mean(psnrs)), float(np.mean(ssims)), first


@torch.no_grad()
def usage(name: str, m: dict, data, tokens: int, seed: int) -> dict:
    """Code usage over about ``tokens`` training tokens (fewer if the data is smaller), with the uniform cap."""
    quant = m["quant"]
    x = data.usage_pool(tokens, torch.Generator().manual_seed(5000 + seed))
    quant.reset_usage()
    joint = []  # multi-group GQ: the token's whole index (all groups together), K^groups values
    for s in range(0, x.shape[0], 1024):
        h = m["enc"](x[s : s + 1024])
        if gq_base(name):
            idx = quant(*h.chunk(2, dim=1))[1].reshape(-1, quant.num_groups)
            k = quant.codebook_size
            joint.append(sum(idx[:, j] * k**j for j in range(quant.num_groups)))
        else:
            quant(h)
    u = quant.codebook_usage()
    # per-head codebook size: ResidualVQ stages, LatentQuantize dimensions and GQ groups are averaged per head
    k = u["max_perplexity"]
    tokens = u["tokens"]
    out = {"usage": u["used_fraction"], "perplexity": u["perplexity"], "usage_tokens": tokens,
           "usage_cap": 1 - math.exp(-tokens / k), "head_codes": k}  # fmt: skip
    if joint and quant.num_groups > 1:
        kj = quant.codebook_size**quant.num_groups
        counts = torch.bincount(torch.cat(joint), minlength=kj)[None]
        used, perplexity = histogram_usage(counts, torch.tensor([kj]))
        out.update(usage_joint=float(used[0]), perplexity_joint=float(perplexity[0]),
                   usage_joint_cap=1 - math.exp(-tokens / kj))  # fmt: skip
    return out


@torch.no_grad()
def gq_kl_stats(m: dict, data) -> dict:
    """KL per token and group (bits) of 1,024 training crops (fixed draw) against the band log2 K +- 0.5."""
    mu, lv = m["enc"](data.sample(1024, torch.Generator().manual_seed(7))).chunk(2, dim=1)
    kl, target = m["quant"].tdc.group_kl_bits(mu, lv), m["quant"].tdc.target
    return {"kl_target": target, "kl_bits_mean": float(kl.mean()),
            "kl_bits_q05_q50_q95": kl.flatten().quantile(torch.tensor([0.05, 0.5, 0.95])).tolist(),
            "kl_bits_carried": float(kl.clamp(max=target).mean()),  # at most log2 K bits fit in a group's code
            "kl_in_band": float(((kl - target).abs() <= 0.5).float().mean()),
            "kl_above_band": float((kl > target + 0.5).float().mean())}  # fmt: skip


def calibrate_sigma(name: str, bits: int, data, steps: int, batch: int, sigmas: list[float], seed: int) -> dict:
    """Pick the GQ VAE's sigma on training data only: train at each sigma (largest first) and keep the largest
    whose mean KL per group on training crops reaches the band (>= log2 K - 0.5). No test image is read."""
    trials = []
    for sigma in sorted(sigmas, reverse=True):
        m = train_model(name, bits, data, steps, batch, seed, sigma)
        trial = {"sigma": sigma, "train_s": m["train_s"], **gq_kl_stats(m, data)}
        trials.append(trial)
        print(json.dumps({"calibrate": name, "bits": bits, **trial}), file=sys.stderr, flush=True)
        if trial["kl_bits_mean"] >= trial["kl_target"] - 0.5:
            return {"sigma": sigma, "trials": trials}
    return {"sigma": trials[-1]["sigma"], "trials": trials, "reached": False}


def run_one(name: str, bits: int, data, steps: int, batch: int, seed: int, usage_tokens: int,
            sigma: float = SIGMA_X, tag: str = "") -> dict:  # fmt: skip
    """Train and evaluate one (quantizer, rate, seed) cell (sigma: the GQ VAE's noise scale; tag: label suffix)."""
    m = train_model(name, bits, data, steps, batch, seed, sigma)
    psnr, ssim, rec = quality(name, m, data)
    label = gq_label(name, sigma) if gq_base(name) else name
    label += tag  # e.g. " 2000st": a run off the protocol keeps its own cells when merged with the others
    row = {"dataset": data.name, "quantizer": label, "bits": bits, "seed": seed, "psnr": psnr, "ssim": ssim,
           "train_s": m["train_s"], "rec": rec}  # fmt: skip
    row.update(usage(name, m, data, usage_tokens, seed))
    if gq_base(name):
        row["gq_sigma"], row["gq_groups"], row["gq_codes"] = sigma, m["quant"].num_groups, m["quant"].codebook_size
        row["vae_mean_psnr"] = quality(name, m, data, "mean")[0]
        m["quant"].selection = "nearest"  # diagnostic: code nearest to the posterior mean
        row["gq_nearest_psnr"] = quality(name, m, data)[0]
        m["quant"].selection = "importance"
        torch.manual_seed(seed)
        row["vae_sample_psnr"] = quality(name, m, data, "sample")[0]
        row.update(gq_kl_stats(m, data))
    return row


# ----------------------------------------------------------------------------- report
def summarise(rows: list[dict]) -> dict:
    """Mean and spread (sample std over seeds) per (dataset, bits, quantizer)."""
    keys = ["psnr", "ssim", "usage", "perplexity", "usage_cap", "usage_tokens", "train_s", "vae_mean_psnr",
            "vae_sample_psnr", "gq_nearest_psnr", "kl_bits_mean", "kl_bits_carried", "kl_in_band", "kl_above_band",
            "usage_joint", "usage_joint_cap", "perplexity_joint"]  # fmt: skip
    out: dict = {}
    for r in rows:
        out.setdefault(f"{r['dataset']}/{r['bits']}/{r['quantizer']}", []).append(r)
    summary = {}
    for cell, rs in out.items():
        s = {"seeds": len(rs)}
        for k in keys:
            vals = [r[k] for r in rs if k in r]
            if vals:
                s[k] = statistics.mean(vals)
                s[k + "_sd"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        summary[cell] = s
    return summary


def table(summary: dict, dataset: str) -> str:
    """Markdown table for one dataset: one row per (bits, quantizer)."""
    lines = [
        f"#### {dataset}",
        "| bits | quantizer | seeds | PSNR dB | SSIM | usage | cap | perplexity | tokens | train s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = {q: i for i, q in enumerate(QUANTIZERS)}

    def key(c: tuple) -> tuple:
        q = c[0].split("/")[2]
        return int(c[0].split("/")[1]), order.get(q.split("@")[0].split(" ")[0], 99), q

    for cell, s in sorted(summary.items(), key=key):
        ds, bits, q = cell.split("/")
        if ds != dataset:
            continue
        lines.append(
            f"| {bits} | {q} | {s['seeds']} | {s['psnr']:.2f} +- {s['psnr_sd']:.2f} "
            f"| {s['ssim']:.3f} +- {s['ssim_sd']:.3f} "
            f"| {100 * s['usage']:.1f}% +- {100 * s['usage_sd']:.1f} | {100 * s['usage_cap']:.1f}% "
            f"| {s['perplexity']:,.0f} | {s['usage_tokens']:,.0f} | {s['train_s']:.0f} |"
        )
    return "\n".join(lines)


def gq_table(summary: dict, dataset: str) -> str:
    """GQ diagnostics for one dataset: KL per group on training crops, VAE and GQ PSNR, joint token usage."""
    lines = [
        f"#### {dataset}: GQ diagnostics",
        "| bits | quantizer | seeds | mean KL bits/group | in band | above band | VAE mean dB | VAE sample dB "
        "| GQ dB | GQ nearest dB | token usage (all groups) | its cap |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cell, s in summary.items():
        ds, bits, q = cell.split("/")
        if ds != dataset or "kl_bits_mean" not in s:
            continue
        joint = (f"{100 * s['usage_joint']:.1f}% +- {100 * s['usage_joint_sd']:.1f} | {100 * s['usage_joint_cap']:.1f}%"
                 if "usage_joint" in s else f"{100 * s['usage']:.1f}% | {100 * s['usage_cap']:.1f}%")  # fmt: skip
        lines.append(
            f"| {bits} | {q} | {s['seeds']} | {s['kl_bits_mean']:.1f} | {100 * s['kl_in_band']:.0f}% "
            f"| {100 * s['kl_above_band']:.0f}% | {s['vae_mean_psnr']:.2f} | {s['vae_sample_psnr']:.2f} "
            f"| {s['psnr']:.2f} +- {s['psnr_sd']:.2f} | {s['gq_nearest_psnr']:.2f} | {joint} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], summary: dict, data: Patches, path: Path) -> None:
    """Reconstructions of a held-out crop at 16 bits (first seed) and PSNR against rate per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if r["dataset"] == "patches" and r.get("rec") is not None]
    top = max(r["bits"] for r in shown) if shown else 0
    first = min((r["seed"] for r in shown), default=0)
    recs = {r["quantizer"]: r for r in shown if r["bits"] == top and r["seed"] == first}
    datasets = sorted({r["dataset"] for r in rows})
    ncols = max(len(recs) + 1, 2 * len(datasets))
    fig = plt.figure(figsize=(2.4 * ncols, 8.0))
    grid = fig.add_gridspec(2, ncols, height_ratios=[1.0, 1.6])
    crop = (slice(96, 288), slice(160, 352))
    tops = [fig.add_subplot(grid[0, i]) for i in range(len(recs) + 1)] if recs else []
    if recs:
        tops[0].imshow(data.test_images[0][crop], cmap="gray", vmin=0, vmax=1)
        tops[0].set_title("original")
    for ax, (q, r) in zip(tops[1:], recs.items(), strict=False):
        ax.imshow(r["rec"][crop], cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"{q} {top} bits\n{r['psnr']:.2f} dB", fontsize=9)
    for ax in tops:
        ax.axis("off")
    span = ncols // max(len(datasets), 1)  # each rate panel spans an equal share of the width
    for i, ds in enumerate(datasets):
        ax = fig.add_subplot(grid[1, i * span : (i + 1) * span])
        for q in dict.fromkeys(r["quantizer"] for r in rows):
            pts = [
                (int(c.split("/")[1]), s) for c, s in summary.items() if c.startswith(f"{ds}/") and c.endswith(f"/{q}")
            ]
            pts.sort(key=lambda p: p[0])
            if pts:
                ax.errorbar([p[0] for p in pts], [p[1]["psnr"] for p in pts], [p[1]["psnr_sd"] for p in pts],
                            label=q, marker="o" if len(pts) > 1 else "s", capsize=3)  # fmt: skip
        ax.set_title(f"{ds}: PSNR vs bits/token (mean +- sd over seeds)")
        ax.set_xlabel("bits per token")
        ax.set_ylabel("PSNR dB")
        ax.set_xticks(sorted({r["bits"] for r in rows}))
        ax.legend(fontsize=7, ncol=2, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def load_rows(path: Path) -> list[dict]:
    """Rows of a run: its JSON output, or the per-cell lines of its stderr log (a run cut off before the end)."""
    if path.suffix == ".json":
        return json.loads(path.read_text())["rows"]
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.startswith('{"dataset"')]
    return [r for r in lines if "psnr" in r]


def summarise_quality(rows: list[dict], rates: list[int], datasets: list[str], headline: dict, report: dict) -> dict:
    """Tables on stderr, rows and summary into the report, headline PSNR and usage at the top rate."""
    summary = summarise(rows)
    for ds in datasets:
        print(table(summary, ds), file=sys.stderr)
        print(gq_table(summary, ds), file=sys.stderr)
    report["rows"] = [{k: v for k, v in r.items() if k != "rec"} for r in rows]
    report["summary"] = summary
    top = max(rates)
    for ds in datasets:
        headline[f"psnr_{top}bit_{ds}"] = {
            c.split("/")[2]: round(s["psnr"], 2) for c, s in summary.items() if c.startswith(f"{ds}/{top}/")
        }
    for bits in rates:
        headline[f"usage_{bits}bit_patches"] = {
            c.split("/")[2]: [round(s["usage"], 4), round(s["usage_cap"], 4)]
            for c, s in summary.items() if c.startswith(f"patches/{bits}/")
        }  # fmt: skip
    return summary


# ----------------------------------------------------------------------------- main
def main() -> None:
    """Run quality (all rates, quantizers, seeds), then speed and memory; print the headline JSON line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one seed, short training, fewer timing repeats")
    ap.add_argument("--steps", type=int, default=None, help=f"training steps (default {STEPS})")
    ap.add_argument("--batch", type=int, default=None, help=f"batch size (default {BATCH})")
    ap.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3; --quick 1)")
    ap.add_argument("--seed-offset", type=int, default=0, help="first seed (to split seeds over processes)")
    ap.add_argument("--merge", default="", help="JSON outputs or stderr logs (comma list): summarise, train nothing")
    ap.add_argument("--rates", default=None, help="bits per token (default 8,12,16; --quick 8,16)")
    ap.add_argument("--datasets", default="patches,digits")
    ap.add_argument("--quantizers", default=",".join(q for q in QUANTIZERS if q != "LFQ-peer"))
    # Since 2026-12-02 usage is counted over 262,144 tokens at every rate (was 8 x K: 2,048 tokens at 8 bits,
    # which misses the rarer codes a dataset-wide count finds); --usage-factor 8 gives the old figures.
    ap.add_argument("--usage-factor", type=float, default=float("inf"), help="usage over this many x K tokens ...")
    ap.add_argument("--usage-max", type=int, default=1 << 18, help="... but at most this many (cost: tokens x K)")
    ap.add_argument("--gq-sigma", type=float, default=SIGMA_X, help="the GQ VAE's noise scale (its likelihood)")
    ap.add_argument(
        "--calibrate-sigma",
        default="",
        help="comma list of sigmas: per GQ cell, train on each (seed "
        "--calibrate-seed) and keep the largest whose training-crop KL reaches the band; test unseen",
    )
    ap.add_argument("--calibrate-seed", type=int, default=100, help="seed of the calibration runs (not reported)")
    ap.add_argument("--tag", default="", help="suffix of every quantizer label (e.g. ' 2000st' for longer runs)")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: quality,speed,memory")
    ap.add_argument("--plot", default=str(ROOT / "docs" / "latent_tokenizers.png"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "latent_tokenizers.json"))
    args = ap.parse_args()
    unknown = [q for q in args.quantizers.split(",") if q not in QUANTIZERS]
    if unknown:
        ap.error(f"unknown quantizer(s) {', '.join(unknown)}; choose from {', '.join(QUANTIZERS)}")
    # training runs on one thread (small convs; on a shared machine idle OpenMP threads spin); timings on two
    torch.set_num_threads(1)
    skip = set(filter(None, args.skip.split(",")))
    seeds = list(range(args.seed_offset, args.seed_offset + (args.seeds or (1 if args.quick else 3))))
    rates = [int(r) for r in (args.rates or ("8,16" if args.quick else "8,12,16")).split(",")]
    headline: dict = {"quick": args.quick, "seeds": len(seeds)}
    report: dict = {"args": vars(args)}

    if args.merge:  # rows of earlier runs (e.g. one process per dataset), summarised together
        cells = {}  # one row per (dataset, bits, quantizer, seed): a cell run twice (split runs) counts once
        for f in args.merge.split(","):
            for r in load_rows(Path(f)):
                cells.setdefault((r["dataset"], r["bits"], r["quantizer"], r["seed"]), r)
        rows = list(cells.values())
        report["merged"] = args.merge.split(",")
        for f in args.merge.split(","):  # reconstructions for the plot, where the run saved them
            if Path(f).with_suffix(".recs.npz").exists():
                recs = np.load(Path(f).with_suffix(".recs.npz"))
                for r in rows:
                    r.setdefault("rec", recs.get(f"{r['dataset']}/{r['bits']}/{r['quantizer']}/{r['seed']}"))
        if args.plot and any(r.get("rec") is not None for r in rows):
            plot(rows, summarise(rows), Patches(), Path(args.plot))
        summarise_quality(rows, sorted({r["bits"] for r in rows}), list(dict.fromkeys(r["dataset"] for r in rows)),
                          headline, report)  # fmt: skip
        headline["seeds"] = len({r["seed"] for r in rows})
    elif "quality" not in skip:
        rows: list[dict] = []
        sets = {"patches": Patches, "digits": Digits}
        loaded = {n: sets[n]() for n in args.datasets.split(",")}
        for data in loaded.values():
            steps = args.steps or (20 if args.quick else STEPS[data.name])
            batch = args.batch or BATCH[data.name]
            for bits in rates:
                tokens = int(min(args.usage_factor * (1 << bits), args.usage_max // (4 if args.quick else 1)))
                for q in args.quantizers.split(","):
                    sigma = args.gq_sigma
                    if gq_base(q) and args.calibrate_sigma:
                        sigmas = [float(v) for v in args.calibrate_sigma.split(",")]
                        cal = calibrate_sigma(q, bits, data, steps, batch, sigmas, args.calibrate_seed)
                        report.setdefault("calibration", {})[f"{data.name}/{bits}/{q}"] = cal
                        sigma = cal["sigma"]
                    for seed in seeds:
                        row = run_one(q, bits, data, steps, batch, seed, tokens, sigma, args.tag)
                        row["steps"], row["batch"] = steps, batch
                        rows.append(row)
                        brief = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items() if k != "rec"}
                        print(json.dumps(brief), file=sys.stderr, flush=True)
        summary = summarise_quality(rows, rates, list(loaded), headline, report)
        if args.out and "patches" in loaded:  # the top rate's first-seed reconstructions, for --merge's plot
            top = [r for r in rows if r["dataset"] == "patches" and r["bits"] == max(rates) and r["seed"] == seeds[0]]
            named = {f"patches/{r['bits']}/{r['quantizer']}/{r['seed']}": r["rec"] for r in top}
            np.savez_compressed(Path(args.out).with_suffix(".recs.npz"), **named)
        if args.plot and "patches" in loaded:
            Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
            plot(rows, summary, loaded["patches"], Path(args.plot))

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    if "speed" not in skip:
        sp = latent_speed.speed(3 if args.quick else 7)
        report["speed"] = sp
        headline["speedup_vs_vqp"] = {k: round(v["speedup"], 2) for k, v in sp.items() if v["speedup"]}
        headline["speed_ms"] = {
            k: [round(v["ours_ms"], 2), None if v["peer_ms"] is None else round(v["peer_ms"], 2)] for k, v in sp.items()
        }
    if "memory" not in skip:
        mem = latent_speed.memory_all(args.quick)
        report["memory"] = mem
        headline["lfq_2e16_peak_rss_mb"] = round(float(mem["ours LFQ 2^16"].get("peak_rss_mb", float("nan"))), 1)
        headline["memory_peak_rss_mb"] = {
            k: round(float(v.get("peak_rss_mb", float("nan"))), 1) for k, v in mem.items()
        }
    if args.out and not args.quick:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1, default=float))
    print(json.dumps(headline))


if __name__ == "__main__":
    main()
