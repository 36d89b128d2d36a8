"""Disentanglement benchmark: AE, beta-VAE, QLAE (Hsu et al., 2023) and ablations on offline dSprites / shapes.

Each (model, seed) trains for a wall-clock budget on ``--n-train`` generated images and is evaluated on 10,000
held-out images (InfoM/InfoE/InfoC, MIG, DCI, reconstruction BCE). Runs are interleaved (seed-major) and run in
``--jobs`` single-threaded worker processes, so every model sees the same machine load. Writes a table, raw rows
(JSON) and traversal PNGs (seed 0) and ends with ONE JSON line of the per-model means.

    python benchmarks/disentanglement.py --minutes 2.5 --seeds 0,1,2 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np

COLS = ("recon_bce", "infom", "infoe", "infoc", "mig", "dci_d", "dci_c", "dci_i", "steps")


def _work(job: tuple) -> dict:
    """Train and evaluate one (model, seed) in a worker; save the traversal for seed 0."""
    import torch

    torch.set_num_threads(1)
    from lowbit.latent.qlae import run, save_traversal, traverse

    model, seed, a = job
    extra = {"beta": a["beta"]} if model == "vae" else {}
    row, net, aux = run(model, a["data"], seed, a["minutes"] * 60.0, a["n_train"], a["n_eval"], a["width"],
                        progress=False, **extra)
    row["nmi"] = np.round(aux["nmi"], 4).tolist()
    if seed == a["seeds"][0]:
        path = Path(a["out"]) / f"disentanglement_traversal_{a['data']}_{model}.png"
        save_traversal(str(path), traverse(net, aux["images"][0], aux["latents"]),
                       f"{model} on {a['data']} (seed {seed}): rows = latents, columns = values")
    print(f"[{time.strftime('%H:%M:%S')}] {model} seed {seed}: steps {row['steps']} recon {row['recon_bce']:.1f} "
          f"InfoM {row['infom']:.3f} InfoE {row['infoe']:.3f} InfoC {row['infoc']:.3f} MIG {row['mig']:.3f} "
          f"(InfoMEC {row['infomec_s']:.1f} s)", flush=True)
    return row


def summarise(rows: list[dict], models: list[str]) -> dict:
    """Mean and std over seeds per model and column."""
    out = {}
    for m in models:
        sub = [r for r in rows if r["model"] == m]
        if sub:
            out[m] = {c: (float(np.mean([r[c] for r in sub])), float(np.std([r[c] for r in sub]))) for c in COLS}
            out[m]["seeds"] = len(sub)
    return out


def table(summary: dict) -> str:
    """Markdown table of mean +- std."""
    head = "| model | seeds | recon BCE (nats/img) | InfoM | InfoE | InfoC | MIG | DCI D | DCI C | DCI I | steps |"
    lines = [head, "|" + "---|" * 12]
    for m, s in summary.items():
        cells = [f"{s['recon_bce'][0]:.1f} ± {s['recon_bce'][1]:.1f}"]
        cells += [f"{s[c][0]:.3f} ± {s[c][1]:.3f}" for c in COLS[1:-1]]
        cells.append(f"{s['steps'][0]:.0f}")
        lines.append(f"| {m} | {s['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_nmi(rows: list[dict], path: Path, data: str) -> None:
    """Heatmaps of NMI (factors x latents) of the first seed of each model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = {}
    for r in rows:
        first.setdefault(r["model"], r)
    fig, axes = plt.subplots(1, len(first), figsize=(3.2 * len(first), 2.6), squeeze=False)
    for ax, (m, r) in zip(axes[0], first.items(), strict=True):
        im = ax.imshow(np.array(r["nmi"]), vmin=0, vmax=1, cmap="viridis")
        ax.set_title(f"{m} (seed {r['seed']})\nInfoM {r['infom']:.2f} InfoC {r['infoc']:.2f}", fontsize=8)
        ax.set_xlabel("latent", fontsize=8)
        ax.set_ylabel("factor", fontsize=8)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="NMI")
    fig.suptitle(f"NMI(factor; latent) on {data}", fontsize=9)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=90, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def main() -> None:
    """Run the benchmark (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="ae,vae,qlae", help="comma-separated models")
    p.add_argument("--ablations", default="", help="extra models, e.g. qlae_nowd,qlae_global,vqvae")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--data", default="sprites", choices=("sprites", "shapes"))
    p.add_argument("--minutes", type=float, default=2.5, help="training budget per model and seed")
    p.add_argument("--n-train", type=int, default=100_000)
    p.add_argument("--n-eval", type=int, default=10_000)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--beta", type=float, default=4.0)
    p.add_argument("--jobs", type=int, default=2, help="worker processes (one thread each)")
    p.add_argument("--out", default="docs/results")
    p.add_argument("--tag", default="", help="suffix of the output files")
    p.add_argument("--plot-only", help="only redraw the NMI heatmaps from this results JSON")
    a = p.parse_args()
    if a.plot_only:
        res = json.loads(Path(a.plot_only).read_text())
        plot_nmi(res["rows"], Path(a.plot_only).with_suffix(".nmi.png"), res["args"]["data"])
        return
    models = [m for m in (a.models + "," + a.ablations).split(",") if m]
    seeds = [int(s) for s in a.seeds.split(",")]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    args = {"data": a.data, "minutes": a.minutes, "n_train": a.n_train, "n_eval": a.n_eval, "width": a.width,
            "beta": a.beta, "out": str(out), "seeds": seeds}
    from lowbit.latent.qlae import load_images

    for s in seeds:  # build (and cache) the data once, before the workers start
        load_images(a.data, a.n_train, s)
        load_images(a.data, a.n_eval, 10_000 + s)
    jobs = [(m, s, args) for s in seeds for m in models]
    t0 = time.time()
    with mp.get_context("spawn").Pool(a.jobs) as pool:
        rows = pool.map(_work, jobs, chunksize=1)
    summary = summarise(rows, models)
    tag = f"_{a.tag}" if a.tag else ""
    _atomic_write(out / f"disentanglement{tag}.json", json.dumps({"args": args, "rows": rows, "summary": summary},
                                                                 indent=1))
    plot_nmi(rows, out / f"disentanglement{tag}.nmi.png", a.data)
    text = table(summary)
    print("\n" + text)
    ref = [m for m in ("ae", "vae") if m in summary]
    if "qlae" in summary:
        for m in ref:
            print(f"QLAE / {m}: InfoM {summary['qlae']['infom'][0] / max(summary[m]['infom'][0], 1e-9):.2f}x, "
                  f"InfoC {summary['qlae']['infoc'][0] / max(summary[m]['infoc'][0], 1e-9):.2f}x, "
                  f"recon BCE {summary['qlae']['recon_bce'][0] / summary[m]['recon_bce'][0]:.2f}x")
    _atomic_write(out / f"disentanglement{tag}.md", text + f"\n\nwall time {time.time() - t0:.0f} s; args {args}\n")
    print(json.dumps({m: {c: round(v[0], 4) for c, v in s.items() if c != "seeds"} for m, s in summary.items()}))


if __name__ == "__main__":
    main()
