"""Smoke test of benchmarks/latent_tokenizers.py on the digits at a few training steps."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("skimage")


def _bench():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "latent_tokenizers.py"
    spec = importlib.util.spec_from_file_location("latent_tokenizers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_cells_and_summary() -> None:
    bench = _bench()
    data = bench.Digits()
    rows = [bench.run_one(q, 8, data, 4, 16, 0, 512) for q in ("FSQ", "GQ", "RVQ")]
    for r in rows:
        assert math.isfinite(r["psnr"]) and 0 <= r["usage"] <= 1 and r["usage_tokens"] == 6000
        assert r["usage_cap"] == pytest.approx(1 - math.exp(-6000 / r["head_codes"]))
    assert {"vae_sample_psnr", "gq_nearest_psnr", "kl_in_band"} <= set(rows[1])
    summary = bench.summarise(rows + [dict(rows[0], seed=1, psnr=rows[0]["psnr"] + 1.0)])
    assert summary["digits/8/FSQ"]["seeds"] == 2 and summary["digits/8/FSQ"]["psnr_sd"] > 0
    assert "| 8 | GQ |" in bench.table(summary, "digits")
