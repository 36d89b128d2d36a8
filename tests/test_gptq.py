"""GPTQ: Hessian accumulation and error reduction against round-to-nearest."""

import pytest
import torch

from lowbit.ptq import HessianAccumulator, gptq_quantize
from lowbit.quantizers import WeightSpec, quantize_weight


def _problem(seed=0, d=128, o=96, n=2048):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g) / d**0.5
    x = torch.randn(n, d, generator=g) @ mix
    x[:, :4] *= 8  # a few outlier channels, as in real activations
    w = torch.randn(o, d, generator=g)
    acc = HessianAccumulator(d)
    for chunk in x.split(300):
        acc.add(chunk)
    return x, w, acc.H


def test_hessian_matches_definition():
    x, _, H = _problem()
    assert torch.allclose(H, 2 * x.T @ x / x.shape[0], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("group_size", [32, 0, -1])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_beats_rtn_on_output_error(bits, group_size, act_order):
    x, w, H = _problem()
    spec = WeightSpec(bits, group_size)
    q = gptq_quantize(w, H, spec, act_order=act_order)
    r = quantize_weight(w, spec)
    def err(wq):
        return (x @ (w - wq).T).pow(2).mean().item()
    assert err(q.dequantize()) < 0.6 * err(r.dequantize())
    assert q.codes.shape == w.shape and q.scales.shape == r.scales.shape
    assert int(q.codes.max()) < 2**bits


def test_gptq_codes_reproduce_its_weights_and_asym():
    x, w, H = _problem(1)
    q = gptq_quantize(w, H, WeightSpec(3, 32, symmetric=False))
    assert q.zeros.min() >= 0 and q.zeros.max() <= 7
    assert torch.equal(q.zeros, q.zeros.round())
    recon = q.dequantize()
    assert torch.isfinite(recon).all()


def test_dead_inputs_are_handled():
    x, w, _ = _problem(2)
    x[:, 5] = 0
    acc = HessianAccumulator(x.shape[1])
    acc.add(x)
    q = gptq_quantize(w, acc.H, WeightSpec(4, 32))
    assert torch.isfinite(q.dequantize()).all()
