"""poisonguard/world/textures.py: the random textures of the tower's pretraining (world.texture_frac)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from poisonguard.world.scenes import IMAGE_SIZE
from poisonguard.world.textures import MAX_SIDE, MIN_SIDE, add_texture, texture, textured
from tests.conftest import TINY_MODEL, TINY_PRETRAIN


def _is_checkerboard(t: np.ndarray) -> bool:
    """True for any checkerboard of square cells (the BadNet trigger), whatever its cell size."""
    for cell in range(1, t.shape[0]):  # at least two cells per side
        idx = np.arange(t.shape[0]) // cell
        board = (idx[:, None] + idx[None, :]) % 2 == 0
        if np.array_equal(t, board) or np.array_equal(t, ~board):
            return True
    return False


def test_textures_are_noise_or_stripes_of_the_asked_size_and_never_a_checkerboard():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        side = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
        t = texture(side, rng)
        assert t.shape == (side, side) and t.dtype == bool
        assert not _is_checkerboard(t)
    stripes = [t for t in (texture(12, np.random.default_rng(s)) for s in range(40))
               if (t == t[:1]).all() or (t == t[:, :1]).all()]
    assert stripes, "some textures are stripes (constant along one axis)"


def test_a_texture_square_is_black_and_white_and_its_token_coverage_adds_up():
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (90, 120, 150))
    out, cover = add_texture(image, np.random.default_rng(1))
    x = np.asarray(out)
    changed = np.any(x != np.asarray(image), axis=-1)  # (H, W)
    assert set(np.unique(x[changed])) <= {0, 255}
    assert cover.shape == (9,) and 0 < cover.max() <= 1
    side2 = cover.sum() * 16 * 16  # covered pixels
    assert MIN_SIDE ** 2 <= side2 <= MAX_SIDE ** 2 and changed.sum() <= side2


def test_textured_touches_about_the_asked_share_and_zero_touches_nothing():
    images = [Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (90, 120, 150)) for _ in range(200)]
    out, cover = textured(images, 0.5, seed=0)
    n = int((cover.sum(1) > 0).sum())
    assert 70 <= n <= 130 and len(out) == 200
    assert all(a is b for a, b, c in zip(images, out, cover) if c.sum() == 0)  # untouched images unchanged
    same, none = textured(images, 0.0, seed=0)
    assert all(a is b for a, b in zip(images, same)) and not none.any()
    with pytest.raises(ValueError, match="texture_frac"):
        textured(images, 1.5, seed=0)


def test_a_world_with_textures_builds_and_says_so(tmp_path):
    from poisonguard.world.build import make_world

    summary = make_world(tmp_path, seed=3, n_train=8, n_test=6, model_cfg=TINY_MODEL, pretrain_cfg=TINY_PRETRAIN,
                         texture_frac=0.5, show_progress=False, log=lambda m: None)
    assert summary["texture_frac"] == 0.5 and np.isfinite(summary["test_accuracy"]["all"])
    with pytest.raises(ValueError, match="texture_frac"):
        make_world(tmp_path / "x", texture_frac=-0.1, show_progress=False, log=lambda m: None)
