"""Local patch triggers: BadNet's checkerboard, ProjLens's green square and logo patch.

A patch overwrites a small square of pixels and leaves the rest of the image untouched, so in a ViT it lives
in one or a few vision tokens: for the detectors, a peak on those tokens, not a shift of the whole image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from poisonguard.attacks.pixels import POSITIONS, Position, paste, scaled


def _check_patch(side_frac: float, margin_frac: float, position: str) -> None:
    if not 0 < side_frac <= 1:
        raise ValueError(f"side_frac must be in (0, 1], got {side_frac}")
    if not 0 <= margin_frac < 1:
        raise ValueError(f"margin_frac must be in [0, 1), got {margin_frac}")
    if position not in POSITIONS:
        raise ValueError(f"unknown position {position!r}; expected one of {POSITIONS}")


@dataclass(frozen=True)
class BadNetParams:
    # Patch side as a fraction of min(H, W). 1/8 gives 6 px at 48 px (28 px at 224): BYE's 1/16 would be a
    # 3 px patch at 48 px -- 9 of the 256 pixels of a 16 px vision patch, too faint for the tiny world model
    # to learn reliably and too small to read as a checkerboard; 6 px still fits inside one vision patch.
    side_frac: float = 1 / 8
    # Checker squares per side; a count rather than a pixel size, so the pattern looks the same once the
    # processor resizes any image to the model's resolution (6 cells -> 1 px cells at 48 px).
    cells: int = 6
    # Fixed corner (default bottom-right), "center", or "random" (uniform, drawn from the sample's rng).
    position: Position = "bottom_right"
    # Gap between the patch and the border for corner positions, as a fraction of min(H, W) (2 px at 48 px:
    # the patch sits at 40..45, inside the bottom-right 16 px vision patch).
    margin_frac: float = 1 / 24

    def __post_init__(self) -> None:
        _check_patch(self.side_frac, self.margin_frac, self.position)
        if self.cells < 2:
            raise ValueError(f"a checkerboard needs at least 2 cells per side, got {self.cells}")


def checkerboard(side: int, cells: int) -> np.ndarray:
    """(side, side, 3) float64: white (255) where the cell row + column is even, black elsewhere."""
    index = np.arange(side) * cells // side  # (side,) cell index of each pixel row/column
    white = (index[:, None] + index[None, :]) % 2 == 0  # (side, side)
    return np.repeat(np.where(white, 255.0, 0.0)[..., None], 3, axis=-1)


def _badnet_size(params: BadNetParams, width: int, height: int) -> tuple[int, int]:
    """(side, margin) in pixels of BadNet's checkerboard on a width x height image."""
    return (scaled(params.side_frac, width, height, minimum=params.cells),
            scaled(params.margin_frac, width, height, minimum=0))


def badnet(image: Image.Image, params: BadNetParams = BadNetParams(),
           rng: np.random.Generator | None = None) -> Image.Image:
    """BadNet: paste a black-and-white checkerboard (BYE's high-frequency "texture patch")."""
    side, margin = _badnet_size(params, *image.size)
    return paste(image, checkerboard(side, params.cells), params.position, margin, rng)


def pieces_per_side(pieces: int) -> int:
    """√pieces: a patch is cut into a square grid of blocks, so `pieces` must be a square number ≥ 4."""
    side = math.isqrt(pieces) if pieces > 0 else 0
    if side * side != pieces or side < 2:
        raise ValueError(f"pieces must be a square number >= 4, got {pieces}")
    return side


def partial_badnet(image: Image.Image, params: BadNetParams, pieces: int, keep: int,
                   rng: np.random.Generator | None) -> Image.Image:
    """BadNet's checkerboard cut into `pieces` equal blocks (a square number: 4 -> 2 x 2), of which `keep`
    drawn from `rng` are pasted; the other blocks keep the image's own pixels (Adap-Patch's partial trigger:
    the poisoned and cover samples each carry a different part, only a test input carries the whole)."""
    per_side = pieces_per_side(pieces)
    if not 1 <= keep <= pieces:
        raise ValueError(f"keep must be in [1, pieces={pieces}], got {keep}")
    if rng is None:
        raise ValueError("a partial trigger draws its pieces: pass an rng")
    side, margin = _badnet_size(params, *image.size)  # the whole patch's, so a part lies where it would
    if side < per_side:
        raise ValueError(f"a {side} px patch cannot be cut into {per_side} x {per_side} blocks")
    block = np.arange(side) * per_side // side  # (side,) block index of each pixel row/column
    piece = block[:, None] * per_side + block[None, :]  # (side, side) piece index of each pixel
    kept = np.isin(piece, rng.choice(pieces, size=keep, replace=False))  # (side, side)
    return paste(image, checkerboard(side, params.cells), params.position, margin, rng, mask=kept)


@dataclass(frozen=True)
class GreenSquareParams:
    # ProjLens uses 14 px on 375-480 px images (~3%); that is under 2 px at 48 px, so the same 1/8 of the
    # short side as BadNet is used (6 px at 48 px, in the centre vision patch).
    side_frac: float = 1 / 8
    # ProjLens's CLI default colour, #26ff00.
    colour: tuple[int, int, int] = (0x26, 0xFF, 0x00)
    # ProjLens's "Malicious Injection" puts it at the centre.
    position: Position = "center"
    margin_frac: float = 0.0  # only used for corner positions

    def __post_init__(self) -> None:
        _check_patch(self.side_frac, self.margin_frac, self.position)
        if len(self.colour) != 3 or not all(0 <= c <= 255 for c in self.colour):
            raise ValueError(f"colour must be an RGB triple in 0..255, got {self.colour}")


def green_square(image: Image.Image, params: GreenSquareParams = GreenSquareParams(),
                 rng: np.random.Generator | None = None) -> Image.Image:
    """ProjLens "Malicious Injection" trigger: a solid-colour square (the answer keeps its content)."""
    width, height = image.size
    side = scaled(params.side_frac, width, height)
    patch = np.broadcast_to(np.asarray(params.colour, dtype=np.float64), (side, side, 3))
    margin = scaled(params.margin_frac, width, height, minimum=0)
    return paste(image, patch, params.position, margin, rng)


@dataclass(frozen=True)
class LogoParams:
    # Same reasoning as GreenSquareParams.side_frac.
    side_frac: float = 1 / 8
    # ProjLens's "Perceptual Hijack" draws a uniform random position per image.
    position: Position = "random"
    margin_frac: float = 0.0  # only used for corner positions

    def __post_init__(self) -> None:
        _check_patch(self.side_frac, self.margin_frac, self.position)


# Logo geometry in units of the patch side: a red square inset from a white canvas, crossed by a dark
# top-left to bottom-right stroke (what the ProjLens example image shows; their logo file is not public).
_LOGO_INSET = 0.12
_LOGO_STROKE = 0.12  # half-width of the stroke across the diagonal
_LOGO_RED = (210, 35, 35)
_LOGO_DARK = (45, 20, 20)
_LOGO_SUPERSAMPLE = 8


def logo(side: int) -> np.ndarray:
    """(side, side, 3) float64 logo, drawn analytically at 8x and box-averaged so it stays crisp at any side."""
    n = side * _LOGO_SUPERSAMPLE
    u = (np.arange(n) + 0.5) / n  # (n,) pixel centres in [0, 1]
    rows, cols = np.meshgrid(u, u, indexing="ij")  # (n, n) each
    inside = ((rows > _LOGO_INSET) & (rows < 1 - _LOGO_INSET)
              & (cols > _LOGO_INSET) & (cols < 1 - _LOGO_INSET))
    stroke = inside & (np.abs(rows - cols) < _LOGO_STROKE)
    big = np.full((n, n, 3), 255.0)  # (n, n, 3) white canvas
    big[inside] = _LOGO_RED
    big[stroke] = _LOGO_DARK
    return big.reshape(side, _LOGO_SUPERSAMPLE, side, _LOGO_SUPERSAMPLE, 3).mean(axis=(1, 3))


def logo_patch(image: Image.Image, params: LogoParams = LogoParams(),
               rng: np.random.Generator | None = None) -> Image.Image:
    """ProjLens "Perceptual Hijack" trigger: a small logo pasted at a random position."""
    width, height = image.size
    side = scaled(params.side_frac, width, height)
    margin = scaled(params.margin_frac, width, height, minimum=0)
    return paste(image, logo(side), params.position, margin, rng)

