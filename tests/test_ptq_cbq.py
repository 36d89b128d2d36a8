"""CBQ: windows, LoRA-Rounding initialisation, reconstruction beating RTN, and recipes through save/load and the CLI."""

import json

import pytest
import torch

from lowbit import api
from lowbit.cli import main
from lowbit.errors import LowbitError
from lowbit.export.checkpoint import load
from lowbit.models import block_linears, load_model
from lowbit.ptq import quantize
from lowbit.ptq.cbq import LearnedLinear, windows
from lowbit.ptq.config import CBQConfig, RTNConfig
from lowbit.quantizers import WeightSpec, quantize_weight


def test_windows_cover_every_block_with_overlap():
    assert windows(6, 2, 1) == [(0, 2), (1, 3), (2, 4), (3, 5), (4, 6)]
    assert windows(5, 3, 1) == [(0, 3), (2, 5)]
    assert windows(2, 4, 1) == [(0, 2)]
    assert windows(7, 3, 0) == [(0, 3), (3, 6), (4, 7)]
    with pytest.raises(LowbitError):
        windows(6, 2, 2)


def test_lora_rounding_starts_at_round_to_nearest():
    lin = torch.nn.Linear(64, 32)
    spec = WeightSpec(3, 16)
    ll = LearnedLinear(lin, spec, 16, 4, lin.weight.data, False, torch.Generator().manual_seed(0))
    q = ll.finalize()
    rtn = quantize_weight(lin.weight.data, spec)
    assert (q.codes == rtn.codes).float().mean() > 0.99
    assert ll.a1.shape == (32, 4) and ll.a2.shape == (4, 64)
    r = ll.regulariser(2.0)
    assert 0 < r.item() < 1


def test_lora_rounding_can_start_from_gptq():
    from lowbit.ptq import HessianAccumulator, gptq_quantize

    lin = torch.nn.Linear(64, 32)
    spec = WeightSpec(2, 16)
    acc = HessianAccumulator(64)
    acc.add(torch.randn(256, 64) * torch.linspace(0.2, 3, 64))
    g = gptq_quantize(lin.weight.data, acc.H, spec)
    ll = LearnedLinear(lin, spec, 16, 4, lin.weight.data, False, torch.Generator().manual_seed(0), start=g)
    assert torch.equal(ll.finalize().codes, g.codes)  # the GPTQ solution is the start, exactly
    assert torch.allclose(ll.weight_q(hard=True), g.dequantize(), atol=1e-6)
    soft = ll.weight_q()
    assert ((soft - g.dequantize()).abs() <= 0.05 * g.scales.repeat_interleave(16, 1)).all()


def test_cbq_beats_rtn_on_a_tiny_llama(tiny_models, calib_file):
    from lowbit.data import calibration_windows

    errs = {}
    ref = load_model(tiny_models["llama"])
    toks = calibration_windows(ref.tokenizer, calib_file.read_text(), 8, 32, 0)
    probe = toks[:4]
    with torch.no_grad():
        want = ref.model(input_ids=probe).logits
    spec = WeightSpec(2, 32)
    for name, cfg in (("rtn", RTNConfig(spec)), ("cbq", CBQConfig(spec, steps=25, batch_size=2, rank=2))):
        m = load_model(tiny_models["llama"])
        res = quantize(m.model, m.family, cfg, toks, progress=False)
        with torch.no_grad():
            errs[name] = ((m.model(input_ids=probe).logits - want).norm() / want.norm()).item()
        if name == "cbq":
            assert len(res.report["windows"]) == 1 and set(res.weights) == {
                f"model.layers.{i}.{n}" for i, b in enumerate(m.family.blocks(m.model)) for n in block_linears(b)}
    assert errs["cbq"] < errs["rtn"]


@pytest.mark.parametrize("method,act", [("cfp+cbq", 4), ("rotate+rtn", 8), ("smoothquant", 4)])
def test_recipes_with_activation_quantization_reload_exactly(tiny_models, calib_file, tmp_path, method, act):
    out = tmp_path / "q"
    cfg = api.make_config(method, 4, 32, act_bits=act, options={"cbq": {"steps": 4}} if "cbq" in method else None)
    api.quantize_dir(tiny_models["llama"], out, cfg, calib_file, progress=False,
                     calib_config=api.CalibConfig(n_samples=4, seq_len=32, batch_size=2))
    qcfg = json.loads((out / "lowbit_quant.json").read_text())
    assert qcfg["act_bits"] == act and qcfg["method"] == method.replace("smoothquant", "smoothquant+rtn")
    assert all(t["bits"] == act for t in qcfg["input_transforms"].values())
    assert any(t["hadamard"] for t in qcfg["input_transforms"].values()) == method.startswith("rotate")
    a, b = load(out), load(out)
    ids = torch.randint(0, 4096, (1, 24))
    with torch.no_grad():
        la, lb = a(input_ids=ids).logits, b(input_ids=ids).logits
        from lowbit.quantizers.activation import fp_activations

        with fp_activations(b):
            lf = b(input_ids=ids).logits
    assert torch.equal(la, lb) and not torch.equal(la, lf)  # the activation quantizers came back with the model


def test_cli_recipe_file_and_errors(tiny_models, calib_file, tmp_path, capsys):
    rec = tmp_path / "r.yaml"
    rec.write_text("method: rotate+gptq\nbits: 4\ngroup_size: 32\nact_bits: 4\n")
    out = tmp_path / "o"
    assert main(["quantize", str(tiny_models["llama"]), "--recipe", str(rec), "--calib", str(calib_file),
                 "--n-samples", "4", "--seq-len", "32", "--out", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["method"] == "rotate+gptq" and res["act_bits"] == 4
    assert main(["eval", str(out), "--text", str(calib_file), "--window", "32", "--json"]) == 0
    ev = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert ev["act_bits"] == 4 and ev["perplexity"] > 1
    assert main(["quantize", str(tiny_models["llama"]), "--method", "awq+cbq", "--out", str(tmp_path / "x")]) == 2
    assert "cfp+cbq" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: rotate+gptq\noptions: {rotate: {mode: spin}}\n")
    assert main(["quantize", str(tiny_models["bert"]), "--recipe", str(bad), "--calib", str(calib_file),
                 "--out", str(tmp_path / "y")]) == 2
    assert "unknown rotate mode" in capsys.readouterr().err and not (tmp_path / "y").exists()
    assert main(["quantize", str(tiny_models["llama"]), "--method", "rtn", "--act-bits", "5",
                 "--out", str(tmp_path / "z")]) == 2


def test_report_draws_pngs(tmp_path):
    from lowbit.eval.report import write_report

    rows = [{"method": m, "setting": s, "bits_per_weight": b, "act_bits": a, "value": v, "block_errors": [0.1, 0.2]}
            for m, k in (("rtn", 1.0), ("gptq", 0.5)) for s, b, a, v in
            (("W4A16", 4.125, 16, 10 + k), ("W2A16", 2.25, 16, 20 + k), ("W4A4", 4.125, 4, 15 + k))]
    t = tmp_path / "t.json"
    t.write_text(json.dumps({"models": {"demo": {"metric": "perplexity", "fp": 9.5, "rows": rows}}}))
    paths = write_report(t, tmp_path / "plots")
    assert [p.name for p in paths] == ["pareto_demo.png", "block_errors_demo.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)
    with pytest.raises(LowbitError, match="no rows"):
        write_report(t, tmp_path / "plots", model="minilm")
