"""Binary-network training on MNIST-1D: STE vs ApproxSign vs LSQ vs BiPer (+ omega0 sweep; EDE optional), paired seeds.

MNIST-1D comes from ``mnist1d.make_dataset()`` (procedural, offline; ``get_dataset()`` would
download and is not used).  A small 1-D CNN keeps its first conv and last linear layer in float
(as BiPer does); the binary convs have 1-bit weights and activations.  Every estimator is trained
from the same float initialisation and data order per seed, so differences are paired.  BiPer
follows its two-stage recipe: stage 1 (real-valued sin(omega0 w) weights, binary activations) for
half the epochs, stage 2 (binarized weights) warm-started for the rest; the others train for the
same total number of epochs.  After training each binary model is converted to bit-packed
XNOR/popcount modules and its test predictions are compared with the simulated model's.

Prints progress (tqdm), a table, and finally ONE JSON line with the headline figures.

    python benchmarks/binary_training.py            # 10 seeds, 20 epochs (about 15-25 min on 2 cores)
    python benchmarks/binary_training.py --quick    # 3 seeds, fewer epochs
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import torch
from torch import nn

from lowbit.qat import (
    QATConfig,
    binary_weight_signs,
    clip_latent_weights_,
    convert,
    flip_rate,
    prepare,
    quantization_error,
    regularization_loss,
    set_biper_stage,
    set_ede_progress,
)

try:
    from tqdm import tqdm
except ImportError:  # pragma: no cover
    tqdm = None


def load_mnist1d() -> dict[str, torch.Tensor]:
    """MNIST-1D generated procedurally by the mnist1d package (no download)."""
    from mnist1d.data import get_dataset_args, make_dataset

    d = make_dataset(get_dataset_args())
    x, xt = torch.tensor(d["x"], dtype=torch.float32), torch.tensor(d["x_test"], dtype=torch.float32)
    mu, sd = x.mean(), x.std()
    return {
        "x": ((x - mu) / sd).unsqueeze(1),
        "y": torch.tensor(d["y"], dtype=torch.long),
        "x_test": ((xt - mu) / sd).unsqueeze(1),
        "y_test": torch.tensor(d["y_test"], dtype=torch.long),
    }


class Block(nn.Module):
    """Conv -> BN with a residual connection (Bi-Real style; the conv becomes binary)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(c, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm1d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bn(self.conv(x))


class Net(nn.Module):
    """Float stem conv, 4 binary residual blocks with max-pooling, float linear head."""

    def __init__(self, c: int = 64, length: int = 40, n_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv1d(1, c, 5, padding=2, bias=False), nn.BatchNorm1d(c))
        self.b1, self.b2, self.b3, self.b4 = Block(c), Block(c), Block(c), Block(c)
        self.pool = nn.MaxPool1d(2)
        self.head = nn.Linear(c * (length // 4), n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.pool(self.b1(x))
        x = self.pool(self.b2(x))
        x = self.b4(self.b3(x))
        return self.head(x.flatten(1))


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor]:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i : i + 500]).argmax(1) for i in range(0, len(x), 500)])
    return float((pred == y).float().mean()), pred


def train_one(job: dict) -> dict:
    """Train one (estimator, omega0, seed) run; returns accuracy, QE, flip rate, packed agreement."""
    torch.set_num_threads(job["threads"])
    data = job["data"]
    seed, est, epochs = job["seed"], job["estimator"], job["epochs"]
    torch.manual_seed(seed)
    float_model = Net(job["width"])
    if est == "float":
        model = float_model
    else:
        cfg = QATConfig(
            estimator=est,
            omega0=job.get("omega0", 20.0),
            biper_stage=1 if est == "biper" else 2,
            tau=job.get("tau", 0.0),
        )
        model = prepare(float_model, cfg)
    opt = torch.optim.Adam(model.parameters(), lr=job["lr"])
    total_steps = epochs * math.ceil(len(data["x"]) / job["batch"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=job["lr"], total_steps=total_steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    flips = []
    t0 = time.perf_counter()
    for epoch in range(epochs):
        if est == "biper" and epoch == epochs // 2:
            set_biper_stage(model, 2)  # warm-start stage 2 from stage 1
        if est == "ede":
            set_ede_progress(model, epoch / max(1, epochs - 1))
        model.train()
        before = binary_weight_signs(model) if est != "float" else None
        perm = torch.randperm(len(data["x"]), generator=gen)
        for i in range(0, len(perm), job["batch"]):
            idx = perm[i : i + job["batch"]]
            out = model(data["x"][idx])
            loss = loss_fn(out, data["y"][idx])
            if est == "biper":
                loss = loss + regularization_loss(model)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if est in ("ste", "approxsign"):
                clip_latent_weights_(model)
        if before is not None:
            flips.append(flip_rate(before, binary_weight_signs(model)))
    acc, pred = accuracy(model, data["x_test"], data["y_test"])
    res = {
        "estimator": est,
        "omega0": job.get("omega0"),
        "seed": seed,
        "acc": acc,
        "train_s": time.perf_counter() - t0,
    }
    if est != "float":
        res["qe"] = quantization_error(model)
        res["flip_last_epoch"] = flips[-1]
        packed = convert(model)
        acc_p, pred_p = accuracy(packed, data["x_test"], data["y_test"])
        res["packed_equal"] = bool(torch.equal(pred, pred_p))
        res["packed_acc"] = acc_p
    return res


def paired(a: list[float], b: list[float]) -> dict[str, float]:
    """Mean paired difference a - b, its standard error and the ratio (t statistic)."""
    d = [x - y for x, y in zip(a, b, strict=True)]
    mean = statistics.fmean(d)
    se = statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
    return {"mean": mean, "se": se, "t": mean / se if se and se > 0 else float("nan"), "n": len(d)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 seeds, 10 epochs, sweep 10/20/40 (a few minutes)")
    ap.add_argument("--seeds", type=int, default=None, help="number of paired seeds (default 10, quick 3)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per run (default 30, quick 12)")
    ap.add_argument("--sweep-seeds", type=int, default=None, help="seeds for omega0 != 20 (default 5, quick 2)")
    ap.add_argument("--width", type=int, default=32, help="channels of the 1-D CNN")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--omegas", type=str, default=None, help="BiPer omega0 sweep, e.g. 5,10,20,40")
    ap.add_argument("--estimators", type=str, default="ste,approxsign,lsq,biper")
    ap.add_argument("--main-omega", type=float, default=20.0, help="BiPer omega0 of the headline comparison")
    ap.add_argument("--seed-offset", type=int, default=0, help="first seed (fresh seeds for a confirmation run)")
    ap.add_argument("--workers", type=int, default=2, help="parallel processes (1 torch thread each)")
    ap.add_argument("--plot", type=str, default=None, help="save accuracy / QE vs omega0 plot to this PNG")
    args = ap.parse_args()

    n_seeds = args.seeds or (3 if args.quick else 10)
    epochs = args.epochs or (10 if args.quick else 20)
    sweep_seeds = min(n_seeds, args.sweep_seeds or (2 if args.quick else 5))
    omegas = [float(o) for o in (args.omegas or ("10,20,40" if args.quick else "5,10,20,40")).split(",")]
    estimators = [e.strip() for e in args.estimators.split(",") if e.strip()]
    for e in estimators:
        if e not in ("ste", "approxsign", "lsq", "biper", "ede", "float"):
            sys.exit(f"unknown estimator {e!r}; choose from ste, approxsign, lsq, biper, ede, float")

    t_start = time.perf_counter()
    data = load_mnist1d()
    base = {"data": data, "epochs": epochs, "width": args.width, "lr": args.lr, "batch": args.batch, "threads": 1}
    jobs = []
    main_om = args.main_omega
    for seed in range(args.seed_offset, args.seed_offset + n_seeds):
        for est in estimators + ["float"]:
            if est == "float" and "float" in estimators:
                continue
            if est == "biper":
                for om in omegas:
                    if om != main_om and seed >= args.seed_offset + sweep_seeds:
                        continue
                    jobs.append({**base, "seed": seed, "estimator": est, "omega0": om})
            else:
                jobs.append({**base, "seed": seed, "estimator": est})
    if "biper" in estimators and main_om not in omegas:
        sys.exit(f"--omegas must include --main-omega {main_om:g} (the headline BiPer setting)")
    print(
        f"MNIST-1D: train {tuple(data['x'].shape)}, test {tuple(data['x_test'].shape)}; {len(jobs)} runs "
        f"({n_seeds} seeds, {epochs} epochs, width {args.width}, workers {args.workers})",
        flush=True,
    )
    results = []
    ctx = get_context("spawn")
    bar = tqdm(total=len(jobs), desc="runs", file=sys.stderr) if tqdm else None
    with ProcessPoolExecutor(max_workers=max(1, args.workers), mp_context=ctx) as ex:
        for res in ex.map(train_one, jobs):
            results.append(res)
            if bar:
                bar.update(1)
                bar.set_postfix(est=res["estimator"], acc=f"{res['acc']:.3f}")
    if bar:
        bar.close()

    def accs(est: str, om: float | None = None) -> list[float]:
        rows = [r for r in results if r["estimator"] == est and (om is None or r["omega0"] == om)]
        return [r["acc"] for r in sorted(rows, key=lambda r: r["seed"])]

    def key(est: str, om: float | None) -> str:
        return est if est != "biper" or om == main_om else f"biper_w{om:g}"

    summary: dict[str, dict] = {}
    groups = [(e, None) for e in estimators if e != "biper"] + [("float", None)]
    if "biper" in estimators:
        groups += [("biper", om) for om in omegas]
    for est, om in groups:
        rows = [r for r in results if r["estimator"] == est and (om is None or r["omega0"] == om)]
        a = accs(est, om)
        entry = {"mean": statistics.fmean(a), "std": statistics.stdev(a) if len(a) > 1 else 0.0, "n": len(a)}
        if est != "float":
            entry["qe"] = statistics.fmean(r["qe"] for r in rows)
            entry["flip_last_epoch"] = statistics.fmean(r["flip_last_epoch"] for r in rows)
        summary[key(est, om)] = entry
    diffs = {}
    if "biper" in estimators:
        b20 = accs("biper", main_om)
        for e in estimators:
            if e != "biper":
                diffs[f"biper_minus_{e}"] = paired(b20, accs(e))
        for om in omegas:
            if om != main_om:
                a_om = accs("biper", om)
                diffs[f"biper_w{om:g}_minus_ste"] = paired(a_om, accs("ste")[: len(a_om)])
    for e in estimators:
        if e not in ("ste", "biper"):
            diffs[f"{e}_minus_ste"] = paired(accs(e), accs("ste"))
    binary_rows = [r for r in results if r["estimator"] != "float"]
    packed_all_equal = all(r["packed_equal"] for r in binary_rows)

    print("\nTest accuracy on MNIST-1D (1000 samples), mean +- std over seeds:")
    for k, v in summary.items():
        extra = f"  QE {v['qe']:.3f}  flips/epoch(last) {v['flip_last_epoch']:.4f}" if "qe" in v else ""
        print(f"  {k:14s} {100 * v['mean']:6.2f} +- {100 * v['std']:5.2f}  (n={v['n']}){extra}")
    print("Paired differences (percentage points, mean +- standard error, t = mean/SE):")
    for k, v in diffs.items():
        verdict = "beyond 2 SE" if abs(v["t"]) > 2 else "within 2 SE"
        print(f"  {k:24s} {100 * v['mean']:+6.2f} +- {100 * v['se']:4.2f}  t={v['t']:+5.2f}  ({verdict})")
    print(
        f"Converted (bit-packed XNOR/popcount) predictions equal the simulated model's on the whole test set: "
        f"{sum(r['packed_equal'] for r in binary_rows)}/{len(binary_rows)} runs"
    )
    wall = time.perf_counter() - t_start
    print(f"Total wall time {wall:.0f} s")

    if args.plot and "biper" in estimators:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax1 = plt.subplots(figsize=(5, 3.5))
        keys = [key("biper", om) for om in omegas]
        ax1.errorbar(
            omegas,
            [100 * summary[k]["mean"] for k in keys],
            yerr=[100 * summary[k]["std"] for k in keys],
            marker="o",
            color="C0",
        )
        ax1.set_xscale("log", base=2)
        ax1.set_xlabel("omega0")
        ax1.set_ylabel("test accuracy (%)", color="C0")
        ax2 = ax1.twinx()
        ax2.plot(omegas, [summary[k]["qe"] for k in keys], marker="s", color="C1")
        ax2.set_ylabel("quantization error (sum over layers)", color="C1")
        ax1.set_title("BiPer on MNIST-1D")
        fig.tight_layout()
        os.makedirs(os.path.dirname(os.path.abspath(args.plot)), exist_ok=True)
        fig.savefig(args.plot, dpi=120)
        print(f"plot saved to {args.plot}")

    out = {
        "dataset": "mnist1d.make_dataset (procedural)",
        "seeds": n_seeds,
        "seed_offset": args.seed_offset,
        "biper_main_omega0": main_om,
        "epochs": epochs,
        "accuracy": {k: {"mean": round(v["mean"], 4), "std": round(v["std"], 4)} for k, v in summary.items()},
        "quantization_error": {k: round(v["qe"], 4) for k, v in summary.items() if "qe" in v},
        "paired_differences": {
            k: {"mean": round(v["mean"], 4), "se": round(v["se"], 4), "t": round(v["t"], 2)} for k, v in diffs.items()
        },
        "packed_predictions_equal": packed_all_equal,
        "wall_s": round(wall, 1),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
