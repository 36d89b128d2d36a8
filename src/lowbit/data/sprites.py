"""dSprites re-rendered offline (Matthey et al., 2017, "dSprites: disentanglement testing sprites dataset").

The factor grid is the original one: shape 3 (square, ellipse, heart), scale 6 in [0.5, 1], orientation 40 over
[0, 2 pi), position x 32 and y 32 over [0, 1]: 737,280 binary 64x64 images. Images are rasterised on demand
(vectorised over a chunk of images, 2x2 supersampling, majority vote), so only the sampled images are drawn.
Geometry (sizes, margins, the heart curve) is our own approximation of the original sprites.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np

from lowbit.errors import LowbitError

__all__ = [
    "SPRITES_FACTORS",
    "SPRITES_SIZES",
    "check_factors",
    "disk_cached",
    "sample_grid",
    "sprites",
    "sprites_render",
    "sprites_factor_values",
]

SPRITES_FACTORS = ("shape", "scale", "orientation", "x", "y")
SPRITES_SIZES = (3, 6, 40, 32, 32)
_TOTAL = int(np.prod(SPRITES_SIZES))  # 737,280
_RES = 64
_SS = 2  # supersampling factor per axis
_UNIT = 8.0  # shape half-size in pixels at scale 1
_MARGIN = 12.0  # centre of the sprite ranges over [_MARGIN, 64 - _MARGIN]
_WIN = 26  # rasterised window (pixels) around each sprite


def sprites_factor_values(factors: np.ndarray) -> np.ndarray:
    """Map factor indices (n, 5) to their values: shape id, scale, orientation (rad), x, y in [0, 1]."""
    f = _check_factors(factors)
    out = np.empty(f.shape, dtype=np.float64)
    out[:, 0] = f[:, 0]
    out[:, 1] = np.linspace(0.5, 1.0, 6)[f[:, 1]]
    out[:, 2] = f[:, 2] * (2 * np.pi / 40)
    out[:, 3] = f[:, 3] / 31.0
    out[:, 4] = f[:, 4] / 31.0
    return out


def check_factors(factors: np.ndarray, names: tuple[str, ...], sizes: tuple[int, ...], what: str) -> np.ndarray:
    """Validate an integer factor-index array (n, len(sizes)) against a grid; returns it as int64."""
    f = np.asarray(factors)
    k = len(sizes)
    if f.ndim != 2 or f.shape[1] != k or not np.issubdtype(f.dtype, np.integer):
        raise LowbitError(f"{what}: factors must be an integer array of shape (n, {k}), got {f.dtype} {f.shape}")
    if (f < 0).any() or (f >= np.array(sizes)).any():
        grid = dict(zip(names, sizes, strict=True))
        raise LowbitError(f"{what}: factor indices out of range; sizes are {grid}")
    return f.astype(np.int64)


def _check_factors(factors: np.ndarray) -> np.ndarray:
    return check_factors(factors, SPRITES_FACTORS, SPRITES_SIZES, "sprites")


def _inside(shape: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Membership of points (u, v) in the unit-size sprite; v points up; shape broadcast over (m, 1, 1)."""
    square = (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0)
    ellipse = u * u + (v / 0.5) ** 2 <= 1.0
    hu, hv = u * 1.1, v * 1.1 + 0.1  # heart curve (x^2 + y^2 - 1)^3 <= x^2 y^3, centred and shrunk
    r = hu * hu + hv * hv - 1.0
    heart = r * r * r <= hu * hu * hv * hv * hv
    return np.where(shape == 0, square, np.where(shape == 1, ellipse, heart))


def sprites_render(factors: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Rasterise sprites for factor indices (n, 5); returns uint8 images (n, 64, 64) with values 0/1."""
    f = _check_factors(factors)
    vals = sprites_factor_values(f)
    n = f.shape[0]
    out = np.zeros((n, _RES, _RES), dtype=np.uint8)
    win = np.arange(_WIN)
    sub_off = (np.arange(_WIN * _SS, dtype=np.float32) + 0.5) / _SS  # sub-pixel centres inside the window
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        v = vals[s:e].astype(np.float32)
        size = (_UNIT * v[:, 1])[:, None, None]
        cx = _MARGIN + v[:, 3] * (_RES - 2 * _MARGIN)
        cy = _MARGIN + v[:, 4] * (_RES - 2 * _MARGIN)
        # only a window around the sprite is rasterised (the sprite's radius is below _MARGIN pixels)
        ox = np.clip(np.floor(cx).astype(np.int64) - _WIN // 2, 0, _RES - _WIN)
        oy = np.clip(np.floor(cy).astype(np.int64) - _WIN // 2, 0, _RES - _WIN)
        c, sn = np.cos(v[:, 2])[:, None, None], np.sin(v[:, 2])[:, None, None]
        dx = (ox - cx)[:, None, None] + sub_off[None, None, :]
        dy = (cy - oy)[:, None, None] - sub_off[None, :, None]  # up is positive
        u = (c * dx + sn * dy) / size
        w = (-sn * dx + c * dy) / size
        mask = _inside(f[s:e, 0][:, None, None], u, w)
        sub = mask.reshape(e - s, _WIN, _SS, _WIN, _SS).sum(axis=(2, 4), dtype=np.int32)
        rows = (oy[:, None] + win)[:, :, None]
        cols = (ox[:, None] + win)[:, None, :]
        out[np.arange(s, e)[:, None, None], rows, cols] = sub * 2 >= _SS * _SS
    return out


def _cache_dir() -> Path:
    root = os.environ.get("LOWBIT_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "lowbit")
    return Path(root) / "data"


def disk_cached(
    name: str, n: int, seed: int, make: Callable[[], tuple[np.ndarray, np.ndarray]], cache: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Load (images, factors) from the on-disk cache or build them and store them atomically."""
    path = _cache_dir() / f"{name}-n{n}-seed{seed}-v1.npz"
    if cache and path.exists():
        try:
            with np.load(path) as z:
                shape = tuple(z["shape"])
                images = np.unpackbits(z["bits"])[: int(np.prod(shape))].reshape(shape) if "bits" in z else z["images"]
                return images, z["factors"]
        except (OSError, ValueError, KeyError):
            pass  # unreadable cache entry: rebuild it
    images, factors = make()
    if cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
            payload = {"bits": np.packbits(images)} if images.max(initial=0) <= 1 else {"images": images}
            np.savez(tmp, shape=np.array(images.shape), factors=factors, **payload)
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only cache directory only costs the rebuild next time
    return images, factors


def sample_grid(sizes: tuple[int, ...], n: int, seed: int, name: str) -> np.ndarray:
    """Draw n factor-index rows from a full factor grid (without replacement when n fits), deterministic."""
    total = int(np.prod(sizes))
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise LowbitError(f"{name}: n must be a positive integer, got {n!r}")
    rng = np.random.default_rng(seed)
    flat = rng.choice(total, size=int(n), replace=n > total)
    return np.stack(np.unravel_index(flat, sizes), axis=1).astype(np.int64)


@lru_cache(maxsize=4)
def _sprites_cached(n: int, seed: int, cache: bool) -> tuple[np.ndarray, np.ndarray]:
    def make() -> tuple[np.ndarray, np.ndarray]:
        factors = sample_grid(SPRITES_SIZES, n, seed, "sprites")
        return sprites_render(factors), factors

    images, factors = disk_cached("sprites", n, seed, make, cache)
    images.setflags(write=False)
    factors.setflags(write=False)
    return images, factors


def sprites(n: int, seed: int = 0, cache: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """n dSprites images (uint8 0/1, (n, 64, 64)) and their factor indices ((n, 5): shape, scale, orientation, x, y).

    Images are drawn uniformly from the 737,280-image grid (without replacement when n <= 737,280), deterministic
    from ``seed``; results are cached in memory and under ``$LOWBIT_CACHE_DIR`` (default ``~/.cache/lowbit``).
    The returned arrays are read-only (copy them to modify).
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise LowbitError(f"sprites: n must be a positive integer, got {n!r}")
    return _sprites_cached(int(n), int(seed), bool(cache))
