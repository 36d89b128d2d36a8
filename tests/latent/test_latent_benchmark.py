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


def test_dead_code_threshold_scales_with_the_uniform_share() -> None:
    bench = _bench()
    vq, _ = bench.make_quantizer("VQ", 8, tokens_per_step=256)
    assert vq.dead_code_threshold == pytest.approx(bench.DEAD_SHARE)  # a uniform code gets 1 hit per step
    vq16, _ = bench.make_quantizer("VQ", 16, tokens_per_step=512)
    assert vq16.dead_code_threshold == pytest.approx(bench.DEAD_SHARE * 512 / 65536)
    rvq, _ = bench.make_quantizer("RVQ", 16, tokens_per_step=512)
    assert rvq.layers[0].dead_code_threshold == pytest.approx(bench.DEAD_SHARE * 2)  # 2 stages of 256 codes


def test_summarise_quality_reports_usage_at_every_rate(capsys) -> None:
    bench = _bench()
    rows = [
        {"dataset": "patches", "quantizer": "FSQ", "bits": b, "seed": 0, "psnr": 20.0, "ssim": 0.5, "usage": 0.9,
         "perplexity": 9.0, "usage_cap": 1.0, "usage_tokens": 100, "train_s": 1.0}
        for b in (8, 12)
    ]  # fmt: skip
    headline, report = {}, {}
    bench.summarise_quality(rows, [8, 12], ["patches"], headline, report)
    assert headline["usage_8bit_patches"]["FSQ"] == [0.9, 1.0] and "usage_12bit_patches" in headline
    assert headline["psnr_12bit_patches"] == {"FSQ": 20.0} and len(report["rows"]) == 2
    assert "| 12 | FSQ |" in capsys.readouterr().err


def test_load_rows_from_a_cut_off_log(tmp_path) -> None:
    bench = _bench()
    log = tmp_path / "run.txt"
    log.write_text('{"dataset": "digits", "quantizer": "FSQ", "bits": 8, "seed": 0, "psnr": 12.0}\nTraceback\n')
    assert bench.load_rows(log) == [{"dataset": "digits", "quantizer": "FSQ", "bits": 8, "seed": 0, "psnr": 12.0}]


def test_gq_variants_split_the_token_bits_into_groups() -> None:
    bench = _bench()
    for name, groups in (("GQ", 1), ("GQ2", 2), ("GQ4", 4)):
        q, ch = bench.make_quantizer(name, 16)
        assert ch == 16 and q.num_groups == groups and q.codebook_size == 1 << (16 // groups)
        assert q.tdc.target == 16 / groups
    with pytest.raises(ValueError, match="do not split"):
        bench.make_quantizer("GQ4", 10)
    row = bench.run_one("GQ2", 8, bench.Digits(), 4, 16, 0, 512, sigma=0.1, tag=" t")
    assert row["quantizer"] == "GQ2@0.1 t" and row["head_codes"] == 16 and row["kl_target"] == 4
    assert 0 < row["usage_joint"] <= 1 and row["usage_joint_cap"] == pytest.approx(1 - math.exp(-6000 / 256))
    assert row["kl_bits_carried"] <= min(row["kl_bits_mean"], 4.0) + 1e-6


def test_calibrate_sigma_keeps_the_largest_sigma_that_reaches_the_band(monkeypatch) -> None:
    bench = _bench()
    kl = {0.15: 10.0, 0.1: 15.6, 0.05: 20.0}  # mean KL per group (bits) for each sigma; target 16, band from 15.5
    monkeypatch.setattr(bench, "train_model", lambda *a: {"sigma": a[-1], "train_s": 0.0})
    monkeypatch.setattr(bench, "gq_kl_stats", lambda m, data: {"kl_target": 16.0, "kl_bits_mean": kl[m["sigma"]]})
    cal = bench.calibrate_sigma("GQ", 16, None, 1, 1, [0.05, 0.15, 0.1], 100)
    assert cal["sigma"] == 0.1 and [t["sigma"] for t in cal["trials"]] == [0.15, 0.1]
    kl[0.1] = 12.0
    cal = bench.calibrate_sigma("GQ", 16, None, 1, 1, [0.15, 0.1], 100)
    assert cal["sigma"] == 0.1 and cal["reached"] is False and [t["kl_bits_mean"] for t in cal["trials"]] == [10, 12]
