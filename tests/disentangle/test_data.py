"""Offline dSprites / shapes: grid, determinism, rendering, caching."""

import numpy as np
import pytest

from lowbit.data import shapes, sprites
from lowbit.data.shapes import SHAPES_SIZES, shapes_render
from lowbit.data.sprites import SPRITES_SIZES, sprites_factor_values, sprites_render
from lowbit.errors import LowbitError


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBIT_CACHE_DIR", str(tmp_path))


def test_sprites_grid_and_determinism():
    assert int(np.prod(SPRITES_SIZES)) == 737_280
    im, f = sprites(300, seed=3, cache=False)
    assert im.shape == (300, 64, 64) and im.dtype == np.uint8 and set(np.unique(im)) <= {0, 1}
    assert f.shape == (300, 5) and (f >= 0).all() and (f < np.array(SPRITES_SIZES)).all()
    assert len({tuple(r) for r in f}) == 300  # without replacement
    im2, f2 = sprites_render(f), f
    assert np.array_equal(im, im2) and np.array_equal(f, f2)
    _, f3 = sprites(300, seed=4, cache=False)
    assert not np.array_equal(f, f3)
    assert not im.flags.writeable


def test_sprites_geometry_follows_factors():
    base = np.array([[0, 5, 0, 16, 16]])
    img = sprites_render(base)[0]
    ys, xs = np.nonzero(img)
    # centre of mass moves with x and y; area grows with scale; ellipse area < square area
    right = sprites_render(np.array([[0, 5, 0, 31, 16]]))[0]
    down = sprites_render(np.array([[0, 5, 0, 16, 31]]))[0]
    assert np.nonzero(right)[1].mean() > xs.mean() + 15
    assert np.nonzero(down)[0].mean() > ys.mean() + 15
    small = sprites_render(np.array([[0, 0, 0, 16, 16]]))[0]
    assert small.sum() < 0.4 * img.sum()
    assert sprites_render(np.array([[1, 5, 0, 16, 16]]))[0].sum() < 0.6 * img.sum()
    # a square turned by 45 degrees (index 5 of 40) keeps its area but not its pixels
    turned = sprites_render(np.array([[0, 5, 5, 16, 16]]))[0]
    assert abs(int(turned.sum()) - int(img.sum())) < 0.1 * img.sum() and not np.array_equal(turned, img)
    # every sprite stays inside the image (nothing touches the border at the extreme positions)
    corner = sprites_render(np.array([[2, 5, 7, 0, 0], [0, 5, 5, 31, 31]]))
    assert corner[:, 0, :].sum() == 0 and corner[:, :, 0].sum() == 0 and corner[:, -1, :].sum() == 0
    vals = sprites_factor_values(np.array([[2, 5, 39, 31, 0]]))[0]
    assert vals[1] == 1.0 and vals[2] < 2 * np.pi and vals[3] == 1.0 and vals[4] == 0.0


def test_sprites_disk_cache_roundtrip(tmp_path):
    a = sprites(50, seed=11)
    files = list((tmp_path / "data").glob("sprites-n50-seed11*.npz"))
    assert len(files) == 1
    from lowbit.data.sprites import _sprites_cached

    _sprites_cached.cache_clear()
    b = sprites(50, seed=11)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_shapes_grid_and_factors():
    assert int(np.prod(SHAPES_SIZES)) == 480_000
    im, f = shapes(64, seed=0, cache=False)
    assert im.shape == (64, 64, 64, 3) and im.dtype == np.uint8 and f.shape == (64, 6)
    assert np.array_equal(shapes_render(f), im)
    a = shapes_render(np.array([[0, 5, 2, 7, 0, 7], [3, 5, 2, 7, 0, 7], [0, 5, 2, 0, 0, 7], [0, 5, 2, 7, 2, 7]]))
    assert np.array_equal(a[0, :30], a[1, :30]) and not np.array_equal(a[0, 60:], a[1, 60:])  # floor hue
    assert (a[2] != a[0]).any(axis=-1).sum() > 50  # scale changes the object
    assert (a[3] != a[0]).any(axis=-1).sum() > 50  # shape changes the object


def test_bad_input():
    with pytest.raises(LowbitError):
        sprites(0)
    with pytest.raises(LowbitError):
        sprites_render(np.array([[3, 0, 0, 0, 0]]))
    with pytest.raises(LowbitError):
        shapes_render(np.zeros((2, 5), dtype=int))
