"""Number formats and bit packing: exact round trips and quantization error bounds."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.formats import dequantize, fit_scale_zero, pack, packed_numel, qmax, quantize, unpack


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(1, 8), rows=st.integers(1, 4), n=st.integers(1, 70), seed=st.integers(0, 2**16),
       word=st.sampled_from(["uint8", "int32"]))
def test_pack_unpack_round_trip(bits, rows, n, seed, word):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 2**bits, (rows, n), generator=g).to(torch.uint8)
    packed = pack(codes, bits, word)
    assert packed.dtype == (torch.uint8 if word == "uint8" else torch.int32)
    assert packed.shape == (rows, packed_numel(n, bits, word))
    assert torch.equal(unpack(packed, bits, n), codes)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_packing_is_dense(bits):
    codes = torch.randint(0, 2**bits, (5, 1024), dtype=torch.uint8)
    assert pack(codes, bits).numel() * 8 == codes.numel() * bits  # no padding bits for n % 8 == 0


def test_int32_words_match_gptq_layout():
    codes = torch.randint(0, 16, (3, 32), dtype=torch.uint8)
    words = pack(codes, 4, "int32")
    for r in range(3):
        for w in range(4):
            expect = sum(int(codes[r, 8 * w + i]) << (4 * i) for i in range(8))
            assert words[r, w].item() & 0xFFFFFFFF == expect


def test_three_bit_layout_is_a_bit_stream():
    codes = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 0]], dtype=torch.uint8)
    stream = sum(int(c) << (3 * i) for i, c in enumerate(codes[0]))
    assert pack(codes, 3)[0].tolist() == [(stream >> (8 * b)) & 0xFF for b in range(3)]


def test_pack_rejects_codes_too_wide():
    with pytest.raises(ValueError, match="exceed 2 bits"):
        pack(torch.tensor([[4]], dtype=torch.uint8), 2)


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("symmetric", [True, False])
def test_quantization_error_within_half_step(bits, symmetric):
    w = torch.randn(16, 4, 32) * 3 + (0 if symmetric else 1.5)
    s, z = fit_scale_zero(w, bits, symmetric)
    q = quantize(w, s, z, bits)
    assert int(q.max()) <= qmax(bits) and q.dtype == torch.uint8
    err = (dequantize(q, s, z) - w).abs()
    # inside the range the error is at most half a step; symmetric clips +amax by at most half a step more
    assert (err <= s * (1.0 if symmetric else 0.5) + 1e-5).all()


def test_symmetric_zero_is_midpoint_and_zero_is_exact():
    w = torch.tensor([[-1.0, 0.0, 0.5, 1.0]])
    s, z = fit_scale_zero(w, 4, True)
    assert z.item() == 8
    assert dequantize(quantize(w, s, z, 4), s, z)[0, 1].item() == 0.0


def test_asymmetric_uses_full_range():
    w = torch.linspace(0.0, 3.0, 16)[None]
    s, z = fit_scale_zero(w, 4, False)
    q = quantize(w, s, z, 4)
    assert q.min().item() == 0 and q.max().item() == 15
    assert torch.allclose(dequantize(q, s, z), w, atol=1e-6)
