"""CPU levels of the C kernels: the best level is chosen, LOWBIT_CPU lowers it, and every level this machine runs
gives the reference's results (so an AVX2-only or a compiler-less machine runs what is tested here)."""

import warnings

import pytest
import torch
from torch.nn import functional as F

from lowbit.errors import LowbitError
from lowbit.kernels import binary as B
from lowbit.kernels import lib as L
from lowbit.kernels.decode import attention_one, rms_norm
from lowbit.kernels.qlinear import PackedLinear, dense_linear, set_kernel
from lowbit.quantizers import WeightSpec, quantize_weight

HAVE_C = L.get_lib() is not None
LEVELS = L.levels_available() if HAVE_C else ()


def _layer(bits: int, group: int, sym: bool, n: int = 132, k: int = 512) -> PackedLinear:
    torch.manual_seed(bits * 100 + group)
    q = quantize_weight(torch.randn(n, k), WeightSpec(bits, group, sym))
    return PackedLinear.from_quantized(q, torch.randn(n))


def test_best_level_and_backends_are_chosen(monkeypatch):
    monkeypatch.delenv("LOWBIT_CPU", raising=False)
    assert L.machine_level() in L.LEVELS and L.cpu_level() == L.machine_level()
    if not HAVE_C:
        pytest.skip("no C compiler: the PyTorch reference runs")
    assert L.lib_level(L.get_lib()) == L.machine_level()
    for kernel, want in (("auto", "c"), ("c", "c"), ("c-int8", "c-int8")):
        m = _layer(4, 128, True)
        set_kernel(m, kernel)
        m(torch.randn(1, 512, dtype=torch.bfloat16))
        assert m.backend() == want and m.kernel.lib is L.get_lib()
    binary = {"avx512": ("c-avx512-vpopcntdq", "c-avx2"), "avx2": ("c-avx2",), "generic": ("c-generic", "c-popcnt")}
    assert B.backend() in binary[L.machine_level()]  # an AVX-512 CPU without VPOPCNTDQ gets c-avx2
    flags = L.FLAGS + L.LEVEL_FLAGS[L.machine_level()]
    assert not any(f.startswith("-march") for f in flags)  # the cache holds builds valid on any machine


def test_lowbit_cpu_lowers_never_raises_the_level(monkeypatch):
    monkeypatch.setenv("LOWBIT_CPU", "generic")
    assert L.cpu_level() == "generic"
    monkeypatch.setenv("LOWBIT_CPU", "sse9")
    with pytest.raises(LowbitError, match="LOWBIT_CPU"):
        L.cpu_level()
    if L.machine_level() != "avx512":
        monkeypatch.setenv("LOWBIT_CPU", "avx512")
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            assert L.cpu_level() == L.machine_level()
        assert any("above what this CPU runs" in str(x.message) for x in w)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("bits,group,sym,k", [(4, 128, True, 512), (4, 64, False, 512), (2, 64, True, 512),
                                              (8, 128, False, 512), (3, 128, True, 512), (4, 32, True, 512),
                                              (8, -1, True, 512), (4, 64, False, 576), (4, 32, True, 576),
                                              (8, 32, True, 544), (2, 64, True, 576)])
def test_every_level_computes_the_reference(level, bits, group, sym, k, monkeypatch):
    """576-wide rows (SmolLM2) at 4 bits are 288 bytes: 64-byte chunks and a 32-byte tail in c-int8."""
    monkeypatch.setenv("LOWBIT_CPU", level)
    m = _layer(bits, group, sym, k=k)
    x = torch.randn(3, k)
    x[:, 5] *= 6
    w64 = m.dequantized_weight(torch.float64)
    ref = F.linear(x.double(), w64, m.bias.double())
    y = m(x)
    assert m.backend() == "c" and L.lib_level(m.kernel.lib) == level
    assert (y.double() - ref).abs().max() < 1e-5 * ref.abs().max()
    yb = m(x.bfloat16())  # bf16 activations: the exact 4-bit kernel where it applies
    refb = F.linear(x.bfloat16().double(), w64, m.bias.double())
    assert yb.dtype == torch.bfloat16 and ((yb.double() - refb).abs() / refb.abs().clamp(min=1)).max() < 8e-3
    assert torch.equal(m.kernel.dequant(m, torch.float32), m.dequantized_weight())  # prefill: exactly
    assert torch.equal(m.kernel.dequant(m, torch.bfloat16), m.dequantized_weight().bfloat16())
    if bits != 3:  # c-int8: exact given its int8 activations, at every level
        set_kernel(m, "c-int8")
        yi = m(x)
        row_bytes = k * bits // 8  # 2-bit g64 at 576: 16-byte groups in a 144-byte row, which c-int8 does not take
        assert m.backend() == ("c" if row_bytes % 32 else "c-int8")
        glen = k if group == -1 else group
        xg = x.view(3, -1, glen)
        sx = xg.abs().amax(-1, keepdim=True) / 127
        xq = (torch.clamp(torch.round(xg / sx), -127, 127) * sx).view(3, k)
        if m.backend() == "c":
            xq = x
        sim = F.linear(xq.double(), w64, m.bias.double())
        assert (yi.double() - sim).abs().max() < 1e-5 * sim.abs().max()


@pytest.mark.parametrize("level", LEVELS)
def test_every_level_decode_helpers(level, monkeypatch):
    monkeypatch.setenv("LOWBIT_CPU", level)
    torch.manual_seed(1)
    x, w = torch.randn(2, 96).bfloat16(), torch.randn(96).bfloat16()
    assert torch.allclose(rms_norm(x, w, 1e-6).float(), (w * F.rms_norm(x.float(), (96,), eps=1e-6).bfloat16()).float(),
                          rtol=1e-2, atol=1e-5)
    q, keys, vals = torch.randn(4, 40), torch.randn(2, 9, 40), torch.randn(2, 9, 40)
    ref = F.scaled_dot_product_attention(q.view(4, 1, 40), keys[:, :7], vals[:, :7], scale=0.2,
                                         enable_gqa=True).view(4, 40)
    assert torch.allclose(attention_one(q, keys, vals, 7, 0.2), ref, atol=1e-5)
    lin = torch.nn.Linear(256, 48).bfloat16()
    xb = torch.randn(1, 256).bfloat16()
    refl = F.linear(xb.double(), lin.weight.double(), lin.bias.double())
    assert (dense_linear(xb, lin).double() - refl).abs().max() < 1e-2 * refl.abs().max()


@pytest.mark.parametrize("level", LEVELS)
def test_every_level_binary_gemm_is_exact(level, monkeypatch):
    monkeypatch.setenv("LOWBIT_CPU", level)
    torch.manual_seed(2)
    x, w = torch.randn(5, 1000), torch.randn(37, 1000)
    ref = F.linear(torch.where(x >= 0, 1.0, -1.0), torch.where(w >= 0, 1.0, -1.0))
    with B.use_backend("auto") as name:
        assert name == {"avx512": name, "avx2": "c-avx2", "generic": "c-generic"}[level]
        assert torch.equal(B.binary_linear(x, B.pack_bits(w), 1000), ref)
