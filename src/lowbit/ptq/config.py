"""Configs for the post-training quantization methods, one frozen dataclass per method."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from lowbit.data.text import check_calibration
from lowbit.errors import LowbitError
from lowbit.quantizers import WeightSpec


class MethodConfig(Protocol):
    """What every PTQ config offers: its method name, its weight format and whether it needs calibration data."""

    @property
    def method(self) -> str: ...

    @property
    def needs_calibration(self) -> bool: ...

    @property
    def weight(self) -> WeightSpec: ...


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

    def __post_init__(self) -> None:
        check_calibration(self.n_samples, self.seq_len, batch_size=self.batch_size)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise LowbitError(f"--calib-seed must be an integer, got {self.seed!r}")


class Wrapping:
    """A method that prepares a block and hands it to an inner quantizer (RTN or GPTQ): a recipe step."""

    inner: RTNConfig | GPTQConfig

    @property
    def weight(self) -> WeightSpec:
        """The weight format (the inner quantizer's)."""
        return self.inner.weight


@dataclass(frozen=True)
class SmoothQuantConfig(Wrapping):
    """SmoothQuant (Xiao et al., ICML 2023): move activation outliers into the weights, then quantize with `inner`."""

    inner: RTNConfig | GPTQConfig = field(default_factory=RTNConfig)
    alpha: float = 0.5  # migration strength: s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)
    method = "smoothquant"
    needs_calibration = True


@dataclass(frozen=True)
class AWQConfig(Wrapping):
    """AWQ (Lin et al., MLSys 2024): activation-aware scale search and weight clipping, then `inner` quantizes."""

    inner: RTNConfig | GPTQConfig = field(default_factory=RTNConfig)
    n_grid: int = 20  # alpha in 0, 1/n, ..., (n-1)/n for s = mean|x|^alpha
    clip: bool = True  # search a clipping ratio per output row and group
    clip_grid: int = 10
    max_shrink: float = 0.5
    sample_tokens: int = 512  # calibration tokens per layer for the clipping search (as llm-awq)
    method = "awq"
    needs_calibration = True


@dataclass(frozen=True)
class CBQConfig:
    """CBQ (Ding et al., ICLR 2025): cross-block reconstruction with LoRA-Rounding and learnable step sizes."""

    weight: WeightSpec = field(default_factory=WeightSpec)
    act_bits: int = 16  # activations quantized (per token, learnable clipping) during reconstruction
    window: int = 2  # blocks optimised jointly
    overlap: int = 1  # blocks shared by consecutive windows
    steps: int = 80  # optimiser steps per window
    batch_size: int = 2  # calibration windows per step
    rank: int = 5  # rank r of LoRA-Rounding's V = A1 A2
    lr: float = 1e-2  # Adam, rounding factors A1, A2
    scale_lr: float = 5e-3  # Adam, log step sizes (weights and activations)
    kl_weight: float = 1.0  # loss = L2 + kl_weight * KL + round_weight * rounding regulariser
    round_weight: float = 1e-2
    beta: tuple[float, float] = (20.0, 2.0)  # annealed exponent of the rounding regulariser
    warmup: float = 0.2  # fraction of steps before the regulariser starts
    init: str = "gptq"  # starting rounding and step sizes: "gptq" (GPTQ's solution) or "rtn" (AdaRound's)
    cfp: bool = False  # coarse-to-fine outlier pre-processing before the reconstruction
    cfp_lambda: float = 1.0
    seed: int = 0
    method = "cbq"
    needs_calibration = True


@dataclass(frozen=True)
class RecipeConfig:
    """A composition: optional Hadamard rotation and activation quantization around one quantizer config."""

    quantizer: MethodConfig  # RTNConfig | GPTQConfig | SmoothQuantConfig | AWQConfig | CBQConfig
    rotate: bool = False
    act_bits: int = 16
    name: str = ""
    rotate_seed: int = 0
    rotate_mode: str = "auto"  # lowbit.ptq.rotation.MODES
    kv_bits: int = 16  # per-token, per-head keys and values (lowbit.quantizers.kv)

    @property
    def needs_calibration(self) -> bool:
        """Whether the quantizer needs calibration data."""
        return bool(self.quantizer.needs_calibration)

    @property
    def weight(self) -> WeightSpec:
        """The weight format."""
        return self.quantizer.weight

    @property
    def method(self) -> str:
        """The recipe as written, e.g. rotate+gptq."""
        return self.name or self.quantizer.method


# The one table of method names: lowbit.ptq.recipe builds its steps from it (wrapping configs are the steps that
# go before a quantizer), lowbit.ptq.registry binds each config to its handler.
METHODS: dict[str, type] = {c.method: c for c in (RTNConfig, GPTQConfig, CBQConfig, SmoothQuantConfig, AWQConfig)}
