"""`lowbit disentangle`: train AE / beta-VAE / QLAE (Hsu et al., 2023) on offline data; print InfoMEC, MIG, DCI."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from lowbit.errors import LowbitError

__all__ = ["add_parser", "format_row"]

_COLS = ("recon_bce", "infom", "infoe", "infoc", "mig", "dci_d", "dci_c", "dci_i")


def format_row(row: dict) -> str:
    """One human-readable line of a result row."""
    vals = "  ".join(f"{k} {row[k]:.3f}" if k != "recon_bce" else f"{k} {row[k]:.1f}" for k in _COLS)
    return f"{row['model']:<12} seed {row['seed']}  steps {row['steps']}  {vals}  active {row['active']}"


def _run(a: argparse.Namespace) -> None:
    import torch

    from lowbit.latent.qlae import MODELS, run, save_traversal, traverse

    if a.model not in MODELS:
        raise LowbitError(f"unknown model {a.model!r}; choose one of {', '.join(MODELS)}")
    if a.minutes <= 0 and not a.max_steps:
        raise LowbitError("--minutes must be positive (or give --max-steps)")
    if a.threads:
        torch.set_num_threads(a.threads)
    out = Path(a.out) if a.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    extra = {"max_steps": a.max_steps} if a.max_steps else {}
    if a.beta is not None:
        extra["beta"] = a.beta
    row, net, aux = run(a.model, a.data, a.seed, a.minutes * 60.0, a.n_train, a.n_eval, a.width,
                        progress=not a.json, **extra)
    if out is not None:
        stem = f"{a.data}-{a.model}-seed{a.seed}"
        grid = traverse(net, aux["images"][0], aux["latents"])
        save_traversal(str(out / f"{stem}-traversal.png"), grid, f"{a.model} on {a.data}, seed {a.seed}")
        tmp = out / f".{stem}.pt.tmp{os.getpid()}"
        torch.save(net.state_dict(), tmp)
        os.replace(tmp, out / f"{stem}.pt")
    print(json.dumps(row) if a.json else format_row(row))


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the `disentangle` subcommand."""
    d = subparsers.add_parser("disentangle", help="train AE / beta-VAE / QLAE on offline sprites/shapes; InfoMEC")
    d.add_argument("--model", default="qlae", help="ae, vae, qlae, qlae_nowd, qlae_global or vqvae (default qlae)")
    d.add_argument("--data", default="sprites", choices=("sprites", "shapes"), help="offline dataset")
    d.add_argument("--seed", type=int, default=0, help="seed of the data sample and the model")
    d.add_argument("--minutes", type=float, default=3.0, help="training time budget (default 3)")
    d.add_argument("--max-steps", type=int, help="stop after this many steps (also within the time budget)")
    d.add_argument("--n-train", type=int, default=100_000, help="training images (default 100,000)")
    d.add_argument("--n-eval", type=int, default=10_000, help="evaluation images for the metrics (default 10,000)")
    d.add_argument("--width", type=int, default=16, help="base conv width of encoder/decoder (default 16)")
    d.add_argument("--beta", type=float, help="beta of the beta-VAE (default 4)")
    d.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    d.add_argument("--out", help="directory for the traversal PNG and the weights")
    d.add_argument("--json", action="store_true", help="print one JSON line")
    d.set_defaults(fn=_run)
    return d
