"""GPTQ inside GGML grids: exact bytes, lower Hessian-weighted error than importance-weighted round to nearest."""

from __future__ import annotations

import pytest
import torch

from lowbit.errors import LowbitError
from lowbit.ptq import HessianAccumulator
from lowbit.ptq.gptq_ggml import gptq_ggml, rtn_ggml

gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def problem() -> tuple[torch.Tensor, torch.Tensor]:
    """A weight [48, 512] and the Hessian of correlated inputs with a few outlier channels."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 512, generator=g) @ (torch.randn(512, 512, generator=g) / 512**0.5)
    x[:, :8] *= 8
    acc = HessianAccumulator(512)
    acc.add(x)
    return torch.randn(48, 512, generator=g), acc.H


def _err(w: torch.Tensor, q: torch.Tensor, H: torch.Tensor) -> float:
    """GPTQ's objective tr(dW H dW^T)."""
    return float(torch.trace((w - q) @ H @ (w - q).T))


@pytest.mark.parametrize("qtype", ["Q2_K", "Q3_K", "Q4_K", "Q6_K", "Q4_0"])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_in_grid_beats_rtn_in_grid(problem, qtype, act_order):
    w, H = problem
    data, decoded = gptq_ggml(w, H, qtype, act_order=act_order)
    theirs = torch.from_numpy(gguf.quants.dequantize(data, getattr(gguf.GGMLQuantizationType, qtype)).copy())
    assert torch.equal(theirs, decoded)  # the bytes are exactly the weights GPTQ chose
    _, rtn = rtn_ggml(w, torch.diag(H), qtype)
    assert _err(w, decoded, H) < 0.75 * _err(w, rtn, H)


def test_bad_width_is_one_line_error(problem):
    w, H = problem
    with pytest.raises(LowbitError, match="multiple of 256"):
        gptq_ggml(w[:, :320], H[:320, :320], "Q4_K")
    with pytest.raises(LowbitError, match="multiple of 256"):
        rtn_ggml(w[:, :320], None, "Q3_K")
