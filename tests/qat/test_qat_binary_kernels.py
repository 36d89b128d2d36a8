"""Bit packing and the XNOR/popcount GEMM: exactness, backends, fallback, errors."""

import warnings

import pytest
import torch

from lowbit.kernels import binary as B


def _sign(x):
    return torch.where(x >= 0, 1.0, -1.0)


def _backends():
    names = ["torch"]
    if B.backend() != "torch":
        names += ["c-generic"]
        for lvl in ("c-popcnt", "c-avx2", "c-avx512-vpopcntdq"):
            try:
                with B.use_backend(lvl):
                    names.append(lvl)
            except ValueError:
                pass
    return names


BACKENDS = _backends()


@pytest.mark.parametrize("k", [1, 7, 63, 64, 65, 127, 200, 513])
def test_pack_unpack_round_trip(k):
    torch.manual_seed(k)
    x = torch.randn(5, k)
    x[0, 0] = 0.0
    x[1, -1] = -0.0
    for be in BACKENDS:
        with B.use_backend(be):
            p = B.pack_bits(x)
        assert p.shape == (5, B.num_words(k)) and p.dtype == torch.int64
        assert torch.equal(B.unpack_bits(p, k), _sign(x)), be


def test_pack_bit_layout_and_padding():
    x = torch.ones(1, 70)
    x[0, 0] = -1.0
    x[0, 63] = -2.0
    x[0, 64] = -0.5
    for be in BACKENDS:
        with B.use_backend(be):
            p = B.pack_bits(x)
        assert p[0, 0].item() == (1 | (1 << 63)) - (1 << 64)  # bits 0 and 63, as signed int64
        assert p[0, 1].item() == 1  # bit 64 -> word 1 bit 0; padding bits stay 0


@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (3, 5, 65), (7, 9, 100), (5, 13, 513), (17, 33, 1000), (64, 70, 4099)])
def test_packed_gemm_equals_float_pm1_matmul(m, n, k):
    torch.manual_seed(m * 1000 + k)
    x, w = torch.randn(m, k), torch.randn(n, k)
    ref = _sign(x) @ _sign(w).T
    for be in BACKENDS:
        with B.use_backend(be):
            out = B.binary_matmul(B.pack_bits(x), B.pack_bits(w), k)
        assert out.dtype == torch.int32
        assert torch.equal(out.to(torch.float32), ref), be


def test_binary_linear_bit_exact_with_scale_and_bias():
    torch.manual_seed(1)
    m, n, k = 6, 37, 333
    x, w = torch.randn(2, m, k), torch.randn(n, k)
    scale, bias = torch.rand(n) * 0.1, torch.randn(n)
    ref = torch.nn.functional.linear(_sign(x), _sign(w)) * scale + bias
    wp = B.pack_bits(w)
    for be in BACKENDS:
        with B.use_backend(be):
            y = B.binary_linear(x, wp, k, scale, bias)
        assert y.shape == (2, m, n)
        assert torch.equal(y, ref), be


def test_fallback_equals_c_path_large():
    if B.backend() == "torch":
        pytest.skip("C kernel not available")
    torch.manual_seed(2)
    x, w = torch.randn(33, 777), torch.randn(129, 777)
    c = B.binary_matmul(B.pack_bits(x), B.pack_bits(w), 777)
    with B.use_backend("torch"):
        t = B.binary_matmul(B.pack_bits(x), B.pack_bits(w), 777)
    assert torch.equal(c, t)


def test_weights_are_32x_smaller():
    w = torch.randn(256, 1024)
    p = B.pack_bits(w)
    assert w.numel() * 4 == 32 * p.numel() * 8


def test_bad_inputs_raise_clear_errors():
    a = B.pack_bits(torch.randn(2, 100))
    w = B.pack_bits(torch.randn(3, 200))
    with pytest.raises(ValueError, match="words per row"):
        B.binary_matmul(a, w, 100)
    with pytest.raises(ValueError, match="needs 5 words"):
        B.binary_matmul(a, a, 300)
    with pytest.raises(TypeError, match="packed int64"):
        B.binary_matmul(a.float(), a, 100)
    with pytest.raises(ValueError, match="features"):
        B.binary_linear(torch.randn(2, 99), w, 200)
    with pytest.raises(TypeError, match="floating-point"):
        B.pack_bits(torch.ones(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="unknown binary backend"):
        B.set_backend("cuda")
    with pytest.raises(ValueError, match="one per output"):
        B.binary_linear(torch.randn(2, 200), w, 200, scale=torch.ones(4))


def test_no_compiler_falls_back_with_warning(monkeypatch):
    monkeypatch.setattr(B, "_compiler", lambda: None)
    monkeypatch.setattr(B, "_lib", None)
    monkeypatch.setattr(B, "_lib_tried", False)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        assert B.backend() == "torch"
    assert any("pure-PyTorch fallback" in str(r.message) for r in rec)
    x, w = torch.randn(3, 70), torch.randn(4, 70)
    out = B.binary_matmul(B.pack_bits(x), B.pack_bits(w), 70)
    assert torch.equal(out.float(), _sign(x) @ _sign(w).T)


def test_build_cache_is_keyed_and_reused(tmp_path, monkeypatch):
    if B._compiler() is None:
        pytest.skip("no C compiler")
    monkeypatch.setenv("LOWBIT_CACHE_DIR", str(tmp_path))
    p1 = B.build_library()
    assert p1.is_file() and p1.parent == tmp_path / "kernels" and len(p1.stem) > len("binary_gemm_")
    mtime = p1.stat().st_mtime_ns
    assert B.build_library() == p1 and p1.stat().st_mtime_ns == mtime  # cached, not rebuilt
