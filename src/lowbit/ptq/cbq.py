"""CBQ: cross-block reconstruction (Ding et al., "CBQ: Cross-Block Quantization for Large Language Models", ICLR 2025).

Blocks are calibrated in sliding windows (default 2 blocks, overlap 1). In each window the quantization
parameters of all its linear layers are learned jointly so that the window's output on the quantized
stream matches the full-precision window's output on the full-precision stream ("homologous"
reconstruction): loss = ||h_q - h_fp||^2 / ||h_fp||^2 + KL(softmax(h_fp) || softmax(h_q)) + a rounding
regulariser. Learned: weight step sizes (log scale per group), activation step sizes (a clipping factor of
the per-token dynamic range, per layer) and LoRA-Rounding: AdaRound's rectified sigmoid
h(V) = clip(sigmoid(V)(zeta - gamma) + gamma, 0, 1), zeta = 1.1, gamma = -0.1, with V = V0 + A1 A2 of rank r
(V0 the AdaRound initialisation from the fractional part, fixed), regulariser sum(1 - |2h - 1|^beta) with beta
annealed. A block leaves the window hard-rounded; optional CFP (lowbit.ptq.cfp) runs as a block enters.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from lowbit.formats import qmax
from lowbit.models import BlockInputs, Family, block_linears, block_output, capture_block_inputs
from lowbit.ptq.cfp import scale_activation_outliers, truncate_weight
from lowbit.ptq.config import CBQConfig, GPTQConfig
from lowbit.ptq.gptq_block import gptq_block
from lowbit.ptq.registry import QuantResult, RunOptions, register_model
from lowbit.quantizers import QuantizedWeight, WeightSpec, fp16_round
from lowbit.quantizers.activation import fake_quant_tokens, fp_activations, transform_of
from lowbit.quantizers.hadamard import fwht
from lowbit.quantizers.ste import straight_through
from lowbit.quantizers.weight import fit_weight

ZETA, GAMMA = 1.1, -0.1
CLIP_RANGE = (0.3, 1.0)


class LearnedLinear(nn.Module):
    """A linear layer during reconstruction: fixed fp weight, learned step sizes, LoRA-Rounding, activation clip."""

    def __init__(self, lin: nn.Linear, spec: WeightSpec, act_bits: int, rank: int, w_init: torch.Tensor,
                 hadamard: bool, gen: torch.Generator, start: QuantizedWeight | None = None) -> None:
        super().__init__()
        W = lin.weight.detach().float()
        self.spec, self.act_bits, self.hadamard, self.mode = spec, act_bits, hadamard, "train"
        self.register_buffer("w_fp", W)
        self.register_buffer("bias", None if lin.bias is None else lin.bias.detach().float())
        s0, z = fit_weight(w_init.float(), spec) if start is None else (start.scales.float(), start.zeros.float())
        self.register_buffer("s0", s0[..., None])
        self.register_buffer("zero", z[..., None])
        self.log_s = nn.Parameter(torch.zeros_like(self.s0))
        frac = self._grouped(W) / self.s0
        if start is None:  # AdaRound's start: h(V0) = fractional part, i.e. round to nearest
            rest = (frac - torch.floor(frac)).clamp(0.01, 0.99)
            v0 = -torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1)
            self.register_buffer("base", None)
        else:  # start from a given solution (GPTQ's levels): base + h reproduces it, h may move one step toward W
            level = self._grouped(start.codes.float()) - self.zero
            below = frac < level
            self.register_buffer("base", level - below.float())
            v0 = torch.where(below, 2.0, -2.0)
        self.register_buffer("v0", self._ungrouped(v0))
        self.a1 = nn.Parameter(torch.zeros(W.shape[0], rank))
        self.a2 = nn.Parameter(torch.randn(rank, W.shape[1], generator=gen) * 0.1)
        self.log_clip = nn.Parameter(torch.zeros(())) if act_bits < 16 else None

    def _grouped(self, w: torch.Tensor) -> torch.Tensor:
        """[rows, groups, len] view of a weight-shaped tensor (a short last group padded with zeros)."""
        pad = self.spec.padded(w.shape[1]) - w.shape[1]
        return (F.pad(w, (0, pad)) if pad else w).reshape(self.s0.shape[0], self.s0.shape[1], -1)

    def _ungrouped(self, g: torch.Tensor) -> torch.Tensor:
        """The weight-shaped [out, in] tensor of a grouped one (padding dropped)."""
        out, inp = self.w_fp.shape
        return g.reshape(out, -1)[:, :inp]

    def h(self) -> torch.Tensor:
        """Soft rounding offsets in [0, 1] (AdaRound's rectified sigmoid of V0 + A1 A2)."""
        v = self.v0 + self.a1 @ self.a2
        return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)

    def scale(self) -> torch.Tensor:
        """Current step sizes [rows, groups, 1], rounded to fp16 as stored (straight-through)."""
        s = self.s0 * torch.exp(self.log_s)
        return straight_through(s, fp16_round(s))

    def clip(self) -> torch.Tensor:
        """Learned activation clipping factor (scale = clip * max|x| / qmax per token)."""
        assert self.log_clip is not None
        return torch.exp(self.log_clip).clamp(*CLIP_RANGE)

    def _codes(self, hard: bool) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.scale()
        base = torch.floor(self._grouped(self.w_fp) / s).detach() if self.base is None else self.base
        self._h = self.h()  # kept for the regulariser of the same step
        h = self._grouped(self._h)
        if hard:
            h = (h >= 0.5).float()
        return torch.clamp(base + h + self.zero, 0, qmax(self.spec.bits)), s

    def weight_q(self, hard: bool = False) -> torch.Tensor:
        """The quantized (soft or hard-rounded) weight."""
        q, s = self._codes(hard)
        return self._ungrouped((q - self.zero) * s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hadamard:
            x = fwht(x)
        if self.mode == "fp":
            return F.linear(x, self.w_fp, self.bias)
        if self.log_clip is not None:
            x = fake_quant_tokens(x, self.act_bits, self.clip())
        return F.linear(x, self.weight_q(self.mode == "hard"), self.bias)

    def regulariser(self, beta: float) -> torch.Tensor:
        """Mean over weights of 1 - |2h - 1|^beta (pushes every offset to 0 or 1)."""
        h = getattr(self, "_h", None)
        return (1 - (2 * (self.h() if h is None else h) - 1).abs().pow(beta)).mean()

    def finalize(self) -> QuantizedWeight:
        """Hard-rounded codes with the learned fp16 step sizes."""
        with torch.no_grad():
            q, s = self._codes(hard=True)
        return QuantizedWeight(self._ungrouped(q).to(torch.uint8), s.squeeze(-1), self.zero.squeeze(-1),
                               self.spec)


def windows(n: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """Block ranges [a, b) of the sliding windows covering n blocks."""
    if size < 1 or not 0 <= overlap < size:
        from lowbit.errors import LowbitError
        raise LowbitError(f"CBQ window must be >= 1 block with 0 <= overlap < window, got {size} / {overlap}")
    size = min(size, n)
    step = size - min(overlap, size - 1)
    starts = list(range(0, n - size + 1, step))
    if starts[-1] + size < n:
        starts.append(n - size)
    return [(a, a + size) for a in starts]


def _run(blocks: list[nn.Module], h: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
    for b in blocks:
        h = block_output(b(h, *args, **kwargs))
    return h


def _set_mode(wrappers: dict[int, dict[str, LearnedLinear]], idx: range, mode: str) -> None:
    for i in idx:
        for w in wrappers[i].values():
            w.mode = mode


def _gptq_start(block: nn.Module, config: CBQConfig, inputs: BlockInputs) -> dict[str, QuantizedWeight]:
    """GPTQ's solution for the block on the quantized stream (the block's float weights are left as they were)."""
    linears = block_linears(block)
    saved = {n: lin.weight.data.clone() for n, lin in linears.items()}
    try:
        with torch.no_grad():
            return gptq_block(block, GPTQConfig(config.weight), inputs)
    finally:
        for n, lin in linears.items():
            lin.weight.data = saved[n]


def _wrap(block: nn.Module, config: CBQConfig, gen: torch.Generator,
          starts: dict[str, QuantizedWeight] | None = None) -> dict[str, LearnedLinear]:
    out = {}
    for name, lin in block_linears(block).items():
        t = transform_of(lin)
        w_init = truncate_weight(lin.weight.data, config.cfp_lambda) if config.cfp else lin.weight.data
        out[name] = LearnedLinear(lin, config.weight, config.act_bits, config.rank, w_init,
                                  bool(t is not None and t.hadamard), gen, (starts or {}).get(name))
    return out


def _swap(block: nn.Module, mods: dict[str, nn.Module]) -> None:
    for name, m in mods.items():
        parent, _, child = name.rpartition(".")
        setattr(block.get_submodule(parent) if parent else block, child, m)


def _loss(out: torch.Tensor, target: torch.Tensor, kl_weight: float) -> torch.Tensor:
    l2 = (out - target).pow(2).mean() / target.pow(2).mean().clamp_min(1e-12)
    if kl_weight:
        kl = F.kl_div(F.log_softmax(out, -1).flatten(0, -2), F.log_softmax(target, -1).flatten(0, -2),
                      log_target=True, reduction="batchmean")
        l2 = l2 + kl_weight * kl
    return l2


def _train_window(blocks: list[nn.Module], layers: list[LearnedLinear], x_q: BlockInputs, targets: list[torch.Tensor],
                  config: CBQConfig, gen: torch.Generator) -> list[float]:
    fast = [p for w in layers for p in (w.a1, w.a2)]
    slow = [w.log_s for w in layers] + [w.log_clip for w in layers if w.log_clip is not None]
    opt = torch.optim.Adam([{"params": fast, "lr": config.lr}, {"params": slow, "lr": config.scale_lr}])
    start = int(config.warmup * config.steps)
    losses = []
    for step in range(config.steps):
        i = int(torch.randint(len(targets), (1,), generator=gen))
        out = _run(blocks, x_q.hidden[i], x_q.args[i], x_q.kwargs[i])
        loss = _loss(out, targets[i], config.kl_weight)
        losses.append(loss.item())
        if step >= start:
            t = (step - start) / max(1, config.steps - start)
            beta = config.beta[0] + (config.beta[1] - config.beta[0]) * t
            loss = loss + config.round_weight * sum(w.regulariser(beta) for w in layers) / len(layers)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return losses


@register_model(CBQConfig)
def cbq_quantize(model: nn.Module, family: Family, config: CBQConfig, calib_tokens: torch.Tensor | None,
                 options: RunOptions) -> QuantResult:
    """Run CBQ over all blocks in place; the result holds the weights (unless options.on_block takes them), the
    calibration bytes and a report (losses and seconds per window)."""
    from lowbit.quantizers.activation import registry

    if calib_tokens is None:
        raise ValueError("cbq needs calibration tokens")
    progress, on_block, prefix = options.progress, options.on_block, family.blocks_prefix(model)
    t0 = time.perf_counter()
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    blocks = list(family.blocks(model))
    for p in model.parameters():
        p.requires_grad_(False)
    x_q = capture_block_inputs(model, family, calib_tokens, config.batch_size)
    x_fp = BlockInputs(list(x_q.hidden), x_q.args, x_q.kwargs, family)
    calib_bytes = 2 * x_q.nbytes()
    originals: dict[int, dict[str, nn.Module]] = {}
    wrappers: dict[int, dict[str, LearnedLinear]] = {}
    report: dict = {"windows": [], "cfp_channels": {}}
    results: dict[str, QuantizedWeight] = {}
    done_upto = 0
    wins = windows(len(blocks), config.window, config.overlap)
    for wi, (a, b) in enumerate(tqdm(wins, desc=f"cbq {config.weight.describe()}", unit="window",
                                     disable=not progress)):
        for i in range(a, b):
            if i in wrappers:
                continue
            if config.cfp:  # the fp stream at block i's input: through the window's earlier (fp) blocks
                _set_mode(wrappers, range(a, i), "fp")
                with fp_activations(model):
                    h_in = BlockInputs([_run(blocks[a:i], h, ar, kw).detach() for h, ar, kw in
                                        zip(x_fp.hidden, x_fp.args, x_fp.kwargs, strict=True)],
                                       x_fp.args, x_fp.kwargs, family)
                with torch.no_grad():
                    report["cfp_channels"][i] = scale_activation_outliers(blocks[i], h_in, config.cfp_lambda)
            starts = None
            if config.init == "gptq":  # the quantized stream at block i's input, through the window's earlier blocks
                _set_mode(wrappers, range(a, i), "hard")
                with torch.no_grad():
                    q_in = BlockInputs([_run(blocks[a:i], h, ar, kw) for h, ar, kw in
                                        zip(x_q.hidden, x_q.args, x_q.kwargs, strict=True)],
                                       x_q.args, x_q.kwargs, family)
                starts = _gptq_start(blocks[i], config, q_in)
            originals[i] = dict(block_linears(blocks[i]))
            wrappers[i] = _wrap(blocks[i], config, gen, starts)
            _swap(blocks[i], wrappers[i])
        rng = range(a, b)
        _set_mode(wrappers, rng, "fp")
        with torch.no_grad(), fp_activations(model):  # the fp targets: no activation or KV-cache quantization
            targets = [_run(blocks[a:b], h, ar, kw) for h, ar, kw in zip(x_fp.hidden, x_fp.args, x_fp.kwargs,
                                                                         strict=True)]
        _set_mode(wrappers, rng, "train")
        layers = [w for i in rng for w in wrappers[i].values()]
        tw = time.perf_counter()
        with torch.enable_grad():
            losses = _train_window(blocks[a:b], layers, x_q, targets, config, gen)
        report["windows"].append({"blocks": [a, b - 1], "loss_first": losses[0], "loss_last": losses[-1],
                                  "seconds": round(time.perf_counter() - tw, 2)})
        last = b if wi == len(wins) - 1 else wins[wi + 1][0]
        for i in range(done_upto, last):  # blocks leaving the window: fp stream on, then freeze the block
            _set_mode(wrappers, range(i, i + 1), "fp")
            with torch.no_grad(), fp_activations(model):
                for k, (h, ar, kw) in enumerate(zip(x_fp.hidden, x_fp.args, x_fp.kwargs, strict=True)):
                    x_fp.hidden[k] = _run([blocks[i]], h, ar, kw)
            done = {}
            for name, w in wrappers[i].items():
                q = w.finalize()
                lin = originals[i][name]
                lin.weight.data = q.dequantize(lin.weight.dtype)
                full = f"{prefix}.{i}.{name}"
                t = registry(model).get(full)
                if t is not None and w.log_clip is not None:
                    t.clip = float(w.clip().detach())
                done[full] = q
            _swap(blocks[i], originals[i])
            del wrappers[i], originals[i]
            x_q.advance(blocks[i])  # the quantized stream, through the frozen block (activation hooks on)
            if on_block is not None:
                on_block(done)
            else:
                results.update(done)
        done_upto = last
    report["seconds"] = round(time.perf_counter() - t0, 2)
    report["steps_per_window"] = config.steps
    report["loss_final_mean"] = float(sum(w["loss_last"] for w in report["windows"]) / max(1, len(wins)))
    assert not math.isnan(report["loss_final_mean"]), "CBQ diverged"
    return QuantResult(results, time.perf_counter() - t0, calib_bytes, report)
