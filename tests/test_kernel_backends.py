"""The backend interface of PackedLinear: choose_backend, the canonical code readers, the multi-source build."""

import ctypes

import pytest
import torch

from lowbit.kernels.backends import Backend, choose_backend
from lowbit.kernels.build import build_shared, compiler
from lowbit.kernels.qlinear import KERNELS, PackedLinear, set_kernel
from lowbit.quantizers import WeightSpec, quantize_weight


def _layer(sym: bool = False) -> PackedLinear:
    torch.manual_seed(0)
    spec = WeightSpec(bits=4, group_size=128, symmetric=sym)
    return PackedLinear.from_quantized(quantize_weight(torch.randn(128, 256), spec), torch.randn(128))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("name", KERNELS)
def test_choose_backend_picks_what_set_kernel_runs(name, dtype):
    m = _layer()
    set_kernel(m, name)
    assert m._kernel is None and m.backend() is None
    m(torch.randn(1, 256).to(dtype))
    assert isinstance(m._kernel, Backend) and m.kernel is m._kernel
    chosen = choose_backend(_layer(), dtype, name)
    assert chosen.name == m.backend()
    assert bool(m._kernel.get("q4bf16")) == bool(getattr(chosen, "q4bf16", False))


@pytest.mark.parametrize("sym", [True, False])
def test_codes_and_packed_rows_are_canonical_whatever_the_backend(sym):
    ref = _layer(sym)
    codes, rows, state = ref.codes(), ref.qweight.clone(), ref.state_dict()
    for name in KERNELS:
        m = _layer(sym)
        set_kernel(m, name)
        m(torch.randn(2, 256).to(torch.bfloat16))
        assert torch.equal(m.codes(), codes), name
        assert torch.equal(m.packed_rows(), rows), name
        assert torch.equal(m.state_dict()["qweight"], state["qweight"]), name
        m.release()
        assert torch.equal(m.qweight, rows) and m.backend() is None, name


def test_two_sources_build_into_one_library(tmp_path, monkeypatch):
    if compiler() is None:
        pytest.skip("no C compiler")
    monkeypatch.setenv("LOWBIT_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "two.h").write_text("int one(void);\n")
    (tmp_path / "a.c").write_text('#include "two.h"\nint one(void) { return 1; }\n')
    (tmp_path / "b.c").write_text('#include "two.h"\nint two(void) { return one() + 1; }\n')
    flags = [["-O2", "-fPIC", "-shared"]]
    out = build_shared([tmp_path / "a.c", tmp_path / "b.c"], compiler(), flags)
    assert out.name.startswith("a_")
    assert ctypes.CDLL(str(out)).two() == 2
    assert build_shared([tmp_path / "a.c", tmp_path / "b.c"], compiler(), flags) == out  # cached
    (tmp_path / "two.h").write_text("int one(void); /* edited */\n")  # an included header is part of the key
    assert build_shared([tmp_path / "a.c", tmp_path / "b.c"], compiler(), flags) != out
    single = build_shared(tmp_path / "a.c", compiler(), flags)  # one Path still works
    assert ctypes.CDLL(str(single)).one() == 1


def test_a_file_included_by_an_included_file_is_part_of_the_cache_key(tmp_path, monkeypatch):
    """The library is decode.c, which includes qgemv.c, which includes qgemv.h: editing the header rebuilds."""
    if compiler() is None:
        pytest.skip("no C compiler")
    monkeypatch.setenv("LOWBIT_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "k.h").write_text("#define K 1\n")
    (tmp_path / "k.c").write_text('#include "k.h"\nint k(void) { return K; }\n')
    (tmp_path / "top.c").write_text('#include "k.c"\nint top(void) { return k() + 1; }\n')
    flags = [["-O2", "-fPIC", "-shared"]]
    out = build_shared(tmp_path / "top.c", compiler(), flags)
    assert ctypes.CDLL(str(out)).top() == 2
    (tmp_path / "k.h").write_text("#define K 5\n")
    again = build_shared(tmp_path / "top.c", compiler(), flags)
    assert again != out and ctypes.CDLL(str(again)).top() == 6
