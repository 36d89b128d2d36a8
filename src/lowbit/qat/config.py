"""Configuration of quantization-aware training (frozen dataclass, validated on construction)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ACT_ESTIMATORS", "ESTIMATORS", "LAYER_TYPES", "QATConfig"]

ESTIMATORS = ("ste", "lsq", "approxsign", "biper", "ede")
ACT_ESTIMATORS = ("ste", "lsq", "approxsign", "ede", "pact")
LAYER_TYPES = ("Linear", "Conv1d", "Conv2d")
WEIGHT_SCALES = ("learned", "mean_abs", "none")
BINARY_ONLY = ("approxsign", "biper", "ede")


@dataclass(frozen=True)
class QATConfig:
    """How ``lowbit.qat.prepare`` quantizes a model.

    estimator: weight estimator: "ste" (clipped straight-through), "lsq" (learned step size),
        "approxsign" (Bi-Real), "biper" (periodic square wave) or "ede" (IR-Net's error decay,
        advance it with ``set_ede_progress``).  "approxsign", "biper" and "ede" are binary.
    weight_bits: 1..8 (1 = binary +-1 weights times a per-output-channel scale).
    act_bits: 1..8, or None to keep activations in float.
    act_estimator: estimator for activations; None picks "approxsign" for biper/approxsign, and the
        weight estimator otherwise.  "pact" (learned clipping, unsigned, 2..8 bits) is for multi-bit
        activations after a ReLU-like non-linearity.
    pact_alpha: initial PACT clipping level (10 in the paper).
    act_std_norm: divide the input by its per-sample std during training before binarizing
        (ReCU / BiPer); None = on for biper only.  It never changes the forward sign.
    omega0: BiPer frequency (20 in all of the BiPer scripts).
    biper_stage: 1 = real-valued sin(omega0 w) weights (with binary activations), 2 = binarized.
    tau: weight of the BiPer regulariser tau * mean(sin^2(omega0 w)), see ``regularization_loss``.
    weight_scale: scale of binary weights (not lsq): "learned" per-output-channel alpha (BiPer,
        initialised to mean|w| per channel), "mean_abs" (XNOR-Net, recomputed each step), "none".
    ste_clip: the clipped STE passes gradients where |x| <= ste_clip.
    layer_types: which layer classes to quantize, names from ("Linear", "Conv1d", "Conv2d").
    keep_first / keep_last: keep the first / last matching layer in float (BiPer, XNOR-Net do).
    exclude: more layer names (fnmatch patterns on ``named_modules`` names) to keep in float.
    """

    estimator: str = "biper"
    weight_bits: int = 1
    act_bits: int | None = 1
    act_estimator: str | None = None
    act_std_norm: bool | None = None
    omega0: float = 20.0
    biper_stage: int = 2
    tau: float = 0.0
    weight_scale: str = "learned"
    ste_clip: float = 1.0
    pact_alpha: float = 10.0
    layer_types: tuple[str, ...] = LAYER_TYPES
    keep_first: bool = True
    keep_last: bool = True
    exclude: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {self.estimator!r}; choose one of {', '.join(map(repr, ESTIMATORS))}")
        if isinstance(self.weight_bits, bool) or not isinstance(self.weight_bits, int):
            raise TypeError(f"weight_bits must be an int in 1..8, got {self.weight_bits!r}")
        if not 1 <= self.weight_bits <= 8:
            raise ValueError(f"weight_bits={self.weight_bits} is out of range; use 1 (binary) to 8")
        if self.act_bits is not None:
            if isinstance(self.act_bits, bool) or not isinstance(self.act_bits, int):
                raise TypeError(f"act_bits must be an int in 1..8 or None (float), got {self.act_bits!r}")
            if not 1 <= self.act_bits <= 8:
                raise ValueError(f"act_bits={self.act_bits} is out of range; use 1..8, or None for float")
        if self.estimator in BINARY_ONLY and self.weight_bits != 1:
            raise ValueError(
                f"estimator {self.estimator!r} is binary-only but weight_bits={self.weight_bits}; "
                "set weight_bits=1 or use 'ste' / 'lsq' for multi-bit weights"
            )
        if self.act_estimator is not None and self.act_estimator not in ACT_ESTIMATORS:
            raise ValueError(
                f"unknown act_estimator {self.act_estimator!r}; choose one of "
                f"{', '.join(map(repr, ACT_ESTIMATORS))} or None (automatic)"
            )
        act_est = self.resolved_act_estimator
        if act_est in ("approxsign", "ede") and self.act_bits not in (1, None):
            raise ValueError(
                f"{'ApproxSign' if act_est == 'approxsign' else 'EDE'} activations are binary but "
                f"act_bits={self.act_bits}; set act_bits=1 or act_estimator='ste' / 'lsq' / 'pact'"
            )
        if act_est == "pact" and self.act_bits == 1:
            raise ValueError("PACT needs act_bits >= 2; for binary activations use 'approxsign', 'ste' or 'ede'")
        if not self.pact_alpha > 0:
            raise ValueError(f"pact_alpha must be positive, got {self.pact_alpha}")
        if not self.omega0 > 0:
            raise ValueError(f"omega0 must be positive (BiPer uses 20), got {self.omega0}")
        if self.biper_stage not in (1, 2):
            raise ValueError(f"biper_stage must be 1 (real-valued sin weights) or 2 (binary), got {self.biper_stage}")
        if self.tau < 0:
            raise ValueError(f"tau must be >= 0, got {self.tau}")
        if self.weight_scale not in WEIGHT_SCALES:
            raise ValueError(
                f"unknown weight_scale {self.weight_scale!r}; choose one of {', '.join(map(repr, WEIGHT_SCALES))}"
            )
        if not self.ste_clip > 0:
            raise ValueError(f"ste_clip must be positive, got {self.ste_clip}")
        bad = [t for t in self.layer_types if t not in LAYER_TYPES]
        if bad or not self.layer_types:
            raise ValueError(f"layer_types {tuple(self.layer_types)!r} must be a non-empty subset of {LAYER_TYPES!r}")

    @property
    def resolved_act_estimator(self) -> str:
        """Activation estimator after applying the automatic choice."""
        if self.act_estimator is not None:
            return self.act_estimator
        return {"biper": "approxsign", "approxsign": "approxsign", "ste": "ste", "lsq": "lsq", "ede": "ede"}[
            self.estimator
        ]

    @property
    def resolved_act_std_norm(self) -> bool:
        """Whether to divide activations by their per-sample std during training."""
        if self.act_std_norm is not None:
            return bool(self.act_std_norm)
        return self.estimator == "biper" and self.act_bits == 1
