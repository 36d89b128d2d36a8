"""Recipes: compose rotation, outlier handling and a quantizer ("rotate+gptq", "awq+gptq", "cfp+cbq", ...).

A recipe is written as steps joined by '+', in order: an optional `rotate` (QuaRot), then optionally
`smoothquant` or `awq` (before rtn/gptq) or `cfp` (before cbq), then exactly one quantizer (rtn, gptq or
cbq). `awq` and `smoothquant` alone mean "+rtn". Activation bits apply to the whole model, KV-cache bits to
every attention layer (keys and values per token and head; Hadamard-rotated keys when the recipe rotates).
A small YAML file can give the same, with per-step options:

    method: rotate+gptq
    bits: 4
    group_size: 128
    act_bits: 4
    kv_bits: 8
    options: {gptq: {damp: 0.01}, rotate: {seed: 0, mode: auto}}

`rotate` rotates a pre-norm decoder's residual stream (QuaRot) and, on encoders, the input of every linear
layer online (mode `online`, see lowbit.ptq.rotation).
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import torch
from torch import nn

from lowbit.errors import LowbitError
from lowbit.models import Family, block_linears
from lowbit.ptq.config import METHODS, MethodConfig, RecipeConfig, Wrapping
from lowbit.ptq.pipeline import apply
from lowbit.ptq.registry import QuantResult, RunOptions, register_model
from lowbit.quantizers import WeightSpec
from lowbit.quantizers.activation import check_act_bits, quantize_activations
from lowbit.quantizers.kv import check_kv_bits, quantize_kv

QUANTIZERS = {name: cls for name, cls in METHODS.items() if not issubclass(cls, Wrapping)}
SCALERS = {name: cls for name, cls in METHODS.items() if issubclass(cls, Wrapping)}
STEPS = ("rotate", *SCALERS, "cfp", *QUANTIZERS)
ALIASES = {"awq": "awq+rtn", "smoothquant": "smoothquant+rtn"}
EXAMPLES = "rtn, gptq, awq, smoothquant, cbq, rotate+gptq, awq+gptq, smoothquant+rtn, cfp+cbq, rotate+cbq"
RECIPE_KEYS = ("method", "bits", "group_size", "act_bits", "kv_bits", "symmetric", "range", "options")


def parse(method: str) -> list[str]:
    """The steps of a recipe string, checked for order and compatibility (clear errors otherwise)."""
    method = ALIASES.get(method.strip().lower(), method.strip().lower())
    steps = [s.strip() for s in method.split("+")]
    bad = [s for s in steps if s not in STEPS]
    if bad or not steps:
        raise LowbitError(f"unknown method step {bad[0] if bad else method!r}; steps are {', '.join(STEPS)} "
                          f"(e.g. {EXAMPLES})")
    if len(set(steps)) != len(steps):
        raise LowbitError(f"{method}: a step appears twice")
    quant = [s for s in steps if s in QUANTIZERS]
    if len(quant) != 1 or steps[-1] not in QUANTIZERS:
        raise LowbitError(f"{method}: a recipe ends with exactly one quantizer (rtn, gptq or cbq), e.g. {EXAMPLES}")
    if "rotate" in steps and steps[0] != "rotate":
        raise LowbitError(f"{method}: rotate must come first (it changes the model the other steps calibrate)")
    scalers = [s for s in steps if s in SCALERS]
    if len(scalers) > 1:
        raise LowbitError(f"{method}: smoothquant and awq both rescale the same channels; pick one")
    if scalers and quant[0] == "cbq":
        raise LowbitError(f"{method}: CBQ handles outliers with its own pre-processing; use cfp+cbq")
    if scalers and steps[steps.index(scalers[0]) + 1] not in ("rtn", "gptq"):
        raise LowbitError(f"{method}: {scalers[0]} goes directly before rtn or gptq")
    if "cfp" in steps and steps[steps.index("cfp") + 1] != "cbq":
        raise LowbitError(f"{method}: cfp is CBQ's pre-processing and goes directly before cbq")
    return steps


def _options(step: str, cls: type, opts: dict) -> dict:
    given = dict(opts.get(step) or {})
    names = {f.name for f in fields(cls)} - {"weight", "inner"}
    bad = sorted(set(given) - names)
    if bad:
        raise LowbitError(f"unknown {step} option(s) {', '.join(bad)}; known: {', '.join(sorted(names))}")
    if "beta" in given:
        given["beta"] = tuple(given["beta"])
    return given


def build(method: str, weight: WeightSpec, act_bits: int = 16, options: dict | None = None,
          kv_bits: int = 16) -> MethodConfig:
    """The config for a recipe: a plain RTN/GPTQ config when nothing else is asked, else a RecipeConfig."""
    steps = parse(method)
    check_act_bits(act_bits)
    check_kv_bits(kv_bits)
    opts = options or {}
    unknown = sorted(set(opts) - set(STEPS))
    if unknown:
        raise LowbitError(f"options given for {', '.join(unknown)}, which is not a step; steps: {', '.join(STEPS)}")
    qname = steps[-1]
    extra = _options(qname, QUANTIZERS[qname], opts)
    if qname == "cbq":
        extra.update(act_bits=act_bits, cfp="cfp" in steps)
    config: MethodConfig = QUANTIZERS[qname](weight=weight, **extra)
    for s in steps:
        if s in SCALERS:
            config = SCALERS[s](inner=config, **_options(s, SCALERS[s], opts))
    rotate = "rotate" in steps
    rot = dict(opts.get("rotate") or {})
    bad = sorted(set(rot) - {"seed", "mode"})
    if bad:
        raise LowbitError(f"unknown rotate option(s) {', '.join(bad)}; known: mode, seed")
    from lowbit.ptq.rotation import check_mode

    mode = check_mode(str(rot.get("mode", "auto")))  # fails before any model is loaded
    if not rotate and act_bits == 16 and kv_bits == 16 and len(steps) == 1 and qname != "cbq":
        return config
    return RecipeConfig(config, rotate=rotate, act_bits=act_bits, name="+".join(steps),
                        rotate_seed=int(rot.get("seed", 0)), rotate_mode=mode,
                        kv_bits=kv_bits)


def load_recipe(path: str | Path) -> dict:
    """Read a YAML recipe file into keyword arguments (method, bits, group_size, act_bits, ...)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise LowbitError(f"recipe file {p} not found")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise LowbitError(f"{p} is not valid YAML: {e}") from e
    if not isinstance(data, dict) or "method" not in data:
        raise LowbitError(f"{p}: a recipe is a mapping with at least `method:` (e.g. method: rotate+gptq)")
    bad = sorted(set(data) - set(RECIPE_KEYS))
    if bad:
        raise LowbitError(f"{p}: unknown key(s) {', '.join(bad)}; known: {', '.join(RECIPE_KEYS)}")
    for key, want, ok in RECIPE_TYPES:
        if key in data and not ok(data[key]):
            raise LowbitError(f"{p}: {key} is {data[key]!r}; it must be {want} (values are never coerced)")
    return data


def _int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


RECIPE_TYPES = (("method", "a string such as rotate+gptq", lambda v: isinstance(v, str)),
                ("bits", "an integer", _int), ("group_size", "an integer", _int), ("act_bits", "an integer", _int),
                ("kv_bits", "an integer", _int), ("symmetric", "true or false", lambda v: isinstance(v, bool)),
                ("range", "minmax or mse", lambda v: isinstance(v, str)),
                ("options", "a mapping of step to options", lambda v: v is None or isinstance(v, dict)))


def prepare(model: nn.Module, family: Family, config: RecipeConfig, prefix: str) -> None:
    """Model-level steps before calibration: rotation (fp function kept), activation and KV-cache quantizers."""
    from lowbit.ptq.rotation import rotate_model

    if config.kv_bits < 16:  # checked first: an encoder fails before any work
        quantize_kv(model, family, config.kv_bits, hadamard=config.rotate)
    if config.rotate:
        rotate_model(model, family, config.rotate_seed, prefix, config.rotate_mode)
    names = [f"{prefix}.{i}.{n}" for i, b in enumerate(family.blocks(model)) for n in block_linears(b)]
    quantize_activations(model, names, config.act_bits)


@register_model(RecipeConfig)
def run_recipe(model: nn.Module, family: Family, config: RecipeConfig, calib_tokens: torch.Tensor | None,
               options: RunOptions) -> QuantResult:
    """The model-level steps (rotation, activation and KV-cache quantizers), then the recipe's quantizer."""
    prepare(model, family, config, family.blocks_prefix(model))
    return apply(model, family, config.quantizer, calib_tokens, options)  # validated by quantize() already
