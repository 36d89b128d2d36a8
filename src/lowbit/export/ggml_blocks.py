"""ggml's block formats Q4_0, Q8_0 and Q4_K as bytes (the layouts of llama.cpp's ggml-common.h).

Q4_0 and Q8_0 hold blocks of 32 weights w = x * d with one fp16 d per block and x a signed integer
(-8..7 stored as x + 8 in nibbles, element l in the low nibble of byte l and element l + 16 in its high
nibble; or -128..127 as int8). When lowbit's groups are a multiple of 32 (or per channel) and every
code - zero fits that range, a block is our codes and fp16 scale as they are: `int_blocks` builds them
without re-quantizing. Q4_K has super-blocks of 256 = 8 sub-blocks of 32 with w = d * sc_j * q - dmin * m_j
(q in 0..15, sc_j and m_j 6-bit, d and dmin fp16); the gguf package reads but does not write it, so
`quantize_q4_k` fits it here (the sub-block range search of llama.cpp's make_qkx2_quants: least-squares
scale and offset over a grid of candidate step sizes, weighted by |x| + rms) and packs the 144-byte blocks.
"""

from __future__ import annotations

import numpy as np
import torch

QK = 32  # weights per Q4_0 / Q8_0 block and per Q4_K sub-block
QK_K = 256  # weights per Q4_K super-block
INT_RANGE = {"Q4_0": (-8, 7), "Q8_0": (-128, 127)}


def _fp16_bytes(d: torch.Tensor) -> np.ndarray:
    """fp16 values [..., k] as their little-endian bytes [..., 2k]."""
    a = d.to(torch.float16).contiguous().numpy()
    return a.view(np.uint8).reshape(*a.shape[:-1], -1)


def int_blocks(x: torch.Tensor, d: torch.Tensor, qtype: str) -> np.ndarray:
    """Q4_0 / Q8_0 bytes [out, in/32 * block_bytes] from signed integers x [out, in] and fp16 d [out, in/32]."""
    lo, hi = INT_RANGE[qtype]
    if int(x.min()) < lo or int(x.max()) > hi:
        raise ValueError(f"integers outside {qtype}'s range {lo}..{hi}")
    out, inp = x.shape
    nb = inp // QK
    db = _fp16_bytes(d).reshape(out, nb, 2)
    if qtype == "Q8_0":
        qs = x.to(torch.int8).reshape(out, nb, QK).numpy().view(np.uint8)
    else:
        u = (x + 8).to(torch.uint8).reshape(out, nb, 2, QK // 2)
        qs = (u[:, :, 0] | (u[:, :, 1] << 4)).numpy()
    return np.ascontiguousarray(np.concatenate([db, qs], axis=-1).reshape(out, -1))


def _best_fit(x: torch.Tensor, rmin: float = -1.0, rdelta: float = 0.1, nstep: int = 20) -> tuple:
    """Per row of x [n, 32]: scale >= 0 and offset <= 0 with x ~ scale * q + offset, q in 0..15 (weighted LS)."""
    w = x.pow(2).mean(-1, keepdim=True).sqrt() + x.abs()
    lo = x.amin(-1, keepdim=True).clamp(max=0.0)
    hi = x.amax(-1, keepdim=True)
    span = (hi - lo).clamp_min(1e-30)
    scale, off = span / 15, lo
    q = torch.round((x - off) / scale).clamp(0, 15)
    best = (w * (scale * q + off - x) ** 2).sum(-1, keepdim=True)
    sw = w.sum(-1, keepdim=True)
    sx = (w * x).sum(-1, keepdim=True)
    for i in range(nstep + 1):
        q = torch.round((rmin + rdelta * i + 15) / span * (x - lo)).clamp(0, 15)
        wq = w * q
        sl, sl2, slx = wq.sum(-1, keepdim=True), (wq * q).sum(-1, keepdim=True), (wq * x).sum(-1, keepdim=True)
        det = (sw * sl2 - sl * sl).clamp_min(1e-30)
        s = (sw * slx - sx * sl) / det
        b = (sl2 * sx - sl * slx) / det
        pos = b > 0  # the offset may only lower the range (m >= 0 in Q4_K)
        s = torch.where(pos, slx / sl2.clamp_min(1e-30), s)
        b = torch.where(pos, torch.zeros_like(b), b)
        err = (w * (s * q + b - x) ** 2).sum(-1, keepdim=True)
        better = (err < best) & (s > 0)
        scale, off, best = torch.where(better, s, scale), torch.where(better, b, off), torch.where(better, err, best)
    flat = hi <= lo  # constant sub-block: zero scale
    return torch.where(flat, torch.zeros_like(scale), scale).squeeze(-1), off.squeeze(-1)


def _six_bit(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per super-block of v [n, 8] (>= 0): an fp16 multiplier and 6-bit integers with v ~ mult * int."""
    mult = (v.amax(-1, keepdim=True) / 63).to(torch.float16).float()
    ints = torch.where(mult > 0, torch.round(v / mult.clamp_min(1e-30)), torch.zeros_like(v)).clamp(0, 63)
    return mult, ints


def quantize_q4_k(w: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
    """Q4_K bytes [out, in/256 * 144] of a float weight [out, in] (in % 256 == 0), and the weight they decode to."""
    out, inp = w.shape
    x = w.float().reshape(-1, 8, QK)  # [super-blocks, sub-block, 32]
    n = x.shape[0]
    scale, off = _best_fit(x.reshape(-1, QK))
    d, sc = _six_bit(scale.reshape(n, 8))
    dmin, m = _six_bit((-off).reshape(n, 8))
    eff_s, eff_m = (d * sc).unsqueeze(-1), (dmin * m).unsqueeze(-1)
    q = torch.where(eff_s > 0, torch.round((x + eff_m) / eff_s.clamp_min(1e-30)), torch.zeros_like(x)).clamp(0, 15)
    qi, sci, mi = q.to(torch.uint8), sc.to(torch.uint8), m.to(torch.uint8)
    pairs = qi.reshape(n, 4, 2, QK)  # 64 weights per 32 bytes: low nibbles first half, high nibbles second
    qs = (pairs[:, :, 0] | (pairs[:, :, 1] << 4)).reshape(n, 128)
    sbytes = torch.cat([sci[:, :4] | ((sci[:, 4:] >> 4) << 6), mi[:, :4] | ((mi[:, 4:] >> 4) << 6),
                        (sci[:, 4:] & 15) | ((mi[:, 4:] & 15) << 4)], dim=1)
    blocks = np.concatenate([_fp16_bytes(d), _fp16_bytes(dmin), sbytes.numpy(), qs.numpy()], axis=1)
    decoded = (eff_s * q - eff_m).reshape(out, inp)
    return np.ascontiguousarray(blocks.reshape(out, -1)), decoded


def dequantize_q4_k(data: np.ndarray, shape: tuple[int, int]) -> torch.Tensor:
    """Reference decoder of Q4_K bytes (for checking the packer independently of the gguf package)."""
    b = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 144).copy())
    d = b[:, 0:2].contiguous().view(torch.float16).float()
    dmin = b[:, 2:4].contiguous().view(torch.float16).float()
    s = b[:, 4:16].to(torch.int32)
    sc = torch.cat([s[:, 0:4] & 63, (s[:, 8:12] & 15) | ((s[:, 0:4] >> 6) << 4)], dim=1).float()
    m = torch.cat([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], dim=1).float()
    qs = b[:, 16:].reshape(-1, 4, 1, QK).to(torch.int32)
    q = torch.cat([qs & 15, qs >> 4], dim=2).reshape(-1, 8, QK).float()
    return ((d * sc).unsqueeze(-1) * q - (dmin * m).unsqueeze(-1)).reshape(shape)


def _qx_fit(x: torch.Tensor, nmax: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """llama.cpp's make_qx_quants (weights x^2) per row of x [n, 16]: a signed scale and integers in
    -nmax..nmax-1 with x ~ scale * L; the value of largest magnitude maps to -nmax, then 18 nearby step sizes are
    tried and the best weighted least-squares fit is kept (first best wins, as in the C loop)."""
    mx = x.gather(-1, x.abs().argmax(-1, keepdim=True))  # signed value of the largest magnitude
    live = mx.abs() >= 1e-15
    safe = torch.where(live, mx, torch.ones_like(mx))
    w = x * x
    scale = best = codes = None
    for k, step in enumerate([0] + [i for i in range(-9, 10) if i]):
        l = torch.round(-(nmax + 0.1 * step) / safe * x).clamp(-nmax, nmax - 1)
        sumlx, suml2 = (w * x * l).sum(-1, keepdim=True), (w * l * l).sum(-1, keepdim=True)
        s = torch.where(suml2 > 0, sumlx / suml2.clamp_min(1e-30), torch.zeros_like(sumlx))
        if k == 0:
            scale, best, codes = s, s * sumlx, l
            continue
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        scale, best = torch.where(better, s, scale), torch.where(better, s * sumlx, best)
        codes = torch.where(better, l, codes)
    return torch.where(live, scale, 0.0).squeeze(-1), torch.where(live, codes, 0.0)


def quantize_q6_k(w: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
    """Q6_K bytes [out, in/256 * 210] of a float weight [out, in] (in % 256 == 0), and the weight they decode to.

    A super-block of 256 holds 16 sub-blocks of 16: w = d * sc_j * (q - 32), q in 0..63 (low 4 bits in `ql`,
    high 2 in `qh`), sc_j int8, d fp16, as llama.cpp's quantize_row_q6_K_ref: each sub-block fitted by
    make_qx_quants, the scales put on an int8 grid whose -128 is the largest, the codes recomputed with them.
    """
    out, inp = w.shape
    x = w.float().reshape(-1, 16, 16)  # [super-blocks, sub-block, 16]
    n = x.shape[0]
    sub_scale, fit = _qx_fit(x.reshape(-1, 16))
    sub_scale, fit = sub_scale.reshape(n, 16), fit.reshape(n, 16, 16)
    top = sub_scale.gather(-1, sub_scale.abs().argmax(-1, keepdim=True))  # signed scale of largest magnitude
    live = top.abs() >= 1e-15
    iscale = torch.where(live, -128.0 / torch.where(live, top, torch.ones_like(top)), torch.zeros_like(top))
    d = torch.where(live, 1.0 / torch.where(live, iscale, torch.ones_like(iscale)), 0.0).to(torch.float16)
    sc = torch.round(iscale * sub_scale).clamp(max=127).clamp(min=-128)
    eff = (d.float() * sc).unsqueeze(-1)  # [n, 16, 1]
    l = torch.where(eff != 0, torch.round(x / torch.where(eff != 0, eff, 1.0)).clamp(-32, 31), fit)
    l = torch.where(live.unsqueeze(-1), l, 0.0)
    q = (l + 32).to(torch.uint8).reshape(n, 2, 4, 32)  # halves of 128: four runs of 32
    q1, q2, q3, q4 = q[:, :, 0], q[:, :, 1], q[:, :, 2], q[:, :, 3]
    ql = torch.cat([(q1 & 15) | ((q3 & 15) << 4), (q2 & 15) | ((q4 & 15) << 4)], dim=-1).reshape(n, 128)
    qh = ((q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6)).reshape(n, 64)
    sc8 = sc.to(torch.int8).numpy().view(np.uint8)
    blocks = np.concatenate([ql.numpy(), qh.numpy(), sc8, _fp16_bytes(d)], axis=1)
    decoded = (eff * (q.reshape(n, 16, 16).float() - 32)).reshape(out, inp)
    return np.ascontiguousarray(blocks.reshape(out, -1)), decoded
