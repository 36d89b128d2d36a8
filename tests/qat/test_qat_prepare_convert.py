"""prepare / convert: layer swapping, config validation, bit-exact bit-packed inference."""

import warnings

import pytest
import torch
from torch import nn

from lowbit.qat import (
    PackedBinaryConv1d,
    PackedBinaryConv2d,
    PackedBinaryLinear,
    QATConfig,
    QuantConv2d,
    QuantLinear,
    binary_weight_signs,
    convert,
    flip_rate,
    prepare,
    quantization_error,
    regularization_loss,
    set_biper_stage,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread avoids OpenMP spin-waits on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cnn2d():
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.Conv2d(16, 20, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(20),
        nn.Conv2d(20, 20, 3, padding=2, dilation=2, groups=4),
        nn.Flatten(),
        nn.Linear(20 * 4 * 4, 70),
        nn.BatchNorm1d(70),
        nn.Linear(70, 33),
        nn.Linear(33, 10),
    )


def test_prepare_keeps_first_and_last_in_float():
    m = _cnn2d()
    q = prepare(m, QATConfig(estimator="ste"))
    assert type(q[0]) is nn.Conv2d and type(q[9]) is nn.Linear
    assert isinstance(q[2], QuantConv2d) and isinstance(q[6], QuantLinear)
    assert type(m[2]) is nn.Conv2d  # not in place by default
    q2 = prepare(m, QATConfig(keep_first=False, keep_last=False, exclude=("8",), layer_types=("Linear",)))
    assert type(q2[0]) is nn.Conv2d and isinstance(q2[9], QuantLinear) and type(q2[8]) is nn.Linear


@pytest.mark.parametrize("estimator", ["ste", "approxsign", "biper", "lsq"])
def test_convert_equals_simulation_bit_for_bit(estimator):
    torch.manual_seed(0)
    q = prepare(_cnn2d(), QATConfig(estimator=estimator))
    x = torch.randn(16, 3, 8, 8)
    q.train()
    q(x).sum().backward()  # initialise LSQ steps, BN stats move
    q.eval()
    with torch.no_grad():
        ref = q(x)
    c = convert(q)
    assert isinstance(c[2], PackedBinaryConv2d) and isinstance(c[6], PackedBinaryLinear)
    with torch.no_grad():
        assert torch.equal(c(x), ref)


def test_convert_conv1d_padding_modes():
    torch.manual_seed(1)
    m = nn.Sequential(
        nn.Conv1d(1, 8, 5, padding=2),
        nn.Conv1d(8, 13, 5, padding=2, padding_mode="circular"),
        nn.Conv1d(13, 9, 3, padding="same"),
        nn.Conv1d(9, 9, 3, stride=2, padding=3, dilation=2),
        nn.Conv1d(9, 9, 3),
        nn.Flatten(),
        nn.Linear(9 * 19, 10),
    )
    q = prepare(m, QATConfig()).eval()
    c = convert(q)
    assert isinstance(c[1], PackedBinaryConv1d)
    x = torch.randn(5, 1, 40)
    with torch.no_grad():
        assert torch.equal(c(x), q(x))
        assert torch.equal(c[2](x[0, :1].expand(13, 40)), q[2](x[0, :1].expand(13, 40)))  # unbatched


def test_trained_mlp_converted_predictions_equal():
    torch.manual_seed(0)
    n, d = 600, 40
    x = torch.randn(n, d)
    y = (x[:, :5].sum(1) > 0).long() + 2 * (x[:, 5:10].sum(1) > 0).long()
    model = nn.Sequential(
        nn.Linear(d, 96),
        nn.BatchNorm1d(96),
        nn.Linear(96, 96),
        nn.BatchNorm1d(96),
        nn.Linear(96, 96),
        nn.BatchNorm1d(96),
        nn.Linear(96, 4),
    )
    q = prepare(model, QATConfig(estimator="biper", biper_stage=1, tau=0.01))
    opt = torch.optim.Adam(q.parameters(), lr=3e-3)
    for step in range(120):
        if step == 60:
            set_biper_stage(q, 2)
        idx = torch.randint(0, 500, (64,))
        loss = nn.functional.cross_entropy(q(x[idx]), y[idx]) + regularization_loss(q)
        opt.zero_grad()
        loss.backward()
        opt.step()
    q.eval()
    with torch.no_grad():
        pred = q(x[500:]).argmax(1)
        acc = (pred == y[500:]).float().mean().item()
        assert acc > 0.5  # it learned something (chance is 0.25)
        assert torch.equal(convert(q)(x[500:]).argmax(1), pred)


def test_bad_config_errors():
    with pytest.raises(ValueError, match="unknown estimator 'sgn'.*'ste', 'lsq'"):
        QATConfig(estimator="sgn")
    with pytest.raises(ValueError, match="weight_bits=9 is out of range"):
        QATConfig(estimator="ste", weight_bits=9)
    with pytest.raises(ValueError, match="act_bits=0 is out of range"):
        QATConfig(act_bits=0)
    with pytest.raises(ValueError, match="binary-only"):
        QATConfig(estimator="biper", weight_bits=4)
    with pytest.raises(ValueError, match="ApproxSign activations are binary"):
        QATConfig(estimator="biper", act_bits=4)
    with pytest.raises(ValueError, match="layer_types"):
        QATConfig(layer_types=("LSTM",))
    with pytest.raises(TypeError, match="weight_bits must be an int"):
        QATConfig(weight_bits=1.5)
    QATConfig(estimator="ste", weight_bits=4, act_bits=8)  # multi-bit STE is fine


def test_input_feature_mismatch_errors():
    q = prepare(nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 2)), QATConfig())
    with pytest.raises(ValueError, match="expects inputs with 16 features"):
        q[1](torch.randn(3, 15))
    c = convert(q.eval())
    with pytest.raises(ValueError, match="expects 16 input features"):
        c[1](torch.randn(3, 17))
    qc = prepare(_cnn2d(), QATConfig()).eval()
    with pytest.raises(ValueError, match=r"expects input \[batch, 16"):
        qc[2](torch.randn(2, 15, 8, 8))
    with pytest.raises(ValueError, match=r"expects input \[batch, 16"):
        convert(qc)[2](torch.randn(2, 15, 8, 8))


def test_convert_refuses_stage1_and_warns_multibit():
    q = prepare(_cnn2d(), QATConfig(estimator="biper", biper_stage=1))
    with pytest.raises(ValueError, match="stage 1"):
        convert(q)
    q = prepare(_cnn2d(), QATConfig(estimator="ste", weight_bits=4, act_bits=8))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        c = convert(q)
    assert any("stay simulated" in str(r.message) for r in rec)
    assert isinstance(c[2], QuantConv2d)
    with pytest.raises(ValueError, match="prepare"):
        convert(nn.Sequential(nn.Linear(2, 2)))


def test_multibit_forward_and_gradients_flow():
    torch.manual_seed(0)
    for cfg in (
        QATConfig(estimator="ste", weight_bits=4, act_bits=4),
        QATConfig(estimator="lsq", weight_bits=3, act_bits=5),
    ):
        q = prepare(_cnn2d(), cfg)
        q(torch.randn(4, 3, 8, 8)).sum().backward()
        assert q[2].weight.grad is not None and q[2].weight.grad.abs().sum() > 0


def test_biper_quantization_error_regulariser_and_flips():
    torch.manual_seed(0)
    q = prepare(_cnn2d(), QATConfig(estimator="biper", omega0=20.0, tau=0.5))
    layers = [q[2], q[4], q[6], q[8]]
    qe = sum(
        (torch.sin(20 * m.weight) - torch.where(torch.sin(20 * m.weight) >= 0, 1.0, -1.0)).abs().mean().item()
        for m in layers
    )
    assert quantization_error(q) == pytest.approx(qe, rel=1e-5)
    reg = 0.5 * sum(torch.sin(20 * m.weight).pow(2).mean() for m in layers)
    assert regularization_loss(q).item() == pytest.approx(reg.item(), rel=1e-5)
    before = binary_weight_signs(q)
    with torch.no_grad():
        q[2].weight.add_(torch.pi / 20)  # shift half a period: every BiPer sign in this layer flips
    fr = flip_rate(before, binary_weight_signs(q))
    total = sum(m.weight.numel() for m in layers)
    assert fr == pytest.approx(q[2].weight.numel() / total, rel=1e-3)


def test_ede_and_pact_layers():
    from lowbit.qat import set_ede_progress

    torch.manual_seed(0)
    q = prepare(_cnn2d(), QATConfig(estimator="ede"))
    assert set_ede_progress(q, 1.0) == pytest.approx((10.0, 1.0))
    assert q[2].weight_quant.ede_t == pytest.approx(10.0) and q[2].act_quant.ede_t == pytest.approx(10.0)
    q(torch.randn(4, 3, 8, 8)).sum().backward()
    q.eval()
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(convert(q)(x), q(x))
    with pytest.raises(ValueError, match="progress must be in"):
        set_ede_progress(q, 1.5)
    p = prepare(_cnn2d(), QATConfig(estimator="ste", weight_bits=4, act_bits=4, act_estimator="pact"))
    p(torch.randn(4, 3, 8, 8)).sum().backward()
    assert p[2].act_quant.alpha.grad is not None
    with pytest.raises(ValueError, match="PACT needs act_bits >= 2"):
        QATConfig(estimator="ste", act_bits=1, act_estimator="pact")
