"""Activation quantization, SmoothQuant, AWQ, CFP and recipes: exact folds, error reductions, clear errors."""

import pytest
import torch
import transformers as tf

from lowbit.errors import LowbitError
from lowbit.models import BlockInputs, block_linears, family_for
from lowbit.ptq.awq import awq_block
from lowbit.ptq.cfp import outlier_threshold, scale_activation_outliers
from lowbit.ptq.config import AWQConfig, RecipeConfig, RTNConfig, SmoothQuantConfig
from lowbit.ptq.pipeline import _rtn_block
from lowbit.ptq.recipe import build, load_recipe, parse
from lowbit.ptq.smoothquant import smooth_block
from lowbit.quantizers import WeightSpec
from lowbit.quantizers.activation import fake_quant_tokens, fp_activations, quantize_activations


def test_per_token_fake_quant_error_and_gradient():
    x = torch.randn(8, 64) * torch.logspace(-1, 1, 8)[:, None]  # tokens of very different scales
    e8 = (fake_quant_tokens(x, 8) - x).abs().amax(-1)
    e4 = (fake_quant_tokens(x, 4) - x).abs().amax(-1)
    amax = x.abs().amax(-1)
    assert (e8 <= amax / 127 / 2 + 1e-6).all() and (e4 <= amax / 7 / 2 + 1e-6).all()  # half a step per token
    assert (e4 > e8).all()
    xr = x.clone().requires_grad_(True)
    fake_quant_tokens(xr, 4).sum().backward()
    assert torch.equal(xr.grad, torch.ones_like(x))  # straight-through


def _block_and_inputs(outlier: float = 1.0):
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    model = tf.AutoModelForCausalLM.from_config(cfg).eval()
    fam = family_for("llama")
    from lowbit.models import capture_block_inputs

    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0) if p.dim() == 2 else None
        model.model.layers[0].input_layernorm.weight[:3] *= outlier  # outlier channels feeding q/k/v
    inputs = capture_block_inputs(model, fam, torch.randint(0, 300, (8, 32)), 4)
    return model, model.model.layers[0], inputs


def _outputs(block, inputs: BlockInputs) -> torch.Tensor:
    return torch.cat(list(inputs.outputs(block)))


def test_smoothquant_and_cfp_folds_keep_the_fp_function():
    model, block, inputs = _block_and_inputs(outlier=20.0)
    ref = _outputs(block, inputs)
    smooth_block(block, inputs, 0.5)
    assert torch.allclose(_outputs(block, inputs), ref, rtol=1e-4, atol=1e-4)
    counts = scale_activation_outliers(block, inputs)
    assert torch.allclose(_outputs(block, inputs), ref, rtol=1e-4, atol=1e-4)
    assert sum(counts.values()) >= 0


def test_smoothquant_helps_w8a8_with_outlier_channels():
    errs = {}
    for smooth in (False, True):
        model, block, inputs = _block_and_inputs(outlier=30.0)
        ref = _outputs(block, inputs)
        if smooth:
            smooth_block(block, inputs, 0.5)
        names = [f"model.layers.0.{n}" for n in block_linears(block)]
        quantize_activations(model, names, 4)
        qs = _rtn_block(block, RTNConfig(WeightSpec(8, 0)), inputs)
        for lin, q in zip(block_linears(block).values(), qs.values(), strict=True):
            lin.weight.data = q.dequantize()
        errs[smooth] = ((_outputs(block, inputs) - ref).norm() / ref.norm()).item()
    assert errs[True] < errs[False]


def test_awq_beats_rtn_at_3_bits():
    errs = {}
    for awq in (False, True):
        _, block, inputs = _block_and_inputs(outlier=10.0)
        ref = _outputs(block, inputs)
        spec = WeightSpec(3, 32)
        qs = awq_block(block, AWQConfig(RTNConfig(spec)), inputs) if awq else _rtn_block(block, RTNConfig(spec), inputs)
        for name, lin in block_linears(block).items():
            lin.weight.data = qs[name].dequantize()
        errs[awq] = ((_outputs(block, inputs) - ref).norm() / ref.norm()).item()
    assert errs[True] < errs[False]


def test_awq_scale_search_minimises_the_inspected_modules_output():
    # As llm-awq's auto_scale: q/k/v are judged on the attention output, gate/up on the MLP output, down on its own.
    from lowbit.ptq.awq import _fake_quant, inspected_module, module_calls, search_scale
    from lowbit.ptq.scaling import input_stats, scale_groups

    _, block, inputs = _block_and_inputs(outlier=10.0)
    groups = {g.consumers[0]: g for g in scale_groups(block)}
    assert [inspected_module(g) for g in groups.values()] == ["self_attn", "mlp", "self_attn.o_proj", "mlp.down_proj"]
    group, spec = groups["self_attn.q_proj"], WeightSpec(3, 32)
    mods = dict(block.named_modules())
    layers = [mods[c] for c in group.consumers]
    before = [lin.weight.data.clone() for lin in layers]
    calls = module_calls(block, "self_attn", inputs)
    assert len(calls) == len(inputs.hidden) and calls[0][2].shape == inputs.hidden[0].shape
    x_mean = input_stats(block, inputs, [group.consumers[0]])[group.consumers[0]].absmean
    s = search_scale(mods["self_attn"], calls, x_mean, layers, spec, 8)
    assert all(torch.equal(lin.weight.data, w) for lin, w in zip(layers, before, strict=True))  # restored

    def err(scale):
        for lin, w in zip(layers, before, strict=True):
            lin.weight.data = _fake_quant(w * scale, spec) / scale
        with torch.no_grad():
            e = sum((mods["self_attn"](*a, **k)[0] - ref).pow(2).sum().item() for a, k, ref in calls)
        for lin, w in zip(layers, before, strict=True):
            lin.weight.data = w
        return e

    grid = [x_mean.pow(i / 8) / (x_mean.pow(i / 8).max() * x_mean.pow(i / 8).min()).sqrt() for i in range(8)]
    assert err(s) <= min(err(g) for g in grid) + 1e-9 and err(s) < err(torch.ones_like(x_mean))


def test_cfp_threshold_separates_planted_outliers():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(4096, generator=g).abs()
    v[:5] = torch.tensor([40.0, 42.0, 45.0, 41.0, 43.0])
    thr = outlier_threshold(v)
    assert thr is not None and (v > thr).sum() == 5
    assert outlier_threshold(torch.ones(100)) is None


def test_fp_activations_switch():
    model, block, inputs = _block_and_inputs()
    ref = _outputs(block, inputs)
    quantize_activations(model, [f"model.layers.0.{n}" for n in block_linears(block)], 4)
    assert not torch.allclose(_outputs(block, inputs), ref)
    with fp_activations(model):
        assert torch.allclose(_outputs(block, inputs), ref)


@pytest.mark.parametrize("bad,msg", [
    ("awq+rotate+gptq", "rotate must come first"), ("awq+cbq", "cfp\\+cbq"), ("cfp+gptq", "before cbq"),
    ("rtn+gptq", "exactly one quantizer"), ("foo", "unknown method step"), ("smoothquant+awq+rtn", "pick one"),
    ("rotate", "exactly one quantizer"),
])
def test_wrong_recipes_are_clear_errors(bad, msg):
    with pytest.raises(LowbitError, match=msg):
        parse(bad)


def test_recipes_build_the_right_configs(tmp_path):
    spec = WeightSpec(4, 32)
    assert isinstance(build("gptq", spec), object) and type(build("rtn", spec)) is RTNConfig
    r = build("rotate+gptq", spec, act_bits=4, options={"gptq": {"damp": 0.05}})
    assert isinstance(r, RecipeConfig) and r.rotate and r.act_bits == 4 and r.quantizer.damp == 0.05
    s = build("smoothquant", spec)
    assert isinstance(s.quantizer, SmoothQuantConfig) and s.method == "smoothquant+rtn"
    c = build("cfp+cbq", spec, act_bits=8, options={"cbq": {"steps": 3}})
    assert c.quantizer.cfp and c.quantizer.act_bits == 8 and c.quantizer.steps == 3
    with pytest.raises(LowbitError, match="unknown cbq option"):
        build("cbq", spec, options={"cbq": {"stepz": 3}})
    f = tmp_path / "r.yaml"
    f.write_text("method: awq+gptq\nbits: 3\ngroup_size: 32\noptions:\n  awq: {n_grid: 4}\n")
    assert load_recipe(f)["options"]["awq"]["n_grid"] == 4
    f.write_text("bits: 3\n")
    with pytest.raises(LowbitError, match="method"):
        load_recipe(f)
