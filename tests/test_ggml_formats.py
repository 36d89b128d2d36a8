"""GGML block types: lowbit's packer decodes through the gguf package exactly, importance-weighted fits help."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lowbit.formats.ggml import GGML_TYPES, ggml_type

gguf = pytest.importorskip("gguf")


def _weights(cols: int = 512) -> torch.Tensor:
    """Random rows of mixed spread with an all-zero block, an all-positive sub-block and an outlier."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(12, cols, generator=g) * torch.rand(12, 1, generator=g) * torch.linspace(0.05, 1.0, cols)
    w[0, :256] = 0.0
    w[1, :32] = torch.linspace(0.1, 0.5, 32)
    w[2, 300] = 30.0
    w[3, 40] = -30.0
    return w


@pytest.mark.parametrize("name", list(GGML_TYPES))
def test_pack_decodes_through_gguf_exactly(name):
    t = ggml_type(name)
    w = _weights()
    imp = torch.rand(512, generator=torch.Generator().manual_seed(1)) ** 2
    data, decoded = t.quantize(w, imp)
    assert data.shape == (12, 512 // t.qk * t.nbytes) and data.dtype == np.uint8
    assert gguf.GGML_QUANT_SIZES[getattr(gguf.GGMLQuantizationType, name)] == (t.qk, t.nbytes)
    assert int(getattr(gguf.GGMLQuantizationType, name)) == t.ggml_id
    theirs = torch.from_numpy(gguf.quants.dequantize(data, getattr(gguf.GGMLQuantizationType, name)).copy())
    assert torch.equal(theirs, decoded)
    assert torch.equal(t.dequantize(data, w.shape), decoded)
    assert torch.equal(theirs[0, :256], torch.zeros(256))
    q, p = t.unpack(data)
    assert int(q.min()) >= t.lo and int(q.max()) <= t.hi
    assert np.array_equal(t.pack(q, p), data.reshape(-1, t.nbytes))  # unpack -> pack is the identity
    rel = ((decoded - w) ** 2).sum() / (w**2).sum()
    assert rel < {"Q2_K": 0.2, "Q3_K": 0.06, "Q4_0": 0.02, "Q4_K": 0.02}.get(name, 0.006), rel


@pytest.mark.parametrize("name", [n for n in GGML_TYPES if n != "Q8_0"])  # llama.cpp's Q8_0 ignores imatrix
def test_importance_weighted_fit_lowers_weighted_error(name):
    t = ggml_type(name)
    g = torch.Generator().manual_seed(2)
    w = torch.randn(32, 512, generator=g)
    imp = torch.rand(512, generator=g) ** 4 * 10  # a few columns matter much more than the rest
    err = [float(((t.quantize(w, i)[1] - w) ** 2 * imp).sum()) for i in (imp, None)]
    assert err[0] < 0.97 * err[1], err


def test_bits_per_weight_and_errors():
    assert [round(GGML_TYPES[n].bpw, 4) for n in ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")] == [2.625, 3.4375, 4.5,
                                                                                               5.5, 6.5625]
    with pytest.raises(ValueError, match="unknown GGML block type"):
        ggml_type("Q7_K")
    with pytest.raises(ValueError, match="multiple of 256"):
        ggml_type("Q4_K").quantize(torch.randn(2, 576))
