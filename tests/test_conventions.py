"""The shared conventions: one straight-through helper (lowbit.quantizers.ste) and one integer convention
(lowbit.formats: unsigned stored codes, signed ranges), checked bit for bit against the code they replaced."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from lowbit.formats import (
    dequantize,
    fit_scale_zero,
    qmax,
    quantize,
    signed_range,
    symmetric_zero,
    to_signed,
    to_unsigned,
)
from lowbit.qat.estimators import lsq_codes, pact
from lowbit.qat.estimators import round_ste as qat_round_ste
from lowbit.qat.modules import _qrange
from lowbit.quantizers import activation
from lowbit.quantizers.activation import fake_quant_tokens
from lowbit.quantizers.ste import round_ste, straight_through


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bit patterns (so that -0.0 and +0.0 differ)."""
    return t.detach().contiguous().view(torch.int32 if t.dtype == torch.float32 else torch.int64)


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(_bits(a), _bits(b))


def _fwd_bwd(fn, *inputs: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """fn(*inputs) and the gradients of sum(fn * g) for a fixed random g."""
    leaves = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
    out = fn(*leaves)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    (out * g).sum().backward()
    return out.detach(), [t.grad for t in leaves]


def _assert_identical(old, new, *inputs: torch.Tensor) -> None:
    out_old, g_old = _fwd_bwd(old, *inputs)
    out_new, g_new = _fwd_bwd(new, *inputs)
    assert _same_bits(out_old, out_new)
    for a, b in zip(g_old, g_new, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert _same_bits(a, b)


# --- the code these helpers replaced, verbatim -------------------------------------------------------------


def _old_round_ste(x: torch.Tensor) -> torch.Tensor:  # quantizers/activation.py before
    return x + (torch.round(x) - x).detach()


def _old_fake_quant_tokens(x: torch.Tensor, bits: int, clip: float | torch.Tensor = 1.0) -> torch.Tensor:
    top = (1 << (bits - 1)) - 1
    scale = (x.detach().abs().amax(dim=-1, keepdim=True) * clip / top).clamp_min(1e-8)
    return torch.clamp(_old_round_ste(x / scale), -top - 1, top) * scale


def _old_pact(x: torch.Tensor, alpha: torch.Tensor, bits: int) -> torch.Tensor:
    y = torch.where(x >= alpha, alpha.expand_as(x), torch.relu(x))
    s = alpha.detach() / (2**bits - 1)
    return y + (torch.round(y / s) * s - y).detach()


def _old_ste(x: torch.Tensor, fn) -> torch.Tensor:  # ptq/cbq.py's _ste
    return x + (fn(x) - x).detach()


def _old_binarize(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


class _OldLSQCodes(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, s, qn, qp):
        v = x / s
        ctx.save_for_backward(v, s)
        ctx.qn, ctx.qp = qn, qp
        if qn == 1 and qp == 1:
            return _old_binarize(v)
        return torch.clamp(torch.round(v), -qn, qp)

    @staticmethod
    def backward(ctx, g):
        v, s = ctx.saved_tensors
        inside = ((v >= -ctx.qn) & (v <= ctx.qp)).to(g.dtype)
        gx = g * inside / s
        gs = g * (-v * inside) / s
        gs = gs.sum_to_size(s.shape) if s.dim() else gs.sum()
        return gx, gs.reshape(s.shape), None, None


class _OldRoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, s, qn, qp):
        v = x / s
        ctx.save_for_backward(v, s)
        ctx.qn, ctx.qp = qn, qp
        return torch.clamp(torch.round(v), -qn, qp)

    @staticmethod
    def backward(ctx, g):
        v, s = ctx.saved_tensors
        inside = ((v >= -ctx.qn) & (v <= ctx.qp)).to(g.dtype)
        return g * inside / s, None, None, None


def _old_qrange(bits: int) -> tuple[int, int]:  # qat/modules.py before
    if bits == 1:
        return 1, 1
    return 2 ** (bits - 1), 2 ** (bits - 1) - 1


# --- straight-through -----------------------------------------------------------------------------------


def _randn(*shape: int, seed: int = 1, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def test_straight_through_forward_y_gradient_of_x() -> None:
    x = _randn(50).requires_grad_()
    y = torch.sign(x.detach()) * 2
    out = straight_through(x, y)
    assert torch.equal(out, y)
    out.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_round_ste_bit_identical_to_the_old_one() -> None:
    x = _randn(4, 257).requires_grad_()
    _assert_identical(_old_round_ste, round_ste, x)
    assert activation.round_ste is round_ste  # the old import path still works


def test_cbq_ste_is_straight_through() -> None:
    x = _randn(3, 64).abs().requires_grad_()

    def fp16(s: torch.Tensor) -> torch.Tensor:
        return s.half().float()

    _assert_identical(lambda t: _old_ste(t, fp16), lambda t: straight_through(t, fp16(t)), x)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_fake_quant_tokens_bit_identical(bits: int) -> None:
    x = _randn(6, 33).requires_grad_()
    clip = torch.tensor(0.8).requires_grad_()
    _assert_identical(lambda a, c: _old_fake_quant_tokens(a, bits, c),
                      lambda a, c: fake_quant_tokens(a, bits, c), x, clip)
    _assert_identical(lambda a: _old_fake_quant_tokens(a, bits), lambda a: fake_quant_tokens(a, bits), x)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_pact_bit_identical(bits: int) -> None:
    x = _randn(8, 40).requires_grad_()
    alpha = torch.tensor(2.5).requires_grad_()
    _assert_identical(lambda a, b: _old_pact(a, b, bits), lambda a, b: pact(a, b, bits), x, alpha)


@pytest.mark.parametrize(("qn", "qp"), [(1, 1), (2, 1), (4, 3), (8, 7), (128, 127)])
def test_qat_round_ste_and_lsq_codes_bit_identical(qn: int, qp: int) -> None:
    x = _randn(16, 24, scale=5.0).requires_grad_()
    for s in (torch.tensor(0.37), torch.rand(16, 1, generator=torch.Generator().manual_seed(2)) + 0.05):
        _assert_identical(lambda a, b: _OldRoundSTE.apply(a, b, qn, qp), lambda a, b: qat_round_ste(a, b, qn, qp),
                          x, s)
        s_grad = s.clone().requires_grad_()
        _assert_identical(lambda a, b: _OldLSQCodes.apply(a, b, qn, qp), lambda a, b: lsq_codes(a, b, qn, qp),
                          x, s_grad)


def test_qat_round_ste_keeps_signed_zeros() -> None:
    """Why qat's round_ste stays an autograd function: a straight_through version loses -0.0."""
    x = torch.tensor([-0.3, -0.2, 0.2, 9.0, -9.0]).requires_grad_()
    s = torch.tensor(1.0)
    codes = qat_round_ste(x, s, 4, 3)
    assert torch.signbit(codes[:2]).all()  # round(-0.3) = -0.0, as torch.round gives
    v = x / s
    assert not torch.signbit(straight_through(v, torch.clamp(torch.round(v), -4, 3))[:2]).any()


# --- integer convention ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", range(1, 17))
def test_signed_range(bits: int) -> None:
    lo, hi = signed_range(bits)
    assert (lo, hi) == (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    assert symmetric_zero(bits) == -lo
    assert hi - lo == (1 << bits) - 1
    if bits <= 8:
        assert hi - lo == qmax(bits)


def test_signed_range_rejects_zero_bits() -> None:
    with pytest.raises(ValueError):
        signed_range(0)


@pytest.mark.parametrize("bits", range(1, 9))
def test_qat_qrange_unchanged(bits: int) -> None:
    assert _qrange(bits) == _old_qrange(bits)


@pytest.mark.parametrize("bits", range(1, 9))
def test_to_signed_to_unsigned_round_trip(bits: int) -> None:
    codes = torch.arange(qmax(bits) + 1, dtype=torch.uint8)
    q = to_signed(codes, bits)
    assert q.dtype == torch.int8
    assert q.tolist() == list(range(*signed_range(bits))) + [signed_range(bits)[1]]
    back = to_unsigned(q, bits)
    assert back.dtype == torch.uint8 and torch.equal(back, codes)
    assert torch.equal(to_unsigned(q.to(torch.int64), bits), codes)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_to_signed_matches_symmetric_dequantize(bits: int) -> None:
    w = _randn(5, 4, 32, scale=1.0)
    scale, zero = fit_scale_zero(w, bits, symmetric=True)
    assert torch.equal(zero, torch.full_like(zero, float(symmetric_zero(bits))))
    codes = quantize(w, scale, zero, bits)
    assert torch.equal(to_signed(codes, bits).float() * scale, dequantize(codes, scale, zero))


def test_to_unsigned_rejects_what_does_not_fit() -> None:
    with pytest.raises(ValueError):
        to_unsigned(torch.tensor([8]), 4)
    with pytest.raises(ValueError):
        to_unsigned(torch.tensor([-9]), 4)
    with pytest.raises(ValueError):
        to_unsigned(torch.tensor([1.0]), 4)
    with pytest.raises(ValueError):
        to_signed(torch.tensor([1], dtype=torch.uint8), 9)


def test_formats_import_nothing_else_from_lowbit() -> None:
    root = Path(__file__).resolve().parents[1] / "src" / "lowbit" / "formats"
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            for name in names:
                assert not name.startswith("lowbit") or name.startswith("lowbit.formats"), (path.name, name)
