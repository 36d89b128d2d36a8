"""The PTQ registry: quantize() takes every config (recipes too), and a new method is one module plus a decorator."""

from dataclasses import dataclass, field

import pytest
import torch

from lowbit import api
from lowbit.data import calibration_windows, read_text
from lowbit.models import block_linears, load_model
from lowbit.ptq import METHODS, RTNConfig, quantize
from lowbit.ptq.config import RecipeConfig
from lowbit.ptq.recipe import QUANTIZERS, SCALERS, build
from lowbit.ptq.registry import block_handler, model_handler, register_block
from lowbit.quantizers import WeightSpec, quantize_weight


def test_one_table_of_method_names():
    assert set(METHODS) == set(QUANTIZERS) | set(SCALERS) == {"rtn", "gptq", "cbq", "awq", "smoothquant"}
    for name, cls in METHODS.items():
        assert cls.method == name
        assert (block_handler(cls()) if model_handler(cls()) is None else model_handler(cls())) is not None


def test_unknown_config_is_a_type_error(tiny_models):
    m = load_model(tiny_models["llama"])
    with pytest.raises(TypeError, match="no handler for dict"):
        quantize(m.model, m.family, {"bits": 4})


def _tokens(m, calib_file):
    return calibration_windows(m.tokenizer, read_text(calib_file, "calibration"), 8, 32)


def test_quantize_applies_a_recipe_like_the_api(tiny_models, calib_file, tmp_path):
    """ptq.quantize(RecipeConfig) does the rotation and activation quantizers itself (it used to refuse them)."""
    config = build("rotate+gptq", WeightSpec(4, 32), act_bits=8)
    assert isinstance(config, RecipeConfig)
    m = load_model(tiny_models["llama"])
    tokens = _tokens(m, calib_file)
    res = quantize(m.model, m.family, config, tokens, progress=False)
    assert len(res.weights) == 2 * 7
    x = torch.randint(0, 4096, (1, 16))
    with torch.no_grad():
        ours = m.model(input_ids=x).logits
    from lowbit.ptq import CalibConfig

    api.quantize_dir(tiny_models["llama"], tmp_path / "q", config, calib_file, CalibConfig(8, 32, 16), progress=False)
    from lowbit.models.checkpoint import load

    with torch.no_grad():
        theirs = load(tmp_path / "q")(input_ids=x).logits
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=1e-4)


@dataclass(frozen=True)
class _SignConfig:
    """A toy method for the test: RTN at 2 bits per channel, whatever is asked."""

    weight: WeightSpec = field(default_factory=lambda: WeightSpec(2, 0))
    method = "toy"
    needs_calibration = False


def test_a_new_method_is_a_config_and_one_registration(tiny_models):
    @register_block(_SignConfig)
    def toy_block(block, config, inputs):
        return {n: quantize_weight(lin.weight.data, config.weight) for n, lin in block_linears(block).items()}

    m = load_model(tiny_models["qwen2"])
    res = quantize(m.model, m.family, _SignConfig(), progress=False)
    ref = load_model(tiny_models["qwen2"])
    expect = quantize(ref.model, ref.family, RTNConfig(WeightSpec(2, 0)), progress=False)
    assert res.weights.keys() == expect.weights.keys()
    assert all(torch.equal(res.weights[k].codes, expect.weights[k].codes) for k in res.weights)
