"""Packed binary XNOR/popcount GEMM vs float32 torch matmul, 4096 x 4096 weights, batch 1 and 64.

The packed time covers the whole binary layer: binarizing and packing the float activations,
XOR + popcount against the packed weights, and the per-output scale (``binary_linear``).  The
float time is ``F.linear`` on the same shapes with float32 weights (torch's default threads).
A and B are interleaved in rounds and the medians are compared, since timings on a shared
machine swing by 2-4x.

Ends with ONE JSON line: speedup_batch1, speedup_batch64 (float32 time / packed time), ...

    OMP_WAIT_POLICY=PASSIVE python benchmarks/binary_gemm.py [--rounds 15]
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


def _time(fn: Callable[[], object], iters: int) -> float:
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t) / iters


def _bench_batch(m: int, w: torch.Tensor, w_packed: torch.Tensor, scale: torch.Tensor, rounds: int) -> dict:
    """Interleaved float32 vs packed timings for one batch size."""
    k = w.shape[1]
    x = torch.randn(m, k)
    x_packed = B.pack_bits(x)
    # exactness: the packed layer equals the float +-1 matmul times scale, bit for bit
    w_sign = torch.where(w >= 0, 1.0, -1.0)
    exact = torch.equal(
        B.binary_linear(x, w_packed, k, scale), F.linear(torch.where(x >= 0, 1.0, -1.0), w_sign) * scale
    )

    def run_float() -> object:
        return F.linear(x, w)

    def run_packed() -> object:
        return B.binary_linear(x, w_packed, k, scale)

    def run_gemm() -> object:
        return B.binary_matmul(x_packed, w_packed, k)

    it_f = max(2, int(0.05 / max(_time(run_float, 2), 1e-6)))  # about 50 ms per timed block
    it_b = max(2, int(0.05 / max(_time(run_packed, 2), 1e-6)))
    tf, tb, tg = [], [], []
    for _ in range(rounds):
        tf.append(_time(run_float, it_f))
        tb.append(_time(run_packed, it_b))
        tg.append(_time(run_gemm, it_b))
    # the same kernel forced onto all threads, interleaved with float once more
    tf2, tb2 = [], []
    B.set_parallel_threshold(0)
    try:
        for _ in range(max(3, rounds // 3)):
            tf2.append(_time(run_float, it_f))
            tb2.append(_time(run_packed, it_b))
    finally:
        B.set_parallel_threshold(1 << 25)
    mf, mb, mg = statistics.median(tf), statistics.median(tb), statistics.median(tg)
    ratios = sorted(a / b for a, b in zip(tf, tb, strict=True))
    mt = statistics.median(tb2)
    print(
        f"batch {m:3d}: float32 {mf * 1e3:8.3f} ms | packed layer {mb * 1e3:7.3f} ms "
        f"(gemm only {mg * 1e3:7.3f} ms) | speedup {mf / mb:6.1f}x "
        f"[per-round ratios {ratios[0]:.1f}..{ratios[-1]:.1f}] | "
        f"packed on all threads {mt * 1e3:.3f} ms ({statistics.median(tf2) / mt:.1f}x) | exact {exact}",
        flush=True,
    )
    return {
        f"speedup_batch{m}": round(mf / mb, 2),
        f"float32_ms_batch{m}": round(mf * 1e3, 4),
        f"packed_ms_batch{m}": round(mb * 1e3, 4),
        f"packed_gemm_only_ms_batch{m}": round(mg * 1e3, 4),
        f"speedup_round_min_batch{m}": round(ratios[0], 2),
        f"speedup_round_max_batch{m}": round(ratios[-1], 2),
        f"speedup_all_threads_batch{m}": round(statistics.median(tf2) / mt, 2),
        f"exact_batch{m}": exact,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4096, help="output features")
    ap.add_argument("--k", type=int, default=4096, help="input features")
    ap.add_argument("--batches", type=str, default="1,64")
    ap.add_argument("--rounds", type=int, default=15, help="interleaved rounds (medians reported)")
    ap.add_argument("--torch-threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args()
    n, k = args.n, args.k
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

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
        result.update(_bench_batch(m, w, w_packed, scale, args.rounds))
    result.update(
        {
            "weight_memory_ratio": round(mem_ratio, 2),
            "n": n,
            "k": k,
            "rounds": args.rounds,
            "backend": info["backend"],
            "openmp": info["openmp"],
            "torch_threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
        }
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
