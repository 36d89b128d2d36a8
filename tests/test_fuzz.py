"""Fuzzing, bounded in time: mutated safetensors headers, lowbit_quant.json files and GGUF bytes into lowbit's
readers; the only outcomes allowed are a correct load or a LowbitError."""

from __future__ import annotations

import json
import shutil
import struct
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from lowbit.errors import LowbitError
from lowbit.models.checkpoint import check_quant_config
from lowbit.models.stream import TensorIndex, read_header

FAST = settings(max_examples=4000, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
COUNT = {"inputs": 0}


@pytest.fixture(scope="module")
def st_file(tmp_path_factory) -> Path:
    """A small valid safetensors file."""
    p = tmp_path_factory.mktemp("fuzz") / "t.safetensors"
    save_file({"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(4, dtype=torch.uint8)}, str(p))
    return p


def _read_all(path: Path) -> None:
    idx = TensorIndex([path])
    for name in idx.where:
        idx.read(name)


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                    max_leaves=8)


def test_fuzz_safetensors_headers(st_file, tmp_path):
    """Byte flips, truncations and JSON edits of a safetensors header: read_header and every tensor read either
    succeed or raise LowbitError."""
    data = st_file.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    target = tmp_path / "m.safetensors"

    @FAST
    @given(st.integers(0, len(data) - 1), st.integers(0, 255), st.integers(0, len(data)), st.booleans())
    def flips(pos: int, byte: int, cut: int, truncate: bool) -> None:
        b = bytearray(data)
        b[pos] = byte
        target.write_bytes(bytes(b[:cut] if truncate else b))
        _check(target)

    @FAST
    @given(st.sampled_from(["a", "b"]), st.sampled_from(["dtype", "shape", "data_offsets"]), JSON)
    def fields(name: str, key: str, value: object) -> None:
        h = json.loads(json.dumps(header))
        h[name][key] = value
        blob = json.dumps(h).encode()
        target.write_bytes(struct.pack("<Q", len(blob)) + blob + data[8 + n:])
        _check(target)

    flips()
    fields()


def _check(path: Path) -> None:
    COUNT["inputs"] += 1
    try:
        read_header(path)
        _read_all(path)
    except LowbitError as e:
        assert "\n" not in str(e)


def test_fuzz_quant_config():
    """Random lowbit_quant.json contents: check_quant_config accepts or raises LowbitError, never anything else."""
    base = {"format": "lowbit", "version": 1, "bits": 4, "group_size": 32, "symmetric": True, "modules": ["a.b"],
            "bits_per_weight": 4.5}

    @FAST
    @given(st.sampled_from([*base, "act_bits", "kv_cache", "input_transforms"]), JSON)
    def run(key: str, value: object) -> None:
        COUNT["inputs"] += 1
        cfg = {**base, key: value}
        try:
            check_quant_config(cfg, Path("lowbit_quant.json"))
        except LowbitError:
            return

    run()


def test_fuzz_gguf_and_random_bytes_into_loaders(tiny_models, tmp_path):
    """lowbit reads no GGUF itself (the writer's output is read by llama.cpp and the gguf package); a GGUF or random
    bytes given where lowbit expects a model (a file, or a model directory's weights) is a one-line error."""
    from lowbit import load
    from lowbit.api import inspect_dir

    d = tmp_path / "m"
    shutil.copytree(tiny_models["llama"], d)
    gguf = b"GGUF" + struct.pack("<IQQ", 3, 1, 1)

    @settings(max_examples=300, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.binary(max_size=64))
    def run(tail: bytes) -> None:
        COUNT["inputs"] += 2
        (d / "model.safetensors").write_bytes(gguf + tail)
        for fn in (load, inspect_dir):
            with pytest.raises(LowbitError):
                fn(d)

    run()
    with pytest.raises(LowbitError, match="is a file"):
        load(d / "model.safetensors")


def test_fuzz_total():
    """The fuzz tests above fed at least 10,000 inputs (printed)."""
    t0 = time.perf_counter()
    print(f"fuzzed inputs: {COUNT['inputs']}")
    assert COUNT["inputs"] >= 10_000 or COUNT["inputs"] == 0  # 0: run alone (-k), the count is not collected
    assert time.perf_counter() - t0 < 1
