"""Patch triggers: only the patch region changes, and it holds exactly the intended pattern."""

from __future__ import annotations

import numpy as np
import pytest

from poisonguard.attacks.patches import (
    BadNetParams,
    GreenSquareParams,
    LogoParams,
    badnet,
    checkerboard,
    green_square,
    logo,
    logo_patch,
    partial_badnet,
)
from tests.attacks.helpers import grey


def changed_box(before, after) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) bounding box of the pixels that differ (bottom/right exclusive)."""
    diff = np.any(np.asarray(before) != np.asarray(after), axis=-1)  # (H, W)
    rows, cols = np.nonzero(diff)
    return rows.min(), cols.min(), rows.max() + 1, cols.max() + 1


@pytest.mark.parametrize(("size", "box"), [(48, (40, 40, 46, 46)), (224, (187, 187, 215, 215))])
def test_badnet_is_a_checkerboard_in_the_bottom_right_corner_only(size, box):
    img = grey(size)
    out = badnet(img)
    top, left, bottom, right = box
    x, y = np.asarray(img), np.asarray(out)  # (H, W, 3)
    outside = np.ones(x.shape[:2], dtype=bool)
    outside[top:bottom, left:right] = False
    assert np.array_equal(x[outside], y[outside])
    patch = y[top:bottom, left:right, 0].astype(int)  # (side, side)
    assert set(np.unique(patch)) == {0, 255}
    assert np.array_equal(y[top:bottom, left:right], checkerboard(bottom - top, 6).astype(np.uint8))
    # A checkerboard: 6 near-equal runs per side, and each pixel is white iff its run row + run column is even.
    row_cell = np.concatenate([[0], np.cumsum(np.diff(patch[:, 0]) != 0)])  # (side,)
    col_cell = np.concatenate([[0], np.cumsum(np.diff(patch[0]) != 0)])  # (side,)
    assert row_cell[-1] == col_cell[-1] == 5
    assert np.ptp(np.bincount(row_cell)) <= 1
    assert np.array_equal(patch, np.where((row_cell[:, None] + col_cell[None]) % 2 == 0, 255, 0))


def test_badnet_48px_patch_fits_inside_one_vision_patch():
    top, left, bottom, right = changed_box(grey(48), badnet(grey(48)))
    assert top // 16 == (bottom - 1) // 16 and left // 16 == (right - 1) // 16
    assert bottom - top >= 4


def test_badnet_random_position_is_seeded_and_in_bounds():
    img = grey(48)
    params = BadNetParams(position="random")
    boxes = {changed_box(img, badnet(img, params, np.random.default_rng(s))) for s in range(20)}
    assert len(boxes) > 5
    assert all(0 <= t and 0 <= l and b <= 48 and r <= 48 and b - t == 6 for t, l, b, r in boxes)
    again = badnet(img, params, np.random.default_rng(7)), badnet(img, params, np.random.default_rng(7))
    assert again[0].tobytes() == again[1].tobytes()
    with pytest.raises(ValueError, match="rng"):
        badnet(img, params)


def test_patches_stay_inside_the_central_square_of_wide_images():
    # A 64x48 image: a CLIP centre crop keeps columns 8..55, so the corner patch must sit there.
    top, left, bottom, right = changed_box(grey((64, 48)), badnet(grey((64, 48))))
    assert (top, left, bottom, right) == (40, 48, 46, 54)


@pytest.mark.parametrize(("size", "start", "side"), [(48, 21, 6), (224, 98, 28)])
def test_green_square_is_solid_26ff00_at_the_centre(size, start, side):
    img = grey(size)
    out = np.asarray(green_square(img))
    assert changed_box(img, out) == (start, start, start + side, start + side)
    assert np.all(out[start:start + side, start:start + side] == (0x26, 0xFF, 0x00))
    assert GreenSquareParams().colour == (38, 255, 0)


def test_logo_is_red_with_a_dark_diagonal_on_white():
    mark = logo(48)  # (48, 48, 3)
    assert mark.shape == (48, 48, 3)
    assert np.all(mark[0] == 255) and np.all(mark[:, -1] == 255)  # white border
    red = mark[12, 36]
    assert red[0] > 180 and red[1] < 60 and red[2] < 60
    assert np.all(mark[np.arange(8, 40), np.arange(8, 40)].max(axis=-1) < 80)  # dark diagonal


@pytest.mark.parametrize("size", [48, 224])
def test_logo_patch_lands_inside_the_image_at_a_seeded_random_position(size):
    img = grey(size, 90)
    side = round(size / 8)
    boxes = set()
    for s in range(10):
        out = logo_patch(img, LogoParams(), np.random.default_rng(s))
        top, left, bottom, right = changed_box(img, out)
        assert 0 <= top and 0 <= left and bottom <= size and right <= size
        assert bottom - top <= side and right - left <= side
        boxes.add((top, left))
    assert len(boxes) > 5


@pytest.mark.parametrize(("pieces", "keep"), [(4, 1), (4, 2), (4, 3), (9, 4)])
def test_partial_badnet_pastes_exactly_keep_whole_blocks_of_the_checkerboard(pieces, keep):
    img, whole = grey(48), np.asarray(badnet(grey(48)))
    seen = set()
    for seed in range(12):
        out = np.asarray(partial_badnet(img, BadNetParams(), pieces, keep, np.random.default_rng(seed)))
        region = out[40:46, 40:46]  # (6, 6, 3): the patch's place
        as_whole = (region == whole[40:46, 40:46]).all(-1)  # (6, 6)
        untouched = (region == 128).all(-1)
        assert (as_whole | untouched).all() and (out[:40] == 128).all() and (out[:, :40] == 128).all()
        side = 6 // int(pieces ** 0.5)
        blocks = as_whole.reshape(6 // side, side, 6 // side, side).any(axis=(1, 3))  # (b, b): block pasted
        assert blocks.sum() == keep and as_whole.sum() > 0
        seen.add(blocks.tobytes())
    assert len(seen) > 1  # the pieces are drawn per call
    with pytest.raises(ValueError, match="square"):
        partial_badnet(img, BadNetParams(), 5, 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="keep"):
        partial_badnet(img, BadNetParams(), 4, 5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="rng"):
        partial_badnet(img, BadNetParams(), 4, 2, None)
    with pytest.raises(ValueError, match="cannot be cut into 3 x 3"):  # a 2 px patch (2 cells, tiny side)
        partial_badnet(img, BadNetParams(side_frac=0.01, cells=2), 9, 2, np.random.default_rng(0))


def test_patch_params_are_validated():
    with pytest.raises(ValueError):
        BadNetParams(side_frac=0)
    with pytest.raises(ValueError):
        BadNetParams(position="somewhere")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        GreenSquareParams(colour=(0, 300, 0))
