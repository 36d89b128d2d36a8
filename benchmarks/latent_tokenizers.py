"""Benchmark lowbit.latent quantizers: autoencoder quality at 16 bits/token; speed, memory vs vector-quantize-pytorch.

(a) Quality: a small convolutional autoencoder on 32x32 grayscale patches of scikit-image's sample images
    (train: random crops with flips from 12 images; test: 3 held-out images tiled into patches and
    reassembled), one token of 16 bits per latent position (4x4 tokens per patch, 0.25 bits per pixel):
    VQ (K = 65536, d = 16, EMA + dead-code replacement), FSQ [8, 8, 8, 5, 5, 5], LFQ 2^16, BSQ 2^16, and GQ:
    a Gaussian VAE trained with TDC (target 16 bits per group of 16 channels), then quantized with
    GaussianQuant (K = 2^16) without further training. PSNR and SSIM on the held-out images, code usage
    over 12k training crops (192k tokens).
(b) Speed: fwd+bwd on 16 x 1024 tokens, ours vs vector-quantize-pytorch, interleaved runs, medians.
(c) Memory: peak RSS of LFQ K = 2^16 fwd+bwd on 16 x 1024 tokens in a fresh subprocess (ours), and the peer's
    LFQ at K = 2^10 / 2^12 for its scaling (its 2^16 needs > 24 GB and is not run).

Ends with one JSON line of headline figures. ``--quick`` shortens training and repeats.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from lowbit.latent import BSQ, FSQ, LFQ, GaussianQuant, VectorQuantize

ROOT = Path(__file__).resolve().parents[1]
TRAIN_IMAGES = [
    "astronaut", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "coins",
    "moon", "page", "text", "grass", "brick", "retina",
]  # fmt: skip
TEST_IMAGES = ["camera", "chelsea", "gravel"]
PATCH = 32


# ----------------------------------------------------------------------------- data
def load_gray(name: str) -> np.ndarray:
    import skimage.data
    from skimage.color import rgb2gray
    from skimage.transform import rescale

    im = getattr(skimage.data, name)()
    im = rgb2gray(im[..., :3]) if im.ndim == 3 else im.astype(np.float64) / 255.0
    if max(im.shape) > 1000:
        im = rescale(im, 0.5, anti_aliasing=True)
    return im.astype(np.float32)


class Crops:
    """Random 32x32 crops with flips from a list of grayscale images."""

    def __init__(self, images: list[np.ndarray], seed: int) -> None:
        self.images = [torch.from_numpy(im) for im in images]
        self.g = torch.Generator().manual_seed(seed)

    def sample(self, n: int) -> torch.Tensor:
        out = torch.empty(n, 1, PATCH, PATCH)
        which = torch.randint(len(self.images), (n,), generator=self.g)
        for i, w in enumerate(which.tolist()):
            im = self.images[w]
            y = int(torch.randint(im.shape[0] - PATCH + 1, (1,), generator=self.g))
            x = int(torch.randint(im.shape[1] - PATCH + 1, (1,), generator=self.g))
            p = im[y : y + PATCH, x : x + PATCH]
            if bool(torch.rand(1, generator=self.g) < 0.5):
                p = p.flip(1)
            out[i, 0] = p
        return out


def tile(im: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
    h, w = (im.shape[0] // PATCH) * PATCH, (im.shape[1] // PATCH) * PATCH
    t = torch.from_numpy(im[:h, :w]).reshape(h // PATCH, PATCH, w // PATCH, PATCH).permute(0, 2, 1, 3)
    return t.reshape(-1, 1, PATCH, PATCH), (h, w)


def untile(p: torch.Tensor, hw: tuple[int, int]) -> np.ndarray:
    h, w = hw
    t = p.reshape(h // PATCH, w // PATCH, PATCH, PATCH).permute(0, 2, 1, 3)
    return t.reshape(h, w).numpy()


# ----------------------------------------------------------------------------- model
class Encoder(nn.Module):
    def __init__(self, out_ch: int, width: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, width // 2, 3, 2, 1), nn.GELU(),
            nn.Conv2d(width // 2, width, 3, 2, 1), nn.GELU(),
            nn.Conv2d(width, width, 3, 1, 1), nn.GELU(),
            nn.Conv2d(width, width, 3, 2, 1), nn.GELU(),
            nn.Conv2d(width, out_ch, 1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    def __init__(self, in_ch: int, width: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_ch, width, 3, 1, 1), nn.GELU(),
            nn.ConvTranspose2d(width, width, 4, 2, 1), nn.GELU(),
            nn.Conv2d(width, width, 3, 1, 1), nn.GELU(),
            nn.ConvTranspose2d(width, width // 2, 4, 2, 1), nn.GELU(),
            nn.ConvTranspose2d(width // 2, 1, 4, 2, 1),
        )  # fmt: skip

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def make_quantizer(name: str) -> tuple[nn.Module | None, int]:
    """Quantizer and latent channels for 16 bits per token."""
    if name == "VQ":
        return VectorQuantize(16, 1 << 16, decay=0.99, dead_code_threshold=1e-3, channels_first=True), 16
    if name == "FSQ":
        return FSQ([8, 8, 8, 5, 5, 5], channels_first=True), 6
    if name == "LFQ":
        return LFQ(1 << 16, entropy_weight=0.1, commitment_weight=0.025, channels_first=True), 16
    if name == "BSQ":
        return BSQ(1 << 16, entropy_weight=0.1, channels_first=True), 16
    if name == "GQ":
        return GaussianQuant(16, 1 << 16, group=16, channels_first=True), 16
    raise ValueError(name)


def train_model(name: str, crops: Crops, steps: int, batch: int) -> tuple[nn.Module, nn.Module, nn.Module, float]:
    torch.manual_seed(0)
    quant, ch = make_quantizer(name)
    enc = Encoder(2 * ch if name == "GQ" else ch)
    dec = Decoder(ch)
    params = list(enc.parameters()) + list(dec.parameters()) + list(quant.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 1e-3, total_steps=steps, pct_start=0.05)
    quant.train()
    t0 = time.perf_counter()
    bar = tqdm(range(steps), desc=f"train {name}", leave=False, mininterval=2.0)
    for _ in bar:
        x = crops.sample(batch)
        if name == "GQ":
            mu, logvar = enc(x).chunk(2, dim=1)
            z = mu + torch.randn_like(mu) * (0.5 * logvar.clamp(-30, 20)).exp()
            rec = dec(z)
            kl_loss, stats = quant.tdc_loss(mu, logvar)
            # Gaussian likelihood in bits with sigma_x = 0.15 (sum over pixels, per image) + 0.1 x TDC (bits)
            loss = F.mse_loss(rec, x, reduction="sum") / x.shape[0] / (2 * 0.15**2) * math.log2(math.e)
            loss = (loss + 0.1 * kl_loss) / (PATCH * PATCH)
            bar.set_postfix(bits=f"{stats['bits_mean']:.1f}", band=f"{stats['in_band']:.2f}", refresh=False)
        else:
            q, _, losses = quant(enc(x))
            rec = dec(q)
            loss = F.mse_loss(rec, x) + sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
    return enc, dec, quant, time.perf_counter() - t0


@torch.no_grad()
def reconstruct(name: str, enc: nn.Module, dec: nn.Module, quant: nn.Module, x: torch.Tensor, mode: str = "q"):
    out = []
    for s in range(0, x.shape[0], 512):
        h = enc(x[s : s + 512])
        if name == "GQ":
            mu, logvar = h.chunk(2, dim=1)
            if mode == "mean":
                z = mu
            elif mode == "sample":
                z = mu + torch.randn_like(mu) * (0.5 * logvar.clamp(-30, 20)).exp()
            else:
                z = quant(mu, logvar)[0]
        else:
            z = quant(h)[0]
        out.append(dec(z).clamp(0, 1))
    return torch.cat(out)


def evaluate(name, enc, dec, quant, test, usage_crops: torch.Tensor, mode: str = "q") -> dict:
    from skimage.metrics import structural_similarity

    enc.eval(), dec.eval(), quant.eval()
    psnrs, ssims, recs = [], [], []
    for patches, hw in test:
        rec = untile(reconstruct(name, enc, dec, quant, patches, mode), hw)
        ref = untile(patches, hw)
        psnrs.append(10 * math.log10(1.0 / float(np.mean((rec - ref) ** 2))))
        ssims.append(float(structural_similarity(ref, rec, data_range=1.0)))
        recs.append(rec)
    res = {"psnr": float(np.mean(psnrs)), "ssim": float(np.mean(ssims)), "recs": recs}
    if mode == "q":
        quant.reset_usage()
        reconstruct(name, enc, dec, quant, usage_crops)
        u = quant.codebook_usage()
        res.update(usage=u["used_fraction"], perplexity=u["perplexity"], usage_tokens=u["tokens"])
    return res


# ----------------------------------------------------------------------------- speed
def _fwd_bwd(module: nn.Module, x: torch.Tensor) -> float:
    xx = x.clone().requires_grad_()
    t0 = time.perf_counter()
    out = module(xx)
    if isinstance(out, tuple) and len(out) == 2:  # peer FSQ returns (quantized, indices)
        q, aux = out[0], 0.0
    else:
        q, aux = out[0], out[2]
    loss = q.square().mean() + (sum(aux.values()) if isinstance(aux, dict) else aux)
    loss.backward()
    return time.perf_counter() - t0


def speed(repeats: int) -> dict:
    import vector_quantize_pytorch as peer

    torch.manual_seed(0)
    n = (16, 1024)
    cases = {
        "VectorQuantize dim256 K1024": (
            lambda: VectorQuantize(256, 1024, gradient="rotation", commitment_weight=1.0, decay=0.8),
            lambda: peer.VectorQuantize(dim=256, codebook_size=1024),  # EMA + rotation trick by default
            torch.randn(*n, 256),
        ),
        "LFQ K2^10": (
            lambda: LFQ(1 << 10, entropy_weight=0.1, commitment_weight=0.25),
            lambda: peer.LFQ(dim=10, codebook_size=1 << 10, entropy_loss_weight=0.1, commitment_loss_weight=0.25),
            torch.randn(*n, 10),
        ),
        "LFQ K2^10 exact codebook entropy": (
            lambda: LFQ(1 << 10, entropy_weight=0.1, commitment_weight=0.25, entropy_group_bits=10),
            lambda: peer.LFQ(dim=10, codebook_size=1 << 10, entropy_loss_weight=0.1, commitment_loss_weight=0.25),
            torch.randn(*n, 10),
        ),
        "BSQ K2^10": (
            lambda: BSQ(1 << 10, entropy_weight=0.1, commitment_weight=0.25),
            lambda: peer.LFQ(
                dim=10, codebook_size=1 << 10, spherical=True, entropy_loss_weight=0.1, commitment_loss_weight=0.25
            ),
            torch.randn(*n, 10),
        ),
        "FSQ [8,5,5,5]": (lambda: FSQ([8, 5, 5, 5]), lambda: peer.FSQ(levels=[8, 5, 5, 5]), torch.randn(*n, 4)),
    }
    results = {}
    for label, (ours_f, peer_f, x) in tqdm(cases.items(), desc="speed", leave=False):
        ours, theirs = ours_f().train(), peer_f().train()
        _fwd_bwd(ours, x), _fwd_bwd(theirs, x)  # warm-up
        a, b = [], []
        for _ in range(repeats):  # interleaved
            a.append(_fwd_bwd(ours, x))
            b.append(_fwd_bwd(theirs, x))
        ma, mb = statistics.median(a), statistics.median(b)
        results[label] = {"ours_ms": 1e3 * ma, "peer_ms": 1e3 * mb, "speedup": mb / ma}
    return results


# ----------------------------------------------------------------------------- memory
MEM_SNIPPET = r"""
import resource, sys, time, torch
torch.manual_seed(0)
which, bits, extra = sys.argv[1], int(sys.argv[2]), sys.argv[3]
x = torch.randn(16, 1024, bits, requires_grad=True)
if which == "ours":
    from lowbit.latent import LFQ
    kw = {"entropy_group_bits": bits} if extra == "exact" else {}
    m = LFQ(1 << bits, entropy_weight=0.1, commitment_weight=0.25, **kw).train()
else:
    import vector_quantize_pytorch as peer
    m = peer.LFQ(dim=bits, codebook_size=1 << bits, entropy_loss_weight=0.1, commitment_loss_weight=0.25).train()
m(x.detach().clone()[:1, :8].requires_grad_())  # warm-up on a tiny input: imports and allocator
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
out = m(x)
loss = out[0].square().mean() + (sum(out[2].values()) if isinstance(out[2], dict) else out[2])
loss.backward()
dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(base / 1024, peak / 1024, dt)
"""


def memory(which: str, bits: int, extra: str = "") -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    r = subprocess.run(
        [sys.executable, "-c", MEM_SNIPPET, which, str(bits), extra or "-"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    if r.returncode != 0:
        return {"error": r.stderr.strip().splitlines()[-1] if r.stderr else f"exit {r.returncode}"}
    base, peak, dt = (float(v) for v in r.stdout.split())
    return {"baseline_mb": base, "peak_rss_mb": peak, "delta_mb": peak - base, "seconds": dt}


# ----------------------------------------------------------------------------- plot
def plot(results: dict, test_images: list[np.ndarray], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(1, len(names) + 2, figsize=(2.6 * (len(names) + 2), 3.2))
    ref = test_images[0]
    crop = (slice(96, 288), slice(160, 352))
    axes[0].imshow(ref[crop], cmap="gray", vmin=0, vmax=1)
    axes[0].set_title("original")
    for ax, n in zip(axes[1 : len(names) + 1], names, strict=True):
        ax.imshow(results[n]["recs"][0][crop], cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"{n}\n{results[n]['psnr']:.2f} dB")
    axes[-1].bar(names, [results[n]["psnr"] for n in names], color="tab:blue")
    axes[-1].set_ylim(min(results[n]["psnr"] for n in names) - 2, max(results[n]["psnr"] for n in names) + 1)
    axes[-1].set_title("PSNR (dB), 16 bits/token")
    axes[-1].tick_params(axis="x", rotation=45)
    for ax in axes[:-1]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


# ----------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short training and fewer timing repeats")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--skip", default="", help="comma list of parts to skip: quality,speed,memory")
    ap.add_argument("--quantizers", default="VQ,FSQ,LFQ,BSQ,GQ", help="comma list for the quality part")
    ap.add_argument("--plot", default=str(ROOT / "docs" / "latent_benchmark.png"))
    args = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    skip = set(filter(None, args.skip.split(",")))
    steps = args.steps or (100 if args.quick else 400)
    headline: dict = {"steps": steps, "quick": args.quick}

    if "quality" not in skip:
        crops = Crops([load_gray(n) for n in TRAIN_IMAGES], seed=0)
        test_imgs = [load_gray(n) for n in TEST_IMAGES]
        test = [tile(im) for im in test_imgs]
        usage_crops = Crops([load_gray(n) for n in TRAIN_IMAGES], seed=1).sample(3000 if args.quick else 12000)
        results = {}
        for name in tqdm(args.quantizers.split(","), desc="quality"):
            enc, dec, quant, secs = train_model(name, crops, steps, args.batch)
            t0 = time.perf_counter()
            res = evaluate(name, enc, dec, quant, test, usage_crops)
            res.update(train_s=secs, eval_s=time.perf_counter() - t0)
            if name == "GQ":
                res["vae_mean_psnr"] = evaluate(name, enc, dec, quant, test, usage_crops, "mean")["psnr"]
                res["vae_sample_psnr"] = evaluate(name, enc, dec, quant, test, usage_crops, "sample")["psnr"]
                with torch.no_grad():
                    mu, lv = enc(crops.sample(512)).chunk(2, dim=1)
                    bits = quant.tdc.group_kl_bits(mu, lv)
                res["kl_bits_mean"] = float(bits.mean())
                res["kl_bits_in_band"] = float(((bits - 16).abs() <= 0.5).float().mean())
            results[name] = res
            row = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.items() if k != "recs"}
            tqdm.write(f"{name}: {row}")
        n_tok = next(iter(results.values()))["usage_tokens"]
        cap = 1 - math.exp(-n_tok / 65536)
        tqdm.write(f"usage over {n_tok} tokens; a uniform code over K=65536 would reach {cap:.3f}")
        headline["usage_uniform_cap_k65536"] = round(cap, 3)
        headline["psnr_16bit"] = {n: round(r["psnr"], 2) for n, r in results.items()}
        headline["ssim_16bit"] = {n: round(r["ssim"], 4) for n, r in results.items()}
        headline["usage_16bit"] = {n: round(r["usage"], 4) for n, r in results.items()}
        if "GQ" in results:
            headline["gq_vae_mean_psnr"] = round(results["GQ"]["vae_mean_psnr"], 2)
            headline["gq_vae_sample_psnr"] = round(results["GQ"]["vae_sample_psnr"], 2)
            headline["gq_kl_bits_mean"] = round(results["GQ"]["kl_bits_mean"], 2)
            headline["gq_kl_bits_in_band"] = round(results["GQ"]["kl_bits_in_band"], 3)
        if args.plot:
            Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
            plot(results, test_imgs, Path(args.plot))

    if "speed" not in skip:
        sp = speed(3 if args.quick else 7)
        for k, v in sp.items():
            tqdm.write(f"speed {k}: ours {v['ours_ms']:.1f} ms, peer {v['peer_ms']:.1f} ms, x{v['speedup']:.2f}")
        headline["speedup_vs_vqp"] = {k: round(v["speedup"], 2) for k, v in sp.items()}
        headline["speed_ms"] = {k: [round(v["ours_ms"], 1), round(v["peer_ms"], 1)] for k, v in sp.items()}

    if "memory" not in skip:
        mem = {"ours LFQ 2^16": memory("ours", 16)}
        if not args.quick:
            mem["ours LFQ 2^16 exact entropy"] = memory("ours", 16, "exact")
        mem["peer LFQ 2^10"] = memory("peer", 10)
        mem["peer LFQ 2^12"] = memory("peer", 12)
        for k, v in mem.items():
            tqdm.write(f"memory {k}: {v}")
        headline["lfq_2e16_peak_rss_mb"] = round(mem["ours LFQ 2^16"].get("peak_rss_mb", float("nan")), 1)
        headline["lfq_2e16_delta_mb"] = round(mem["ours LFQ 2^16"].get("delta_mb", float("nan")), 1)
        headline["memory_delta_mb"] = {k: round(v.get("delta_mb", float("nan")), 1) for k, v in mem.items()}
    print(json.dumps(headline))


if __name__ == "__main__":
    main()
