"""WeightSpec validation and round-to-nearest weight quantization."""

import pytest
import torch

from lowbit.errors import LowbitError
from lowbit.quantizers import WeightSpec, quantize_weight


@pytest.mark.parametrize("bits", [0, 1, 9, 16])
def test_bits_out_of_range(bits):
    with pytest.raises(LowbitError, match="bits must be an integer from 2 to 8"):
        WeightSpec(bits=bits)


@pytest.mark.parametrize("symmetric", [True, False])
def test_short_last_group_is_its_own_range(symmetric):
    """96 columns in groups of 64: a whole group and one of 32, each quantized as if alone."""
    w = torch.randn(8, 96)
    q = quantize_weight(w, WeightSpec(4, 64, symmetric))
    assert q.scales.shape == (8, 2) and q.codes.shape == (8, 96)
    head = quantize_weight(w[:, :64], WeightSpec(4, 64, symmetric))
    tail = quantize_weight(w[:, 64:], WeightSpec(4, 0, symmetric))
    assert torch.equal(q.codes, torch.cat([head.codes, tail.codes], 1))
    assert torch.equal(q.scales, torch.cat([head.scales, tail.scales], 1))
    assert torch.equal(q.dequantize(), torch.cat([head.dequantize(), tail.dequantize()], 1))


def test_nan_weights_rejected():
    w = torch.randn(4, 32)
    w[1, 3] = float("nan")
    with pytest.raises(LowbitError, match="NaN or Inf"):
        quantize_weight(w, WeightSpec(4, 32))


@pytest.mark.parametrize("group_size,shape", [(32, (8, 4)), (0, (8, 1)), (-1, (1, 1))])
def test_granularity_shapes_and_error(group_size, shape):
    w = torch.randn(8, 128)
    q = quantize_weight(w, WeightSpec(4, group_size))
    assert q.scales.shape == shape and q.codes.shape == (8, 128)
    rel = (q.dequantize() - w).norm() / w.norm()
    assert rel < (0.2 if group_size == -1 else 0.15)  # 4-bit steps of a Gaussian's range: ~0.1 relative


def test_finer_groups_and_more_bits_reduce_error():
    w = torch.randn(64, 256) * torch.rand(1, 256) * 4
    err = {(b, g): (quantize_weight(w, WeightSpec(b, g)).dequantize() - w).pow(2).mean().item()
           for b in (3, 4) for g in (32, 0)}
    assert err[(4, 32)] < err[(3, 32)] and err[(4, 32)] < err[(4, 0)] and err[(3, 32)] < err[(3, 0)]


def test_scales_are_fp16_exact():
    q = quantize_weight(torch.randn(4, 64), WeightSpec(3, 32))
    assert torch.equal(q.scales, q.scales.half().float())


@pytest.mark.parametrize("symmetric", [True, False])
def test_mse_range_search_never_worse_than_minmax(symmetric):
    w = torch.randn(32, 256) * torch.rand(1, 256) ** 3  # heavy-tailed groups, where clipping pays off
    def err(spec):
        return (quantize_weight(w, spec).dequantize() - w).abs().pow(2.4).sum(-1)
    mm, mse = err(WeightSpec(3, 64, symmetric)), err(WeightSpec(3, 64, symmetric, "mse"))
    assert (mse <= mm + 1e-6).all() and mse.sum() < 0.95 * mm.sum()


def test_unknown_range_rejected():
    with pytest.raises(LowbitError, match="unknown range estimation 'p99'"):
        WeightSpec(4, 128, True, "p99")
