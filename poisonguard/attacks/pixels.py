"""Pixel plumbing shared by the image attacks: PIL <-> float arrays, sizes scaled to the image, patch placement.

Every image attack works on a float copy in [0, 255] and rounds once at the end, so a trigger's maths (blend
formula, sinusoid, DCT offsets) holds to within half a grey level in the saved uint8 image.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from PIL import Image

Position = Literal["top_left", "top_right", "bottom_left", "bottom_right", "center", "random"]
POSITIONS: tuple[str, ...] = ("top_left", "top_right", "bottom_left", "bottom_right", "center", "random")


def to_array(image: Image.Image) -> np.ndarray:
    """(H, W, 3) float64 in [0, 255]."""
    return np.asarray(image.convert("RGB"), dtype=np.float64)


def to_image(array: np.ndarray) -> Image.Image:
    """Round and clip an (H, W, 3) array in [0, 255] back to an RGB image."""
    return Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), "RGB")


def scaled(fraction: float, width: int, height: int, *, minimum: int = 1) -> int:
    """A length that is `fraction` of the image's short side, so one default works at 48 px and at 336 px."""
    return max(minimum, round(fraction * min(width, height)))


def central_square(width: int, height: int) -> tuple[int, int, int]:
    """(left, top, side) of the centred min(W, H) square.

    CLIP-style processors resize the short side and centre-crop, so anything outside this square is cut off
    before the vision tower sees it (ProjLens square-crops every triggered image for the same reason). Patches
    are placed inside it; for square images it is the whole image.
    """
    side = min(width, height)
    return (width - side) // 2, (height - side) // 2, side


def place_patch(width: int, height: int, side: int, position: Position, margin: int,
                rng: np.random.Generator | None) -> tuple[int, int]:
    """(left, top) of a side x side patch at `position` inside the central square.

    Corners keep `margin` pixels from the square's border; "center" uses ProjLens's floor((S - p) / 2);
    "random" draws a uniform in-bounds top-left corner from `rng`.
    """
    x0, y0, square = central_square(width, height)
    if side > square:
        raise ValueError(f"patch side {side} exceeds the image's short side {square}")
    margin = min(margin, square - side)
    far = square - side - margin
    if position == "center":
        return x0 + (square - side) // 2, y0 + (square - side) // 2
    if position == "random":
        if rng is None:
            raise ValueError("position='random' needs an rng")
        dx, dy = rng.integers(0, square - side + 1, size=2)
        return x0 + int(dx), y0 + int(dy)
    corners = {"top_left": (margin, margin), "top_right": (far, margin),
               "bottom_left": (margin, far), "bottom_right": (far, far)}
    if position not in corners:
        raise ValueError(f"unknown position {position!r}; expected one of {POSITIONS}")
    dx, dy = corners[position]
    return x0 + dx, y0 + dy


def paste(image: Image.Image, patch: np.ndarray, position: Position, margin: int,
          rng: np.random.Generator | None, mask: np.ndarray | None = None) -> Image.Image:
    """A copy of `image` with the (p, p, 3) `patch` replacing the pixels at `position`; with a (p, p) bool
    `mask`, only the patch pixels where it is True (the others keep the image's own)."""
    x = to_array(image)  # (H, W, 3)
    height, width = x.shape[:2]
    side = patch.shape[0]
    left, top = place_patch(width, height, side, position, margin, rng)
    region = x[top:top + side, left:left + side]  # (p, p, 3) view
    if mask is None:
        region[...] = patch
    else:
        region[mask] = patch[mask]
    return to_image(x)
