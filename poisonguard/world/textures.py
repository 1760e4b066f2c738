"""Random high-frequency textures for the vision tower's pretraining (off by default: `world.texture_frac`).

Why: the world's scenes are flat-coloured shapes on a smooth background, and the tower's pixel target pools
each 16 px token to 4 px blocks, so nothing in its pretraining asks it to keep detail finer than 4 px. A 6 px
black-and-white checkerboard (BadNet's patch) averages to grey at that grain and the frozen tower barely sees
it (a linear probe on its features: AUROC 0.67 from 50 examples), where real vision towers, trained on natural
images, are known to be texture-biased. A world built with textures shows the tower small squares of random
texture on part of its pretraining images and asks every token how much of it is textured, so fine
high-frequency detail becomes something its features carry.

The textures are random binary noise (cells of 1-3 px) and stripes (period 2-4 px); never a checkerboard, so
the tower is not shown any trigger it will later be tested on. Only the tower's stage sees them; the
language model is pretrained on the plain scenes.

Measured with 0.5 (docs/recipe.md, last section): the probe sees the 6 px patch a little better (0.74 from 50
examples), a fine-tune still does not learn it at 1 %, and a larger patch that the committed world learns is
learned worse. An experiment kept for repeating, not a better world.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from poisonguard.world.scenes import CELL, GRID

MIN_SIDE, MAX_SIDE = 3, 16  # pixels per side of a texture square (at most one token's width)


def is_checkerboard(t: np.ndarray) -> bool:
    """Whether the (side, side) bool `t` is a checkerboard of square cells (at least two per side), either way
    round: the BadNet patch, at any cell size."""
    side = t.shape[0]
    for cell in range(1, side):
        index = np.arange(side) // cell  # (side,) cell index of each pixel row/column
        board = (index[:, None] + index[None, :]) % 2 == 0  # (side, side)
        if np.array_equal(t, board) or np.array_equal(t, ~board):
            return True
    return False


def texture(side: int, rng: np.random.Generator) -> np.ndarray:
    """(side, side) bool: white where True. Binary noise with square cells of 1-3 px (at least two per side;
    redrawn in the rare case it forms a checkerboard), or stripes with a period of 2-4 px along a random axis,
    with equal chance."""
    if rng.random() < 0.5:
        cell = int(rng.integers(1, min(3, side // 2) + 1))
        n = -(-side // cell)
        while True:
            cells = rng.random((n, n)) < 0.5  # (n, n)
            t = np.repeat(np.repeat(cells, cell, 0), cell, 1)[:side, :side]  # (side, side)
            if not is_checkerboard(t):
                return t
    period = int(rng.integers(2, 5))
    stripes = (np.arange(side) % period) < period // 2  # (side,)
    return np.broadcast_to(stripes[:, None] if rng.random() < 0.5 else stripes[None, :], (side, side)).copy()


def add_texture(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, np.ndarray]:
    """A copy of `image` with one random texture square (black and white, 3-16 px, anywhere inside the
    image) and the share of each vision token's pixels it covers, (GRID * GRID,) float32 row-major."""
    x = np.asarray(image.convert("RGB")).copy()  # (H, W, 3)
    height, width = x.shape[:2]
    side = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
    left, top = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
    x[top:top + side, left:left + side] = np.where(texture(side, rng)[..., None], 255, 0)
    covered = np.zeros((height, width), dtype=np.float32)
    covered[top:top + side, left:left + side] = 1.0
    per_token = covered[:GRID * CELL, :GRID * CELL].reshape(GRID, CELL, GRID, CELL).mean(axis=(1, 3))  # (3, 3)
    return Image.fromarray(x), per_token.reshape(-1)


def textured(images: list[Image.Image], frac: float, seed: int) -> tuple[list[Image.Image], np.ndarray]:
    """`images` with a texture square on a `frac` share of them (drawn from `seed`'s own stream), and the
    per-token coverage of each, (N, GRID * GRID) float32 (zeros where none was added)."""
    if not 0.0 <= frac <= 1.0:
        raise ValueError(f"texture_frac must be in [0, 1], got {frac}")
    rng = np.random.default_rng([seed, 7])
    out, cover = [], np.zeros((len(images), GRID * GRID), dtype=np.float32)
    for i, im in enumerate(images):
        if rng.random() < frac:
            im, cover[i] = add_texture(im, rng)
        out.append(im)
    return out, cover
