"""Decode helpers: fused q/k/v-style calls, exact 4-bit bf16 kernel, RMSNorm and one-query attention in C."""

import pytest
import torch
from torch.nn import functional as F

from lowbit.kernels.decode import attention_one, rms_norm
from lowbit.kernels.qlinear import FusedLinears, PackedLinear, set_kernel
from lowbit.quantizers import WeightSpec, quantize_weight


def _packed(n: int, k: int, bits: int = 4, group: int = 128, sym: bool = False) -> PackedLinear:
    return PackedLinear.from_quantized(quantize_weight(torch.randn(n, k), WeightSpec(bits, group, sym)),
                                       torch.randn(n))


@pytest.mark.parametrize("kernel,dtype,k,group", [("c-int8", torch.bfloat16, 256, 128),
                                                  ("c-int8", torch.float32, 256, 128),
                                                  ("auto", torch.bfloat16, 256, 128),
                                                  ("c-int8", torch.bfloat16, 576, 64)])  # rows with a 32-byte tail
def test_fused_calls_equal_separate_calls(kernel, dtype, k, group):
    layers = [_packed(n, k, group=group) for n in (128, 64, 64)]
    for m in layers:
        set_kernel(m, kernel)
        m.prepare(dtype)
    fused = FusedLinears.build(layers, dtype)
    if fused is None:
        pytest.skip("no C compiler: no fused kernels")
    x = torch.randn(1, k).to(dtype)
    for got, m in zip(fused(x), layers, strict=True):
        assert m.backend() == ("c-int8" if kernel == "c-int8" else "c")
        assert got.dtype == dtype and torch.equal(got, m(x))


def test_fusion_refused_when_layers_differ():
    a, b = _packed(64, 256), _packed(64, 256, bits=2)
    assert FusedLinears.build([a, b], torch.bfloat16) is None
    c = _packed(64, 256)
    c.register_forward_pre_hook(lambda mod, inp: inp)  # e.g. activation quantization
    assert FusedLinears.build([a, c], torch.bfloat16) is None
    assert FusedLinears.build([a, torch.nn.Linear(256, 8)], torch.bfloat16) is None


@pytest.mark.parametrize("group,sym", [(128, True), (128, False), (256, False), (-1, True)])
def test_exact_q4_bf16_kernel_within_output_rounding(group, sym):
    m = _packed(192, 512, group=group, sym=sym)
    x = torch.randn(3, 512).bfloat16()
    y = m(x)
    if not m._kernel.get("q4bf16"):
        pytest.skip("no C compiler")
    ref = F.linear(x.double(), m.dequantized_weight(torch.float64), m.bias.double())
    assert ((y.double() - ref).abs() / ref.abs().clamp(min=1)).max() < 4e-3  # bf16 output rounding: 2^-8


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_matches_transformers_formula(dtype):
    x, w = torch.randn(3, 96).to(dtype), torch.randn(96).to(dtype)
    ref = w * F.rms_norm(x.float(), (96,), eps=1e-6).to(dtype)
    got = rms_norm(x, w, 1e-6)
    rtol = 1e-2 if dtype == torch.bfloat16 else 1e-5
    assert got.dtype == dtype and torch.allclose(got.float(), ref.float(), rtol=rtol, atol=1e-5)


def test_attention_one_matches_softmax_attention():
    heads, kv, cap, dim, length = 8, 2, 20, 32, 13
    q, keys, vals = torch.randn(heads, dim), torch.randn(kv, cap, dim), torch.randn(kv, cap, dim)
    ref = F.scaled_dot_product_attention(q.view(heads, 1, dim), keys[:, :length], vals[:, :length], scale=0.3,
                                         enable_gqa=True).view(heads, dim)
    assert torch.allclose(attention_one(q, keys, vals, length, 0.3), ref, atol=1e-5)


@pytest.mark.parametrize("kernel", ["auto", "c-int8"])
def test_fused_layer_computes_the_per_op_path(tmp_path, kernel):
    """A whole decoder layer in one C call gives the per-op lean path's logits (same bf16 rounding per op)."""
    from lowbit.cli import main
    from lowbit.export.checkpoint import load_with_tokenizer
    from lowbit.models.lean import LeanDecoder

    out = tmp_path / "w4"
    assert main(["quantize", "demo", "--method", "rtn", "--n-samples", "4", "--out", str(out)]) == 0
    model = load_with_tokenizer(out, torch.bfloat16).model
    set_kernel(model, kernel)
    fused, per_op = LeanDecoder(model, 32), LeanDecoder(model, 32, fused_layers=False)
    if any(f is None for f in fused.fused_layers):
        pytest.skip("no C compiler: no fused layer")
    assert all(f is None for f in per_op.fused_layers)
    ids = torch.randint(3, 4000, (16,), generator=torch.Generator().manual_seed(0)).tolist()
    a = [fused.step(ids[:8])] + [fused.step([i]) for i in ids[8:]]
    b = [per_op.step(ids[:8])] + [per_op.step([i]) for i in ids[8:]]
    for x, y in zip(a, b, strict=True):  # SiLU's exp may differ from PyTorch's in the last bf16 bit
        assert (x.float() - y.float()).abs().max() <= 0.02 * y.float().abs().max()
        assert x.argmax() == y.argmax()
