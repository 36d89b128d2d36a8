"""The lowbit command end to end: quantize, eval, inspect, and clear errors for bad input."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from lowbit.cli import main


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_quantize_eval_inspect_round_trip(capsys, tiny_models, calib_file, tmp_path):
    out = tmp_path / "q"
    code, stdout, _ = run(capsys, "quantize", tiny_models["llama"], "--method", "gptq", "--bits", "4",
                          "--group-size", "32", "--calib", calib_file, "--n-samples", "8", "--seq-len", "64",
                          "--out", out, "--json")
    assert code == 0
    res = json.loads(stdout)
    assert res["bits_per_weight"] == pytest.approx(4 + 16 / 32)
    code, stdout, _ = run(capsys, "eval", out, "--text", calib_file, "--json", "--reference", tiny_models["llama"])
    ev = json.loads(stdout)
    assert code == 0 and {"perplexity", "bits_per_weight", "bytes", "cosine_to_reference"} <= set(ev)
    assert ev["perplexity"] > 1 and 0.5 < ev["cosine_to_reference"] <= 1.0 + 1e-6
    assert 0 < ev["kld_mean"] <= ev["kld_p99"] and 0 < ev["top1_agreement"] <= 1 and ev["reference_perplexity"] > 1
    code, stdout, _ = run(capsys, "inspect", out)
    info = json.loads(stdout)
    assert info["quantization"]["bits"] == 4 and info["quantization"]["method"] == "gptq"
    assert [p.name for p in tmp_path.iterdir()] == ["q"]  # no temporary directories left behind


def test_encoder_cosine(capsys, tiny_models, calib_file, tmp_path):
    out = tmp_path / "qb"
    assert run(capsys, "quantize", tiny_models["bert"], "--method", "rtn", "--bits", "8", "--group-size", "32",
               "--out", out)[0] == 0
    code, stdout, _ = run(capsys, "eval", out, "--text", calib_file, "--reference", tiny_models["bert"], "--json")
    ev = json.loads(stdout)
    assert code == 0 and ev["cosine_to_reference"] > 0.99 and "perplexity" not in ev


def _expect_error(capsys, argv, pattern, out=None):
    code, _, err = run(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lowbit: error:"), err
    assert pattern in lines[0], lines[0]
    if out is not None:
        assert not out.exists()
        assert not any(p.name.startswith(f".{out.name}.tmp") for p in out.parent.iterdir())


def test_bad_inputs(capsys, tiny_models, calib_file, tmp_path):
    llama = tiny_models["llama"]
    out = tmp_path / "out"
    q = ["quantize", "--calib", calib_file, "--n-samples", "4", "--seq-len", "32", "--out", out]
    _expect_error(capsys, [*q, tmp_path / "nope"], "no such directory", out)
    _expect_error(capsys, [*q, llama, "--bits", "9"], "bits must be an integer from 2 to 8", out)
    _expect_error(capsys, [*q, llama, "--bits", "1"], "bits must be an integer from 2 to 8", out)
    _expect_error(capsys, [*q, llama, "--group-size", "-64"], "group size must be positive", out)
    _expect_error(capsys, [*q, llama, "--method", "magic"], "unknown method 'magic'", out)
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    _expect_error(capsys, ["quantize", llama, "--calib", empty, "--out", out], "is empty", out)
    _expect_error(capsys, ["quantize", llama, "--calib", tmp_path / "missing.txt", "--out", out],
                  "does not exist", out)

    corrupt = tmp_path / "corrupt"
    shutil.copytree(llama, corrupt)
    f = corrupt / "model.safetensors"
    f.write_bytes(f.read_bytes()[:1000])
    _expect_error(capsys, [*q, corrupt], "corrupt or truncated", out)

    nan = tmp_path / "nan"
    shutil.copytree(llama, nan)
    sd = load_file(str(nan / "model.safetensors"))
    key = next(k for k in sd if k.endswith("mlp.down_proj.weight"))
    sd[key][0, 0] = float("nan")
    save_file(sd, str(nan / "model.safetensors"), metadata={"format": "pt"})
    _expect_error(capsys, [*q, nan], "NaN or Inf", out)

    weird = tmp_path / "weird"
    shutil.copytree(llama, weird)
    cfg = json.loads((weird / "config.json").read_text())
    cfg["model_type"] = "gpt_neox"
    (weird / "config.json").write_text(json.dumps(cfg))
    _expect_error(capsys, [*q, weird], "unsupported architecture", out)

    broken = tmp_path / "broken"
    shutil.copytree(llama, broken)
    (broken / "config.json").write_text("{not json")
    _expect_error(capsys, [*q, broken], "not valid JSON", out)

    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    _expect_error(capsys, ["quantize", llama, "--method", "rtn", "--out", existing], "already exists")
    assert (existing / "keep.txt").read_text() == "mine"
    before = {p.name: p.stat().st_mtime_ns for p in llama.iterdir()}
    assert before == {p.name: p.stat().st_mtime_ns for p in llama.iterdir()}  # the input is never touched


def test_console_script_exit_code(tmp_path):
    r = subprocess.run([sys.executable, "-m", "lowbit.cli", "eval", str(tmp_path / "none")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "no such directory" in r.stderr and "Traceback" not in r.stderr


def test_packed_weights_are_small(tiny_models, tmp_path, capsys):
    out = tmp_path / "q4"
    assert run(capsys, "quantize", tiny_models["llama"], "--method", "rtn", "--bits", "4", "--group-size", "64",
               "--out", out)[0] == 0
    q = load_file(str(out / "model.safetensors"))
    fp = load_file(str(tiny_models["llama"] / "model.safetensors"))
    names = [k[: -len(".qweight")] for k in q if k.endswith(".qweight")]
    packed = sum(q[f"{n}.qweight"].numel() + 2 * q[f"{n}.scales"].numel() for n in names)
    fp16 = sum(fp[f"{n}.weight"].numel() * 2 for n in names)
    assert packed / fp16 <= 0.30
    assert all(q[f"{n}.qweight"].dtype == torch.uint8 for n in names)


def test_damaged_checkpoint_and_wrong_reference(capsys, tiny_models, calib_file, tmp_path):
    out = tmp_path / "q"
    assert run(capsys, "quantize", tiny_models["llama"], "--method", "rtn", "--group-size", "32", "--out", out)[0] == 0
    _expect_error(capsys, ["eval", out, "--text", calib_file, "--reference", tiny_models["bert"]],
                  "--reference is a encoder model")
    sd = load_file(str(out / "model.safetensors"))
    del sd[next(k for k in sd if k.endswith(".scales"))]
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    _expect_error(capsys, ["eval", out, "--text", calib_file], "do not match")


def test_calib_seed_draws_other_windows_and_default_keeps_the_old_ones(capsys, monkeypatch, tiny_models,
                                                                       calib_file, tmp_path):
    from lowbit import api
    from lowbit.data import calibration_windows
    from lowbit.errors import LowbitError
    from lowbit.models import load_model

    tok = load_model(tiny_models["llama"]).tokenizer
    text = calib_file.read_text()
    old = calibration_windows(tok, text, 6, 40)  # the draw every result so far was calibrated on
    assert torch.equal(old, calibration_windows(tok, text, 6, 40, seed=api.CalibConfig().seed))
    assert not torch.equal(old, calibration_windows(tok, text, 6, 40, seed=1))
    assert not torch.equal(calibration_windows(tok, text, 6, 40, seed=1), calibration_windows(tok, text, 6, 40, seed=2))

    seen = []

    def fake_quantize_dir(src, out, config, calib, calib_config, **kw):
        seen.append(calib_config.seed)
        raise LowbitError("stop here")

    monkeypatch.setattr(api, "quantize_dir", fake_quantize_dir)
    for extra in ([], ["--calib-seed", "3"]):
        code, _, err = run(capsys, "quantize", tiny_models["llama"], "--method", "gptq", "--out", tmp_path / "q",
                           *extra)
        assert code != 0 and "stop here" in err
    assert seen == [0, 3]


def test_sigterm_removes_the_temporary_output(tmp_path):
    """`kill` (SIGTERM) during a write leaves neither the output nor its dot-prefixed temporary file."""
    import signal
    import subprocess
    import sys
    import textwrap
    import time

    out = tmp_path / "model.gguf"
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from lowbit.cli import sigterm_as_interrupt
        from lowbit.export.source import atomic_file
        try:
            with sigterm_as_interrupt(), atomic_file(Path({str(out)!r})) as tmp:
                tmp.write_bytes(b"partial")
                print("writing", flush=True)
                time.sleep(60)
        except KeyboardInterrupt:
            sys.exit(130)
    """)
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "writing"
    assert len(list(tmp_path.iterdir())) == 1  # the temporary file exists while writing
    p.send_signal(signal.SIGTERM)
    t0 = time.time()
    assert p.wait(timeout=30) == 130 and time.time() - t0 < 30
    assert list(tmp_path.iterdir()) == []
