"""Activation clips chosen on calibration data (lowbit.ptq.act_clip): lower output error than no clipping."""

from __future__ import annotations

import torch

from lowbit.models import load_model
from lowbit.ptq import quantize
from lowbit.ptq.act_clip import CLIP_GRID, best_clip, output_error
from lowbit.ptq.recipe import build
from lowbit.quantizers import WeightSpec
from lowbit.quantizers.activation import InputTransform, registry


def test_best_clip_clips_heavy_tails_and_8_bits_clip_less():
    w = torch.randn(64, 128)
    t = InputTransform(bits=4)
    heavy = torch.distributions.StudentT(2.0).sample((512, 128))
    c = best_clip(w, heavy, t)
    assert c < 1.0
    assert output_error(w, heavy, t, c) < 0.95 * output_error(w, heavy, t, 1.0)
    assert best_clip(w, heavy, InputTransform(bits=8)) >= c  # 8 bits has less rounding error to trade
    errors = [output_error(w, heavy, t, g) for g in CLIP_GRID]
    assert output_error(w, heavy, t, c) == min(errors)


def test_rotate_gptq_w4a4_records_searched_clips(tiny_models):
    loaded = load_model(tiny_models["llama"])
    ids = torch.randint(0, loaded.model.config.vocab_size, (8, 32))
    quantize(loaded.model, loaded.family, build("rotate+gptq", WeightSpec(4, 32), act_bits=4), ids, progress=False)
    clips = {n: t.clip for n, t in registry(loaded.model).items() if t.bits == 4}
    assert clips and set(clips.values()) <= set(CLIP_GRID)
    assert any(c < 1.0 for c in clips.values())
