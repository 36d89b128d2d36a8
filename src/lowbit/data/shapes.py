"""A coloured Shapes3D-like dataset drawn offline (factor grid of Burgess & Kim, 2018, "3D Shapes Dataset").

Factor grid as in Shapes3D: floor hue 10, wall hue 10, object hue 10 (hues 0, 0.1, ..., 0.9), scale 8 in
[0.75, 1.25], shape 4 (cube, cylinder, sphere, capsule), orientation 15 over [-30, 30] degrees: 480,000 RGB
64x64 images. The renderer is a flat 2.5-D drawing, not the original's 3-D scene (see docs/disentanglement.md):
the floor is a shaded band below a horizon, the back wall meets a side wall at a corner whose column moves with
the orientation (the camera turning), and the object is a shaded silhouette whose visible width follows the
orientation for the cube and capsule (a sphere and an upright cylinder look the same from every angle).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from lowbit.data.sprites import check_factors, disk_cached, sample_grid
from lowbit.errors import LowbitError

__all__ = ["SHAPES_FACTORS", "SHAPES_SIZES", "shapes", "shapes_render"]

SHAPES_FACTORS = ("floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation")
SHAPES_SIZES = (10, 10, 10, 8, 4, 15)
_RES = 64
_HORIZON = 38  # first floor row


def _hue_rgb(h: np.ndarray, value: np.ndarray | float = 1.0, sat: float = 0.85) -> np.ndarray:
    """HSV (hue in [0, 1), fixed saturation) to RGB in [0, 1]; broadcasts h and value, returns (..., 3)."""
    h = np.asarray(h, dtype=np.float32)[..., None]
    k = (np.array([5.0, 3.0, 1.0], dtype=np.float32) + h * 6.0) % 6.0
    rgb = 1.0 - sat * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return rgb * np.asarray(value, dtype=np.float32)[..., None]


def shapes_render(factors: np.ndarray) -> np.ndarray:
    """Draw images for factor indices (n, 6); returns uint8 RGB images (n, 64, 64, 3)."""
    f = check_factors(factors, SHAPES_FACTORS, SHAPES_SIZES, "shapes")
    n = f.shape[0]
    hue = f[:, :3].astype(np.float32) / 10.0
    scale = np.linspace(0.75, 1.25, 8, dtype=np.float32)[f[:, 3]]
    shape = f[:, 4]
    theta = np.deg2rad(np.linspace(-30.0, 30.0, 15, dtype=np.float32)[f[:, 5]])
    rows = np.arange(_RES, dtype=np.float32)[None, :, None] + 0.5
    cols = np.arange(_RES, dtype=np.float32)[None, None, :] + 0.5
    # background: floor (darker towards the horizon), back wall and a side wall left of the moving corner
    corner = (32.0 - 40.0 * np.sin(theta))[:, None, None] - 18.0
    floor_v = 0.55 + 0.45 * np.clip((rows - _HORIZON) / (_RES - _HORIZON), 0, 1)
    wall_v = np.where(cols < corner, 0.7, 0.9)
    is_floor = rows >= _HORIZON
    val = np.where(is_floor, floor_v, wall_v)
    h_bg = np.where(is_floor, hue[:, 0, None, None], hue[:, 1, None, None])
    img = _hue_rgb(h_bg, val)
    # object: centred, standing on the floor at row 52, height 22 * scale
    height = 22.0 * scale[:, None, None]
    base = 52.0
    cy = base - height / 2
    c, s = np.abs(np.cos(theta))[:, None, None], np.abs(np.sin(theta))[:, None, None]
    x = cols - 32.0
    y = rows - cy
    half = height / 2
    sh = shape[:, None, None]
    cube_w = half * (c + s)  # projected width of a square footprint turned by theta
    cube = (np.abs(x) <= cube_w) & (np.abs(y) <= half)
    cyl_top = (x / (0.8 * half)) ** 2 + ((y + half) / (0.25 * half)) ** 2 <= 1
    cyl = ((np.abs(x) <= 0.8 * half) & (np.abs(y) <= half)) | cyl_top
    sphere = x**2 + (y - 0.1 * half) ** 2 <= (0.9 * half) ** 2
    cap_len = half * (0.6 + 0.9 * c)  # a capsule lying across the view, foreshortened when turned
    cap_r = 0.45 * half
    dx = np.clip(np.abs(x) - (cap_len - cap_r), 0, None)
    capsule = dx**2 + (y - 0.5 * half) ** 2 <= cap_r**2
    mask = np.where(sh == 0, cube, np.where(sh == 1, cyl, np.where(sh == 2, sphere, capsule)))
    # shading: cube faces split at the turned edge, a radial highlight on round shapes
    edge = half * (c - s) * np.sign(np.sin(theta))[:, None, None]
    shade_cube = np.where(x < edge, 0.75, 1.0)
    r2 = (x + 0.3 * half) ** 2 + (y + 0.2 * half) ** 2
    shade_round = 1.0 - 0.35 * np.clip(r2 / (1.2 * half) ** 2, 0, 1)
    shade = np.where(sh == 0, shade_cube, shade_round)
    obj = _hue_rgb(np.broadcast_to(hue[:, 2, None, None], shade.shape), shade)
    img = np.where(mask[..., None], obj, img)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8).reshape(n, _RES, _RES, 3)


@lru_cache(maxsize=2)
def _shapes_cached(n: int, seed: int, cache: bool) -> tuple[np.ndarray, np.ndarray]:
    def make() -> tuple[np.ndarray, np.ndarray]:
        factors = sample_grid(SHAPES_SIZES, n, seed, "shapes")
        out = np.empty((n, _RES, _RES, 3), dtype=np.uint8)
        for s in range(0, n, 512):
            out[s:s + 512] = shapes_render(factors[s:s + 512])
        return out, factors

    images, factors = disk_cached("shapes", n, seed, make, cache)
    images.setflags(write=False)
    factors.setflags(write=False)
    return images, factors


def shapes(n: int, seed: int = 0, cache: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """n Shapes3D-like images (uint8 RGB (n, 64, 64, 3)) and factor indices ((n, 6), order of SHAPES_FACTORS).

    Sampled uniformly from the 480,000-image grid (without replacement when n fits), deterministic from ``seed``,
    cached in memory and on disk like ``sprites``; the arrays are read-only.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise LowbitError(f"shapes: n must be a positive integer, got {n!r}")
    return _shapes_cached(int(n), int(seed), bool(cache))
