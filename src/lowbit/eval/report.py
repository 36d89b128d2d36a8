"""`lowbit report`: Pareto chart (bits per weight against quality, one line per method) and per-block error chart.

Input: the JSON table written by benchmarks/low_bit_table.py: {"models": {name: {"metric": "perplexity" or
"cosine", "fp": value, "rows": [{"method", "setting", "bits_per_weight", "act_bits", "value",
"block_errors": [...]}, ...]}}}.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from lowbit.errors import LowbitError, already_exists
from lowbit.models import Family, block_output

if TYPE_CHECKING:  # matplotlib is optional: imported by write_report when it draws
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def block_errors(fp_model: nn.Module, q_model: nn.Module, family: Family, ids: torch.Tensor) -> list[float]:
    """Relative error ||h_q - h_fp|| / ||h_fp|| of every block's output on token windows ids [N, L]."""
    outs: dict[str, list[torch.Tensor]] = {"fp": [], "q": []}

    def run(model: nn.Module, key: str) -> None:
        hooks = [b.register_forward_hook(lambda _m, _a, o: outs[key].append(block_output(o).detach().float()))
                 for b in family.blocks(model)]
        try:
            with torch.no_grad():
                extra = {"use_cache": False} if family.kind == "causal" else {}
                model(input_ids=ids, attention_mask=torch.ones_like(ids), **extra)
        finally:
            for h in hooks:
                h.remove()

    run(fp_model, "fp")
    run(q_model, "q")
    return [float((q - f).norm() / f.norm().clamp_min(1e-12)) for f, q in zip(outs["fp"], outs["q"], strict=True)]


def read_table(path: str | Path) -> dict:
    """The table from a JSON file (a whole file, or the last JSON line of a benchmark's output)."""
    p = Path(path)
    if not p.is_file():
        raise LowbitError(f"{p} not found; give the JSON written by benchmarks/low_bit_table.py")
    try:
        text = p.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError as e:
        raise LowbitError(f"{p} is not UTF-8 text ({e}); give the JSON written by benchmarks/low_bit_table.py") from e
    for cand in (text, text.splitlines()[-1] if text else ""):
        try:
            data = json.loads(cand)
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict) and isinstance(data.get("models"), dict):
            return data
    raise LowbitError(f"{p} holds no low-bit table (a JSON object with a 'models' mapping)")


def _pareto(ax: Axes, name: str, model: dict) -> None:
    rows = model["rows"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for m in methods:
        pts = sorted((r["bits_per_weight"], r["value"]) for r in rows
                     if r["method"] == m and r.get("act_bits", 16) == 16 and r["value"] is not None)
        line = None
        if pts:
            (line,) = ax.plot(*zip(*pts, strict=True), marker="o", label=m)
        for r in rows:
            if r["method"] == m and r.get("act_bits", 16) < 16 and r["value"] is not None:
                ax.scatter(r["bits_per_weight"], r["value"], marker="s" if r["act_bits"] == 8 else "^",
                           facecolors="none", edgecolors=line.get_color() if line else "k")
    ax.axhline(model["fp"], color="gray", ls="--", lw=1, label="full precision")
    ax.set_xlabel("average bits per weight (linear layers)")
    ax.set_ylabel(model["metric"])
    if model["metric"] == "perplexity":
        ax.set_yscale("log")
    ax.set_title(f"{name}: lines W4/W3/W2 A16; squares A8, triangles A4 (at 4.125 bits)")
    ax.legend(fontsize=7)


def _blocks(fig: Figure, name: str, model: dict) -> None:
    settings = list(dict.fromkeys(r["setting"] for r in model["rows"] if r.get("block_errors")))
    axes = fig.subplots(1, max(1, len(settings)), squeeze=False)[0]
    for ax, s in zip(axes, settings, strict=False):
        for r in model["rows"]:
            if r["setting"] == s and r.get("block_errors"):
                ax.plot(range(len(r["block_errors"])), r["block_errors"], marker=".", label=r["method"])
        ax.set_title(f"{name} {s}", fontsize=9)
        ax.set_xlabel("block")
        ax.set_yscale("log")
    axes[0].set_ylabel("relative error of block output")
    axes[0].legend(fontsize=7)


def write_report(table: str | Path, out: str | Path, model: str | None = None) -> list[Path]:
    """Draw the Pareto and per-block error charts of every model in the table; returns the PNG paths."""
    try:
        import matplotlib
    except ImportError as e:
        raise LowbitError("lowbit report draws with matplotlib: pip install matplotlib") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = read_table(table)
    names = [model] if model else list(data["models"])
    missing = [n for n in names if n not in data["models"]]
    if missing:
        raise LowbitError(f"no rows for model {missing[0]!r}; the table has {', '.join(data['models'])}")
    out = Path(out)
    for n in names:  # checked before drawing anything: lowbit never writes over a file
        for f in (out / f"pareto_{n}.png", out / f"block_errors_{n}.png"):
            if f.exists():
                raise already_exists(f, "--out directory (or remove the old charts)")
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in names:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        _pareto(ax, n, data["models"][n])
        paths.append(_save(fig, out / f"pareto_{n}.png"))
        fig = plt.figure(figsize=(18, 3.8))
        _blocks(fig, n, data["models"][n])
        paths.append(_save(fig, out / f"block_errors_{n}.png"))
        plt.close("all")
    return paths


def _save(fig: Figure, path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    fig.tight_layout()
    fig.savefig(tmp, dpi=110, format="png")
    tmp.replace(path)
    return path
