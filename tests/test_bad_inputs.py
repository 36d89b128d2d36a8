"""Every CLI command and lowbit.load on a table of bad inputs: exit 2, one line on stderr, no traceback, the
inputs untouched and no partial output left; the totals are counted and printed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import lowbit
from lowbit.cli import main
from lowbit.errors import LowbitError


def tree_hash(root: Path) -> str:
    """sha256 over every path, mode and file content under `root` (links as their targets)."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_symlink():
            h.update(os.readlink(p).encode())
        elif p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def edit_tensors(d: Path, fn: Callable[[dict], None]) -> None:
    """Rewrite d/model.safetensors after `fn` edits its tensors in place."""
    f = d / "model.safetensors"
    t = load_file(str(f))
    fn(t)
    save_file(t, str(f), metadata={"format": "pt"})


def edit_json(d: Path, name: str, fn: Callable[[dict], object]) -> None:
    """Rewrite d/name with fn's result (fn may edit the dict in place and return None)."""
    f = d / name
    obj = json.loads(f.read_text())
    res = fn(obj)
    f.write_text(json.dumps(obj if res is None else res))


@pytest.fixture(scope="module")
def good(tiny_models, tmp_path_factory) -> dict[str, Path]:
    """An untied tiny Llama and its RTN checkpoint."""
    root = tmp_path_factory.mktemp("good")
    fp = root / "fp"
    shutil.copytree(tiny_models["llama"], fp)
    assert main(["quantize", str(fp), "--method", "rtn", "--group-size", "32", "--out", str(root / "ck")]) == 0
    return {"fp": fp, "ck": root / "ck"}


def _header_lies(d: Path) -> None:
    f = d / "model.safetensors"
    b = bytearray(f.read_bytes())
    n = int.from_bytes(b[:8], "little")
    header = json.loads(b[8:8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["data_offsets"][1] += 4096
    blob = json.dumps(header).encode()
    f.write_bytes(len(blob).to_bytes(8, "little") + blob + bytes(b[8 + n:]))


def _first(t: dict, suffix: str) -> str:
    return next(k for k in sorted(t) if k.endswith(suffix))


# (case name, which good dir is broken ("fp", "ck" or None), how it is broken, argv with {src}/{out}/{tmp})
CASES: list[tuple[str, str | None, Callable[[Path], None] | None, list[str]]] = []


def case(name: str, base: str | None, argv: list[str], breaker: Callable[[Path], None] | None = None) -> None:
    CASES.append((name, base, breaker, argv))


GEN = ["generate", "{src}", "--prompt", "hi", "--max-new-tokens", "1"]
Q = ["quantize", "{src}", "--method", "rtn", "--group-size", "32", "--out", "{out}"]
QC = ["quantize", "{src}", "--method", "gptq", "--group-size", "32", "--n-samples", "2", "--seq-len", "32",
      "--out", "{out}"]
# broken weight files, read by generate (loads the model), quantize and export
for cmd in (GEN, Q, ["export", "{src}", "--format", "compressed-tensors", "--group-size", "32", "--out", "{out}"]):
    c = cmd[0]
    case(f"{c}: no weights", "fp", cmd, lambda d: (d / "model.safetensors").unlink())
    case(f"{c}: zero-byte weights", "fp", cmd, lambda d: (d / "model.safetensors").write_bytes(b""))
    case(f"{c}: truncated weights", "fp", cmd,
         lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:5000]))
    case(f"{c}: lying header", "fp", cmd, _header_lies)
    case(f"{c}: config not JSON", "fp", cmd, lambda d: (d / "config.json").write_text("{nope"))
    case(f"{c}: config a list", "fp", cmd, lambda d: edit_json(d, "config.json", lambda cfg: [cfg]))
    case(f"{c}: 3 layers claimed, 2 stored", "fp", cmd,
         lambda d: edit_json(d, "config.json", lambda cfg: cfg.update(num_hidden_layers=3)))
    case(f"{c}: 1 layer claimed, 2 stored", "fp", cmd,
         lambda d: edit_json(d, "config.json", lambda cfg: cfg.update(num_hidden_layers=1)))
    case(f"{c}: v_proj deleted", "fp", cmd, lambda d: edit_tensors(d, lambda t: t.pop(_first(t, "v_proj.weight"))))
    case(f"{c}: lm_head deleted (untied)", "fp", cmd, lambda d: edit_tensors(d, lambda t: t.pop("lm_head.weight")))
    case(f"{c}: NaN norm", "fp", cmd,
         lambda d: edit_tensors(d, lambda t: t[_first(t, "input_layernorm.weight")].fill_(float("nan"))))
# broken checkpoints, read by generate, eval and export
for cmd in (GEN, ["export", "{src}", "--format", "gguf", "--out", "{tmp}/m.gguf"]):
    c = cmd[0]
    case(f"{c}: NaN scales", "ck", cmd,
         lambda d: edit_tensors(d, lambda t: t[_first(t, ".scales")].fill_(float("nan"))))
    case(f"{c}: zero scales", "ck", cmd, lambda d: edit_tensors(d, lambda t: t[_first(t, ".scales")].zero_()))
    case(f"{c}: negative scales", "ck", cmd, lambda d: edit_tensors(d, lambda t: t[_first(t, ".scales")].neg_()))
    case(f"{c}: float qweight", "ck", cmd,
         lambda d: edit_tensors(d, lambda t: t.update({_first(t, ".qweight"): t[_first(t, ".qweight")].float()})))
    case(f"{c}: quant config without bits", "ck", cmd, lambda d: edit_json(d, "lowbit_quant.json",
                                                                              lambda q: q.pop("bits") and None))
    case(f"{c}: quant config a list", "ck", cmd, lambda d: edit_json(d, "lowbit_quant.json", lambda q: [q]))
    case(f"{c}: quant config names a missing layer", "ck", cmd, lambda d: edit_json(
        d, "lowbit_quant.json", lambda q: q["modules"].append("model.layers.7.mlp.up_proj")))
    case(f"{c}: bits_per_weight 0.5", "ck", cmd,
         lambda d: edit_json(d, "lowbit_quant.json", lambda q: q.update(bits_per_weight=0.5)))
    case(f"{c}: act_bits 3", "ck", cmd, lambda d: edit_json(d, "lowbit_quant.json", lambda q: q.update(act_bits=3)))
    case(f"{c}: bits 9", "ck", cmd, lambda d: edit_json(d, "lowbit_quant.json", lambda q: q.update(bits=9)))
case("quantize a checkpoint", "ck", Q)
case("eval --reference a checkpoint", "ck", ["eval", "{good_fp}", "--reference", "{src}"])
for v in ("0", "1", "9", "-1", "four", "4.7"):
    case(f"quantize --bits {v}", "fp", [*Q, "--bits", v])
for v in ("-64", "4096"):
    case(f"quantize --group-size {v}", "fp", ["quantize", "{src}", "--method", "rtn", "--out", "{out}",
                                              "--group-size", v])
for a in (["--act-bits", "3"], ["--kv-bits", "5"], ["--method", "nope"], ["--method", "gptq+gptq"],
          ["--seq-len", "0"], ["--seq-len", "1"], ["--seq-len", "4096"], ["--n-samples", "0"], ["--n-samples", "-1"],
          ["--batch-size", "0"], ["--batch-size", "-1"], ["--range", "best"]):
    case(f"quantize {' '.join(a)}", "fp", [*QC, *a])
case("quantize --out exists", "fp", [*Q[:-1], "{tmp}"])
case("quantize --out equal to input", "fp", [*Q[:-1], "{src}"])
case("quantize --out inside input", "fp", [*Q[:-1], "{src}/q"])
case("quantize --out under a file", "fp", [*Q[:-1], "{src}/config.json/q"])
case("quantize --resume without --stream", "fp", [*Q, "--resume"])
case("quantize --stream cbq", "fp", [*Q[:3], "cbq", "--stream", "--out", "{out}"])
for name, data in (("empty", b""), ("binary", bytes(range(256)) * 8),
                   ("shorter than one window", b"a few words " * 30)):
    case(f"quantize {name} calibration", "fp", [*QC, "--calib", "{tmp}/calib.txt", "--seq-len", "128"],
         lambda d, data=data: (d.parent / "calib.txt").write_bytes(data))
for name, text in (("symmetric no", "method: rtn\nsymmetric: 'no'\n"), ("bits 4.7", "method: rtn\nbits: 4.7\n"),
                   ("bits four", "method: rtn\nbits: four\n"), ("bits null", "method: rtn\nbits: null\n"),
                   ("python tag", "method: !!python/object/apply:os.system ['echo pwned']\n")):
    case(f"recipe {name}", "fp", [*Q, "--recipe", "{tmp}/r.yaml"],
         lambda d, t=text: (d.parent / "r.yaml").write_text(t))
for a in (["--window", "0"], ["--window", "1"], ["--stride", "0"], ["--stride", "-1"]):
    case(f"eval {' '.join(a)}", "fp", ["eval", "{src}", *a])
for a in (["--max-new-tokens", "0"], ["--max-new-tokens", "-3"], ["--max-new-tokens", "99999999999"],
          ["--temperature", "nan"], ["--temperature", "-1"], ["--top-p", "2"], ["--prompt", ""]):
    case(f"generate {' '.join(a)}", "fp", [*GEN, *a])
case("export unknown type", "fp", ["export", "{src}", "--format", "gguf", "--type", "Q1_X", "--out", "{tmp}/m.gguf"])
case("export unknown format", "fp", ["export", "{src}", "--format", "onnx", "--out", "{out}"])
case("export --out inside input", "fp", ["export", "{src}", "--format", "gguf", "--out", "{src}/m.gguf"])
case("report non-UTF-8 table", None, ["report", "{tmp}/t.json", "--out", "{tmp}/plots"],
     lambda d: (d.parent / "t.json").write_bytes(b"\xff\xfe{"))
case("report over an existing PNG", None, ["report", "{tmp}/t.json", "--out", "{tmp}"],
     lambda d: ((d.parent / "t.json").write_text(json.dumps({"models": {"m": {"metric": "perplexity", "fp": 1.0,
                                                                         "rows": []}}})),
                (d.parent / "pareto_m.png").write_bytes(b"mine")))
case("inspect --verify a changed file", "ck", ["inspect", "{src}", "--verify"],
     lambda d: (d / "tokenizer_config.json").write_text("{}"))
case("inspect: config a list", "fp", ["inspect", "{src}"], lambda d: edit_json(d, "config.json", lambda c: [c]))


def run_case(capsys, tmp: Path, good: dict[str, Path], base: str | None, breaker, argv: list[str]) -> dict:
    """Run one case; what went wrong (traceback, silent acceptance, modified input, partial output)."""
    tmp.mkdir()
    src = tmp / "src"
    if base is not None:
        shutil.copytree(good[base], src)
    else:
        src.mkdir()
    if breaker is not None:
        breaker(src)
    before = tree_hash(tmp)
    out = tmp / "out"
    args = [a.format(src=src, out=out, tmp=tmp, good_fp=good["fp"]) for a in argv]
    capsys.readouterr()
    try:
        code = main(args)
    except SystemExit as e:  # argparse
        code = e.code
    except Exception as e:  # noqa: BLE001 (the test counts what the console would show as a traceback)
        code = f"traceback {type(e).__name__}: {e}"
    err = capsys.readouterr().err
    lines = [x for x in err.strip().splitlines() if not x.startswith("lowbit: note:")]  # notes say what runs
    after = tree_hash(tmp)
    return {"traceback": isinstance(code, str) or "Traceback" in err,
            "accepted": code == 0, "exit": code, "lines": len(lines), "message": lines[-1] if lines else "",
            "modified": before != after,
            "partial": out.exists() or any(p.name.startswith(".") for p in tmp.iterdir())}


def test_bad_input_table(capsys, good, tmp_path):
    """Every case of the table: exit 2 and one line, nothing modified or left behind; totals printed."""
    results = {name: run_case(capsys, tmp_path / f"c{i}", good, base, breaker, argv)
               for i, (name, base, breaker, argv) in enumerate(CASES)}
    totals = {k: sum(bool(r[k]) for r in results.values()) for k in ("traceback", "accepted", "modified", "partial")}
    totals["not one line or not exit 2"] = sum(r["lines"] != 1 or r["exit"] != 2 for r in results.values())
    with capsys.disabled():
        print(f"\nbad inputs: {len(results)} cases; " + ", ".join(f"{k}: {v}" for k, v in totals.items()))
    bad = {n: r for n, r in results.items()
           if r["traceback"] or r["accepted"] or r["modified"] or r["partial"] or r["lines"] != 1 or r["exit"] != 2}
    assert not bad, "\n".join(f"{n}: {r}" for n, r in bad.items())


def test_lowbit_load_refuses_broken_checkpoints(good, tmp_path):
    """The library entry point raises a one-line LowbitError for broken directories (never random weights)."""
    for i, (name, base, breaker, _) in enumerate(c for c in CASES if c[0].startswith("generate: ")):
        d = tmp_path / f"d{i}"
        shutil.copytree(good[base], d)
        breaker(d)
        with pytest.raises(LowbitError) as e:
            lowbit.load(d)
        assert "\n" not in str(e.value), name


def test_missing_weights_never_become_random(good):
    """Two loads of the same directory give the same weights (no random initialisation anywhere)."""
    a, b = lowbit.load(good["fp"]).state_dict(), lowbit.load(good["fp"]).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_outputs_copy_only_model_files_with_umask_permissions(good, tmp_path):
    """No subfolders, code files, foreign links or source modes in outputs; permissions follow the umask."""
    src = tmp_path / "src"
    shutil.copytree(good["fp"], src)
    (src / "original").mkdir()
    (src / "original" / "consolidated.pth").write_bytes(b"x")
    (src / "modeling_evil.py").write_text("raise SystemExit('ran')")
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    os.chmod(src / "config.json", 0o600)
    old = os.umask(0o027)
    try:
        assert main(["quantize", str(src), "--method", "rtn", "--group-size", "32", "--out", str(tmp_path / "q")]) == 0
        (src / "special_tokens_map.json").symlink_to(outside)
        with pytest.raises(LowbitError, match="outside the model directory"):
            lowbit.api.quantize_dir(src, tmp_path / "q2", lowbit.api.make_config("rtn", 4, 32))
    finally:
        os.umask(old)
    q = tmp_path / "q"
    names = {p.name for p in q.iterdir()}
    assert "original" not in names and "modeling_evil.py" not in names and "secret.txt" not in names
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in q.iterdir()}
    assert set(modes.values()) == {"0o640"}, modes
    assert q.stat().st_mode & 0o777 == 0o750
    assert not (tmp_path / "q2").exists() and not list(tmp_path.glob(".q2*"))


def test_manifest_verify(good, capsys):
    """A fresh checkpoint verifies; its manifest records the source's hashes and the calibration settings."""
    assert main(["inspect", str(good["ck"]), "--verify"]) == 0
    m = json.loads((good["ck"] / "lowbit_manifest.json").read_text())
    assert "model.safetensors" in m["files"] and "model.safetensors" in m["source"]["files"]


def test_stale_temporary_output_of_a_killed_run_is_removed(good, tmp_path):
    """A `.OUT.tmp-PID-*` folder left by a SIGKILLed process (its pid gone) is removed by the next run."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    stale = tmp_path / f".q.tmp-{p.pid}-abc"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    assert main(["quantize", str(good["fp"]), "--method", "rtn", "--group-size", "32",
                 "--out", str(tmp_path / "q")]) == 0
    assert not stale.exists()


def test_sigkill_then_sigterm_of_a_streaming_run(good, tmp_path):
    """SIGKILL of --stream keeps .OUT.partial, which a rerun reports (one line) and --resume continues; SIGTERM
    says what was kept."""
    out = tmp_path / "q"
    cmd = [sys.executable, "-m", "lowbit.cli", "quantize", str(good["fp"]), "--method", "gptq", "--group-size", "32",
           "--n-samples", "4", "--seq-len", "32", "--stream", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(Path(lowbit.__file__).parent.parent)}
    partial = tmp_path / ".q.partial"
    for sig in (signal.SIGKILL, signal.SIGTERM):
        p = subprocess.Popen(cmd + (["--resume"] if partial.exists() else []), env=env, stderr=subprocess.PIPE,
                             text=True)
        t0 = time.time()
        while not partial.exists() and time.time() - t0 < 60 and p.poll() is None:
            time.sleep(0.05)
        p.send_signal(sig)
        _, err = p.communicate(timeout=60)
        if out.exists():  # the run finished before the signal: nothing more to check
            return
        assert "Traceback" not in err
        if sig == signal.SIGTERM and p.returncode == 130:
            assert err.strip().splitlines()[-1].count("--resume") == 1
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--resume" in r.stderr
    r = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert main(["inspect", str(out), "--verify"]) == 0
