"""PackedLinear kernels (int4pack, C, torch reference) against the dequantized float computation."""

import pytest
import torch

from lowbit.kernels.qlinear import PackedLinear
from lowbit.quantizers import WeightSpec, quantize_weight

CASES = [(4, 128, True), (4, 32, False), (4, 0, True), (2, 64, True), (3, 128, False), (8, 128, True),
         (8, 0, False), (3, 0, True), (5, 32, True), (4, -1, True)]


def _layer(bits: int, group: int, sym: bool, n: int = 192, k: int = 256, bias: bool = True) -> PackedLinear:
    w = torch.randn(n, k)
    w[:, 7] *= 8  # an outlier column
    q = quantize_weight(w, WeightSpec(bits, group, sym))
    return PackedLinear.from_quantized(q, torch.randn(n) if bias else None)


@pytest.mark.parametrize("backend", ["auto", "int4pack"])
@pytest.mark.parametrize("bits,group,sym", CASES)
@pytest.mark.parametrize("rows", [1, 3, 20])
def test_kernels_match_dequantized_matmul(bits, group, sym, rows, backend, monkeypatch):
    monkeypatch.setenv("LOWBIT_QLINEAR", backend)
    m = _layer(bits, group, sym)
    x = torch.randn(rows, 256)
    ref = torch.nn.functional.linear(x.double(), m.dequantized_weight(torch.float64), m.bias.double())
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        m.release()
        y = m(x.to(dtype))
        assert y.dtype == dtype and y.shape == (rows, 192)
        err = (y.double() - ref).abs().max() / ref.abs().max()
        assert err < tol, (m.backend(), dtype, float(err.detach()))


def test_backends_chosen_and_state_dict_round_trip(monkeypatch):
    monkeypatch.setenv("LOWBIT_QLINEAR", "int4pack")
    m = _layer(4, 128, True)
    codes = m.codes().clone()
    sd_before = {k: v.clone() for k, v in m.state_dict().items()}
    m(torch.randn(1, 256, dtype=torch.bfloat16))
    assert m.backend() == "int4pack" and m.qweight.numel() == 0  # codes live only in the kernel's layout
    assert torch.equal(m.codes(), codes)
    sd = m.state_dict()
    assert all(torch.equal(sd[k], sd_before[k]) for k in sd_before)
    m2 = PackedLinear(256, 192, m.spec, bias=True)
    m2.load_state_dict(sd)
    x = torch.randn(2, 256)
    assert torch.allclose(m2(x), torch.nn.functional.linear(x, m.dequantized_weight(), m.bias), atol=1e-4)
    monkeypatch.setenv("LOWBIT_QLINEAR", "auto")
    m3 = _layer(4, 128, True)
    m3(torch.randn(1, 256, dtype=torch.bfloat16))
    assert m3.backend() == "c" and m3.qweight.numel() > 0  # gcc is there in CI and here


def test_forced_torch_backend(monkeypatch):
    monkeypatch.setenv("LOWBIT_QLINEAR", "torch")
    m = _layer(2, 64, False)
    x = torch.randn(1, 256)
    y = m(x)
    assert m.backend() == "torch"
    assert torch.allclose(y, torch.nn.functional.linear(x, m.dequantized_weight(), m.bias), atol=1e-5)
