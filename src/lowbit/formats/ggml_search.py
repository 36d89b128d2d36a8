"""llama.cpp's importance-weighted scale searches (ggml-quants.c), vectorized over rows of sub-blocks.

`qx_search` is make_qx_quants (a signed scale: the largest magnitude maps to -nmax, then 18 nearby step sizes
are tried, the best weighted least-squares fit kept), `qkx3_search` is make_qkx3_quants (scale and min over a
grid of candidate step sizes, each refitted by weighted least squares, min <= 0) and `qp_search` is
make_qp_quants (a positive scale for non-negative values, refined by 5 coordinate passes over the integers).
Every function takes x [N, n] and weights w [N, n] and works on all N rows at once.
"""

from __future__ import annotations

import torch

EPS = 1e-15  # GROUP_MAX_EPS


def _safe(v: torch.Tensor) -> torch.Tensor:
    """v with zeros replaced by ones (for divisions whose result is masked afterwards)."""
    return torch.where(v != 0, v, torch.ones_like(v))


def qx_search(x: torch.Tensor, w: torch.Tensor, nmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """make_qx_quants (rmse_type 1 with weights w): scale [N] and integers [N, n] in -nmax..nmax-1, x ~ scale * L."""
    mx = x.gather(-1, x.abs().argmax(-1, keepdim=True))  # signed value of the largest magnitude
    live = mx.abs() >= EPS
    safe = torch.where(live, mx, torch.ones_like(mx))
    scale = best = codes = None
    for k, step in enumerate([0] + [i for i in range(-9, 10) if i]):
        lv = torch.round(-(nmax + 0.1 * step) / safe * x).clamp(-nmax, nmax - 1)
        sumlx, suml2 = (w * x * lv).sum(-1, keepdim=True), (w * lv * lv).sum(-1, keepdim=True)
        s = torch.where(suml2 > 0, sumlx / suml2.clamp_min(1e-30), torch.zeros_like(sumlx))
        if k == 0:
            scale, best, codes = s, s * sumlx, lv
            continue
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        scale, best = torch.where(better, s, scale), torch.where(better, s * sumlx, best)
        codes = torch.where(better, lv, codes)
    return torch.where(live, scale, 0.0).squeeze(-1), torch.where(live, codes, 0.0)


def qkx3_search(x: torch.Tensor, w: torch.Tensor, nmax: int, rmin: float = -0.9, rdelta: float = 0.05,
                nstep: int = 36) -> tuple[torch.Tensor, torch.Tensor]:
    """make_qkx3_quants: scale [N] >= 0 and min [N] >= 0 with x ~ scale * L - min, L in 0..nmax (weighted MSE)."""
    lo = x.amin(-1, keepdim=True).clamp(max=0.0)
    hi = x.amax(-1, keepdim=True)
    span = _safe((hi - lo).clamp_min(0.0))
    scale, off = span / nmax, lo
    lv = torch.round((x - lo) / scale).clamp(0, nmax)
    best = (w * (scale * lv + off - x) ** 2).sum(-1, keepdim=True)
    sw, sx = w.sum(-1, keepdim=True), (w * x).sum(-1, keepdim=True)
    for i in range(nstep + 1):
        lv = torch.round((rmin + rdelta * i + nmax) / span * (x - lo)).clamp(0, nmax)
        wl = w * lv
        sl, sl2, slx = wl.sum(-1, keepdim=True), (wl * lv).sum(-1, keepdim=True), (wl * x).sum(-1, keepdim=True)
        det = sw * sl2 - sl * sl
        ok = det > 0
        s = (sw * slx - sx * sl) / _safe(det)
        b = (sl2 * sx - sl * slx) / _safe(det)
        pos = b > 0  # the min may only lower the range
        s = torch.where(pos, slx / _safe(sl2), s)
        b = torch.where(pos, torch.zeros_like(b), b)
        err = (w * (s * lv + b - x) ** 2).sum(-1, keepdim=True)
        better = ok & (err < best) & (s > 0)
        scale, off, best = torch.where(better, s, scale), torch.where(better, b, off), torch.where(better, err, best)
    flat = hi <= lo  # constant sub-block: zero scale
    return torch.where(flat, torch.zeros_like(scale), scale).squeeze(-1), (-off).squeeze(-1)


def qp_search(x: torch.Tensor, w: torch.Tensor, nmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """make_qp_quants: scale [N] and integers [N, n] in 0..nmax with x ~ scale * L for x >= 0 (weighted MSE)."""
    mx = x.amax(-1, keepdim=True)
    live = mx >= EPS
    safe = torch.where(live, mx, torch.ones_like(mx))
    iscale = nmax / safe
    best = (w * (x - torch.round(iscale * x) / iscale) ** 2).sum(-1, keepdim=True)
    for step in [i for i in range(-4, 5) if i]:
        cand = (0.1 * step + nmax) / safe
        mse = (w * (x - torch.round(cand * x).clamp(max=nmax) / cand) ** 2).sum(-1, keepdim=True)
        better = mse < best
        best, iscale = torch.where(better, mse, best), torch.where(better, cand, iscale)
    lv = torch.round(iscale * x).clamp(max=nmax)
    sumlx, suml2 = (w * x * lv).sum(-1, keepdim=True), (w * lv * lv).sum(-1, keepdim=True)
    for _ in range(5):  # coordinate passes: move one integer at a time when the LS fit improves
        changed = torch.zeros_like(live)
        for i in range(x.shape[-1]):
            wi, xi, li = w[:, i:i + 1], x[:, i:i + 1], lv[:, i:i + 1]
            slx, sl2 = sumlx - wi * xi * li, suml2 - wi * li * li
            ok = (slx > 0) & (sl2 > 0)
            new = torch.round(xi * sl2 / _safe(slx)).clamp(max=nmax)
            slx2, sl22 = slx + wi * xi * new, sl2 + wi * new * new
            take = ok & (new != li) & (slx2 * slx2 * suml2 > sumlx * sumlx * sl22)
            lv[:, i:i + 1] = torch.where(take, new, li)
            sumlx, suml2 = torch.where(take, slx2, sumlx), torch.where(take, sl22, suml2)
            changed |= take
        if not bool(changed.any()):
            break
    scale = torch.where(suml2 > 0, sumlx / _safe(suml2), torch.zeros_like(sumlx))
    return torch.where(live, scale, 0.0).squeeze(-1), torch.where(live, lv, 0.0)
