"""Gradient formulas of the QAT estimators against hand-computed values."""

import math

import pytest
import torch

from lowbit.qat import QATConfig, QuantLinear, approx_sign, biper_sign, grad_scale, lsq_codes, sign_ste
from lowbit.qat.estimators import round_ste


def _grad(fn, x, g=None):
    x = x.clone().requires_grad_(True)
    y = fn(x)
    y.backward(torch.ones_like(y) if g is None else g)
    return y.detach(), x.grad


def test_sign_ste_clipped_identity():
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0])
    y, g = _grad(lambda t: sign_ste(t, 1.0), x)
    assert y.tolist() == [-1, -1, -1, 1, 1, 1, 1]  # sign(0) = +1
    assert g.tolist() == [0, 1, 1, 1, 1, 1, 0]
    _, g = _grad(lambda t: sign_ste(t, 0.6), x)
    assert g.tolist() == [0, 0, 1, 1, 1, 0, 0]


def test_approx_sign_gradient():
    x = torch.tensor([-1.5, -0.75, -0.25, 0.0, 0.25, 0.75, 1.5])
    y, g = _grad(approx_sign, x, torch.full((7,), 2.0))
    assert y.tolist() == [-1, -1, -1, 1, 1, 1, 1]
    # 2 * max(0, 2 - 2|x|)
    assert g.tolist() == pytest.approx([0.0, 1.0, 3.0, 4.0, 3.0, 1.0, 0.0])


def test_biper_gradient_is_omega_cos():
    x = torch.tensor([0.01, 0.1, -0.2, 0.3])
    up = torch.tensor([1.0, -2.0, 0.5, 3.0])
    y, g = _grad(lambda t: biper_sign(t, 20.0), x, up)
    assert y.tolist() == [1, 1, 1, -1]  # sin(0.2) > 0, sin(2) > 0, sin(-4) > 0, sin(6) < 0
    expected = [u * 20 * math.cos(20 * v) for u, v in zip(up.tolist(), x.tolist(), strict=True)]
    assert g.tolist() == pytest.approx(expected, rel=1e-5)


def test_biper_forward_is_square_wave():
    omega = 7.0
    w = torch.linspace(-3, 3, 2001, dtype=torch.float64)
    phase = omega * w / math.pi
    w = w[(phase - phase.round()).abs() > 1e-6]  # stay off the zero crossings
    square = torch.where(torch.floor(omega * w / math.pi) % 2 == 0, 1.0, -1.0).to(torch.float64)
    assert torch.equal(biper_sign(w, omega), square)
    # period 2 pi / omega
    assert torch.equal(biper_sign(w + 2 * math.pi / omega, omega)[5:-5], square[5:-5])


def test_lsq_codes_and_step_gradient():
    x = torch.tensor([-3.0, -0.7, 0.2, 0.9, 5.0], requires_grad=True)
    s = torch.tensor(0.5, requires_grad=True)
    up = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    qn, qp = 2, 1  # 2-bit signed
    gscale = 1.0 / math.sqrt(x.numel() * qp)
    sg = grad_scale(s, gscale)
    wq = sg * lsq_codes(x, sg, qn, qp)
    (wq * up).sum().backward()
    # v = x/s = [-6, -1.4, 0.4, 1.8, 10]; codes clamp(round(v), -2, 1)
    assert (wq / 0.5).tolist() == [-2, -1, 0, 1, 1]
    # d wq / d x = 1 inside [-Qn, Qp], 0 outside
    assert x.grad.tolist() == [0.0, 2.0, 3.0, 0.0, 0.0]
    # d wq / d s = -Qn | round(v) - v | Qp  -> [-2, 0.4, -0.4, 1, 1], weighted by up, times 1/sqrt(N Qp)
    hand = (-2 * 1 + 0.4 * 2 - 0.4 * 3 + 1 * 4 + 1 * 5) * gscale
    assert s.grad.item() == pytest.approx(hand, rel=1e-5)


def test_binary_lsq_step_gradient():
    x = torch.tensor([-2.0, -0.3, 0.6, 1.5], requires_grad=True)
    s = torch.tensor(1.0, requires_grad=True)
    wq = s * lsq_codes(x, s, 1, 1)
    wq.sum().backward()
    assert wq.tolist() == [-1, -1, 1, 1]
    assert s.grad.item() == pytest.approx(-1 + (-1 + 0.3) + (1 - 0.6) + 1)
    assert x.grad.tolist() == [0, 1, 1, 0]


def test_round_ste():
    x = torch.tensor([-9.0, -0.26, 0.74, 9.0], requires_grad=True)
    y = round_ste(x, torch.tensor(0.5), 4, 3)
    y.sum().backward()
    assert y.tolist() == [-4, -1, 1, 3]
    assert x.grad.tolist() == [0, 2, 2, 0]  # 1/s inside, 0 outside


def test_lsq_layer_uses_gradient_scale():
    torch.manual_seed(0)
    lin = torch.nn.Linear(6, 3, bias=False)
    q = QuantLinear.from_float(lin, QATConfig(estimator="lsq", weight_bits=3, act_bits=None))
    qp = 3
    s0 = q.weight_quant.step.detach().clone()
    assert s0.item() == pytest.approx(2 * lin.weight.abs().mean().item() / math.sqrt(qp))
    x = torch.randn(4, 6)
    q(x).sum().backward()
    # recompute by hand: d/ds sum(x @ (s * codes)^T)
    v = (lin.weight / s0).detach()
    codes = v.round().clamp(-4, 3)
    inside = (v >= -4) & (v <= 3)
    dwq_ds = torch.where(inside, codes - v, codes)
    dl_dwq = torch.ones(4, 3).T @ x  # [3, 6]
    hand = (dl_dwq * dwq_ds).sum() / math.sqrt(lin.weight.numel() * qp)
    assert q.weight_quant.step.grad.item() == pytest.approx(hand.item(), rel=1e-4)


def test_biper_layer_stage1_and_stage2_weights():
    torch.manual_seed(0)
    lin = torch.nn.Linear(5, 2, bias=False)
    cfg = QATConfig(estimator="biper", omega0=20.0, biper_stage=1)
    q = QuantLinear.from_float(lin, cfg)
    w = q.weight.detach()
    assert torch.equal(q.weight_quant.codes(q.weight).detach(), torch.sin(20 * w))
    q.weight_quant.stage = 2
    codes = q.weight_quant.codes(q.weight)
    assert set(codes.detach().unique().tolist()) <= {-1.0, 1.0}
    codes.sum().backward()
    assert torch.allclose(q.weight.grad, 20 * torch.cos(20 * w))


def test_activation_std_norm_keeps_sign_changes_gradient():
    lin = torch.nn.Linear(4, 2, bias=False)
    q = QuantLinear.from_float(lin, QATConfig(estimator="biper"))
    x = torch.tensor([[0.1, -0.3, 0.2, 0.05], [3.0, -1.0, 0.5, -2.0]], requires_grad=True)
    codes, scale = q.act_quant(x)
    assert scale is None
    assert torch.equal(codes.detach(), torch.where(x >= 0, 1.0, -1.0))
    codes.sum().backward()
    xd = x.detach()
    std = torch.sqrt(xd.var(dim=1, keepdim=True) + 1e-5)
    z = xd / std
    gz = torch.clamp(2 - 2 * z.abs(), min=0)
    # chain rule through z = x / std(x) (std also depends on x)
    zz = x.detach().clone().requires_grad_(True)
    zq = zz / torch.sqrt(zz.var(dim=1, keepdim=True) + 1e-5)
    zq.backward(gz)
    assert torch.allclose(x.grad, zz.grad, atol=1e-6)


def test_ede_gradient_and_schedule():
    from lowbit.qat import ede_params, ede_sign

    t, k = ede_params(0.0)
    assert (t, k) == pytest.approx((0.1, 10.0))
    t, k = ede_params(1.0)
    assert (t, k) == pytest.approx((10.0, 1.0))
    assert ede_params(0.5) == pytest.approx((1.0, 1.0))
    x = torch.tensor([-0.5, 0.0, 0.2])
    y, g = _grad(lambda v: ede_sign(v, 2.0, 1.5), x)
    assert y.tolist() == [-1, 1, 1]
    assert g.tolist() == pytest.approx([1.5 * 2 * (1 - math.tanh(2 * v) ** 2) for v in x.tolist()], rel=1e-5)


def test_pact_clipping_gradient():
    from lowbit.qat import pact

    x = torch.tensor([-1.0, 0.4, 1.0, 3.0, 5.0], requires_grad=True)
    alpha = torch.tensor(3.0, requires_grad=True)
    y = pact(x, alpha, 2)  # 3 steps of 1.0 over [0, 3]
    assert y.tolist() == [0.0, 0.0, 1.0, 3.0, 3.0]
    y.sum().backward()
    assert alpha.grad.item() == 2.0  # x = 3 and x = 5 are >= alpha
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0, 0.0]
