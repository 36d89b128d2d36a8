"""Configs for the post-training quantization methods, one frozen dataclass per method."""

from __future__ import annotations

from dataclasses import dataclass, field

from lowbit.quantizers import WeightSpec


@dataclass(frozen=True)
class RTNConfig:
    """Round-to-nearest with min-max ranges: no calibration data."""

    weight: WeightSpec = field(default_factory=WeightSpec)
    method = "rtn"
    needs_calibration = False


@dataclass(frozen=True)
class GPTQConfig:
    """GPTQ (Frantar et al., 2023): Hessian-aware sequential rounding."""

    weight: WeightSpec = field(default_factory=WeightSpec)
    damp: float = 0.01
    act_order: bool = True
    true_sequential: bool = False  # re-collect each stage's inputs after the earlier stages are quantized
    block_size: int = 128
    method = "gptq"
    needs_calibration = True


@dataclass(frozen=True)
class CalibConfig:
    """Calibration data: windows of `seq_len` tokens, `n_samples` of them, cut at random offsets."""

    n_samples: int = 128
    seq_len: int = 256
    batch_size: int = 16
    seed: int = 0
