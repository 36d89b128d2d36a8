"""Packed binary XNOR/popcount GEMM vs float32 torch matmul, 4096 x 4096 weights, batch 1 and 64.

The packed time covers the whole binary layer: binarizing and packing the float activations,
XOR + popcount against the packed weights, and the per-output scale (``binary_linear``).  The
float time is ``F.linear`` on the same shapes with float32 weights (torch's default threads).
A and B are interleaved in rounds and the medians are compared, since timings on a shared
machine swing by 2-4x.

Ends with ONE JSON line: speedup_batch1, speedup_batch64 (float32 time / packed time), ...

    OMP_WAIT_POLICY=PASSIVE python benchmarks/binary_gemm.py [--rounds 15] [--backends auto,c-avx2]

``LOWBIT_CPU=avx2`` makes ``auto`` the AVX2 kernel (on an AVX-512 machine: a proxy for an AVX2-only CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from lowbit.kernels import binary as B
from lowbit.kernels.lib import cpu_level


def _time(fn: Callable[[], object], iters: int) -> float:
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t) / iters


def _bench_batch(m: int, w: torch.Tensor, w_packed: torch.Tensor, scale: torch.Tensor, rounds: int,
                 backends: list[str]) -> dict:
    """Interleaved float32 vs packed timings for one batch size, each packed backend in every round."""
    k = w.shape[1]
    x = torch.randn(m, k)
    x_packed = B.pack_bits(x)
    # exactness: the packed layer equals the float +-1 matmul times scale, bit for bit, on every backend
    ref = F.linear(torch.where(x >= 0, 1.0, -1.0), torch.where(w >= 0, 1.0, -1.0)) * scale
    exact = {}
    for be in backends:
        with B.use_backend(be):
            exact[be] = torch.equal(B.binary_linear(x, w_packed, k, scale), ref)

    def run_float() -> object:
        return F.linear(x, w)

    def run_packed() -> object:
        return B.binary_linear(x, w_packed, k, scale)

    def run_gemm() -> object:
        return B.binary_matmul(x_packed, w_packed, k)

    it_f = max(2, int(0.05 / max(_time(run_float, 2), 1e-6)))  # about 50 ms per timed block
    it_b = max(2, int(0.05 / max(_time(run_packed, 2), 1e-6)))
    tf: list[float] = []
    tb: dict[str, list[float]] = {be: [] for be in backends}
    tg: dict[str, list[float]] = {be: [] for be in backends}
    for _ in range(rounds):
        tf.append(_time(run_float, it_f))
        for be in backends:
            with B.use_backend(be):
                tb[be].append(_time(run_packed, it_b))
                tg[be].append(_time(run_gemm, it_b))
    # the same kernels forced onto all threads, interleaved with float once more
    tf2: list[float] = []
    tb2: dict[str, list[float]] = {be: [] for be in backends}
    B.set_parallel_threshold(0)
    try:
        for _ in range(max(3, rounds // 3)):
            tf2.append(_time(run_float, it_f))
            for be in backends:
                with B.use_backend(be):
                    tb2[be].append(_time(run_packed, it_b))
    finally:
        B.set_parallel_threshold(1 << 25)
    mf, mf2 = statistics.median(tf), statistics.median(tf2)
    out: dict[str, object] = {f"float32_ms_batch{m}": round(mf * 1e3, 4)}
    for i, be in enumerate(backends):
        mb, mg, mt = statistics.median(tb[be]), statistics.median(tg[be]), statistics.median(tb2[be])
        ratios = sorted(a / b for a, b in zip(tf, tb[be], strict=True))
        print(
            f"batch {m:3d} {be:>19}: float32 {mf * 1e3:8.3f} ms | packed layer {mb * 1e3:7.3f} ms "
            f"(gemm only {mg * 1e3:7.3f} ms) | speedup {mf / mb:6.1f}x "
            f"[per-round ratios {ratios[0]:.1f}..{ratios[-1]:.1f}] | "
            f"packed on all threads {mt * 1e3:.3f} ms ({mf2 / mt:.1f}x) | exact {exact[be]}",
            flush=True,
        )
        tag = "" if i == 0 else f"_{be}"  # the first backend keeps the historical key names
        out.update({
            f"speedup_batch{m}{tag}": round(mf / mb, 2),
            f"packed_ms_batch{m}{tag}": round(mb * 1e3, 4),
            f"packed_gemm_only_ms_batch{m}{tag}": round(mg * 1e3, 4),
            f"speedup_round_min_batch{m}{tag}": round(ratios[0], 2),
            f"speedup_round_max_batch{m}{tag}": round(ratios[-1], 2),
            f"speedup_all_threads_batch{m}{tag}": round(mf2 / mt, 2),
            f"exact_batch{m}{tag}": exact[be],
        })
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4096, help="output features")
    ap.add_argument("--k", type=int, default=4096, help="input features")
    ap.add_argument("--batches", type=str, default="1,64")
    ap.add_argument("--rounds", type=int, default=15, help="interleaved rounds (medians reported)")
    ap.add_argument("--torch-threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--backends", type=str, default="auto",
                    help="packed backends interleaved in every round, e.g. auto,c-avx2 ('auto' follows $LOWBIT_CPU)")
    args = ap.parse_args()
    n, k = args.n, args.k
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
        B.set_num_threads(args.torch_threads)
    backends = [B.backend() if be == "auto" else be for be in args.backends.split(",")]

    torch.manual_seed(0)
    w = torch.randn(n, k)
    scale = w.abs().mean(dim=1)
    w_packed = B.pack_bits(w)
    info = B.kernel_info()
    mem_ratio = (w.numel() * w.element_size()) / (w_packed.numel() * w_packed.element_size())
    print(
        f"weights {n}x{k}: float32 {w.numel() * 4 / 2**20:.1f} MiB, packed {w_packed.numel() * 8 / 2**20:.2f} MiB "
        f"({mem_ratio:.1f}x smaller); backend {info['backend']}, torch threads {torch.get_num_threads()}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}",
        flush=True,
    )
    result: dict[str, object] = {}
    for m in (int(b) for b in args.batches.split(",")):
        result.update(_bench_batch(m, w, w_packed, scale, args.rounds, backends))
    result.update(
        {
            "weight_memory_ratio": round(mem_ratio, 2),
            "n": n,
            "k": k,
            "rounds": args.rounds,
            "backend": backends[0],
            "backends": backends,
            "cpu_level": cpu_level(),
            "openmp": info["openmp"],
            "torch_threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
        }
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
