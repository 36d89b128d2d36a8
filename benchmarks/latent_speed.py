"""Speed and memory of lowbit.latent against vector-quantize-pytorch (called by latent_tokenizers.py).

Speed: forward + backward on 16 x 1024 tokens, ours and the peer's module in the same process, runs
interleaved (ours, peer, ours, ...), medians. Memory: whole-process peak RSS of one LFQ forward + backward on
16 x 1024 tokens in a fresh subprocess (torch import included), for ours at K = 2^16 and the peer at 2^10 and
2^12 (its 2^16 needs more than 24 GB and is not run).

Run alone: ``python benchmarks/latent_speed.py [--repeats 7]``; prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from lowbit.latent import BSQ, FSQ, LFQ, LatentQuantize, VectorQuantize

ROOT = Path(__file__).resolve().parents[1]
TOKENS = (16, 1024)


def _fwd_bwd(module: nn.Module, x: torch.Tensor) -> float:
    """Seconds for one forward + backward of a quantizer (ours or the peer's) on x."""
    xx = x.clone().requires_grad_()
    t0 = time.perf_counter()
    out = module(xx)
    aux = out[2] if len(out) == 3 else 0.0  # peer FSQ returns (quantized, indices)
    loss = out[0].square().mean() + (sum(aux.values()) if isinstance(aux, dict) else aux)
    loss.backward()
    return time.perf_counter() - t0


def cases() -> dict[str, tuple[Callable[[], nn.Module], Callable[[], nn.Module] | None, torch.Tensor]]:
    """label -> (ours factory, peer factory or None when the peer cannot run it, input)."""
    import vector_quantize_pytorch as peer

    def lfq_peer(bits: int, spherical: bool = False) -> Callable[[], nn.Module]:
        return lambda: peer.LFQ(
            dim=bits, codebook_size=1 << bits, spherical=spherical,
            entropy_loss_weight=0.1, commitment_loss_weight=0.25,
        )  # fmt: skip

    n = TOKENS
    return {
        "VectorQuantize dim256 K1024": (
            # the peer's defaults: EMA (decay 0.8) and rotation trick
            lambda: VectorQuantize(256, 1024, gradient="rotation", commitment_weight=1.0, decay=0.8),
            lambda: peer.VectorQuantize(dim=256, codebook_size=1024),
            torch.randn(*n, 256),
        ),
        "FSQ [8,5,5,5]": (lambda: FSQ([8, 5, 5, 5]), lambda: peer.FSQ(levels=[8, 5, 5, 5]), torch.randn(*n, 4)),
        "LFQ K2^10": (
            lambda: LFQ(1 << 10, entropy_weight=0.1, commitment_weight=0.25),
            lfq_peer(10),
            torch.randn(*n, 10),
        ),
        "LFQ K2^10 exact codebook entropy": (
            lambda: LFQ(1 << 10, entropy_weight=0.1, commitment_weight=0.25, entropy_group_bits=10),
            lfq_peer(10),
            torch.randn(*n, 10),
        ),
        "LFQ K2^16": (  # the peer's 2^16 needs > 24 GB: ours only
            lambda: LFQ(1 << 16, entropy_weight=0.1, commitment_weight=0.25),
            None,
            torch.randn(*n, 16),
        ),
        "BSQ K2^10": (
            lambda: BSQ(1 << 10, entropy_weight=0.1, commitment_weight=0.25),
            lfq_peer(10, spherical=True),
            torch.randn(*n, 10),
        ),
        "LatentQuantize 4 dims x 10 values": (  # the peer wants channels-first input
            lambda: LatentQuantize(10, dim=4, channels_first=True),
            lambda: peer.LatentQuantize(levels=[10, 10, 10, 10], dim=4),
            torch.randn(n[0], 4, n[1]),
        ),
    }


def speed(repeats: int = 7) -> dict[str, dict[str, float | None]]:
    """Median fwd+bwd ms of ours and the peer per case, interleaved; speed-up = peer / ours."""
    torch.manual_seed(0)
    results: dict[str, dict[str, float | None]] = {}
    for label, (ours_f, peer_f, x) in cases().items():
        mods = [ours_f().train()] + ([peer_f().train()] if peer_f is not None else [])
        for m in mods:
            _fwd_bwd(m, x)  # warm-up
        times: list[list[float]] = [[] for _ in mods]
        for _ in range(repeats):
            for m, t in zip(mods, times, strict=True):
                t.append(_fwd_bwd(m, x))
        ours = 1e3 * statistics.median(times[0])
        theirs = 1e3 * statistics.median(times[1]) if peer_f is not None else None
        results[label] = {
            "ours_ms": ours,
            "peer_ms": theirs,
            "speedup": theirs / ours if theirs is not None else None,
        }
    return results


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


def memory(which: str, bits: int, extra: str = "") -> dict[str, float | str]:
    """Peak RSS (MB) of one LFQ fwd+bwd on 16 x 1024 tokens in a fresh subprocess."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    r = subprocess.run(
        [sys.executable, "-c", MEM_SNIPPET, which, str(bits), extra or "-"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    if r.returncode != 0:
        return {"error": r.stderr.strip().splitlines()[-1] if r.stderr else f"exit {r.returncode}"}
    base, peak, dt = (float(v) for v in r.stdout.split())
    return {"baseline_mb": base, "peak_rss_mb": peak, "delta_mb": peak - base, "seconds": dt}


def memory_all(quick: bool = False) -> dict[str, dict[str, float | str]]:
    """Ours at K = 2^16 (and with the exact entropy unless quick), the peer at 2^10 and 2^12."""
    mem = {"ours LFQ 2^16": memory("ours", 16)}
    if not quick:
        mem["ours LFQ 2^16 exact entropy"] = memory("ours", 16, "exact")
    mem["peer LFQ 2^10"] = memory("peer", 10)
    mem["peer LFQ 2^12"] = memory("peer", 12)
    return mem


def main() -> None:
    """Run speed and memory and print one JSON line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (1 on an oversubscribed machine)")
    ap.add_argument("--no-memory", action="store_true", help="speed only")
    args = ap.parse_args()
    torch.set_num_threads(min(args.threads, os.cpu_count() or 1))
    out = {"threads": torch.get_num_threads(), "speed": speed(args.repeats)}
    if not args.no_memory:
        out["memory"] = memory_all(args.quick)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
