"""FTrojan: a trigger hidden in mid/high DCT frequencies of the chroma channels (Wang et al., ECCV 2022).

Chroma at high frequency is what the eye resolves worst, so the image looks unchanged while every block
carries the same spectral key.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy.fft import idctn

from poisonguard.attacks.pixels import to_array, to_image

# Full-range BT.601 (JFIF) RGB -> YCbCr; Cb and Cr are offset by 128. The inverse is the exact matrix inverse
# (not JPEG's rounded constants), so an untouched image survives the round trip to float precision.
_RGB_TO_YCBCR = np.array([
    [0.299, 0.587, 0.114],
    [-0.168736, -0.331264, 0.5],
    [0.5, -0.418688, -0.081312],
])
_YCBCR_TO_RGB = np.linalg.inv(_RGB_TO_YCBCR)
_CHROMA_OFFSET = np.array([0.0, 128.0, 128.0])


def rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) RGB in [0, 255] -> (..., 3) YCbCr."""
    return rgb @ _RGB_TO_YCBCR.T + _CHROMA_OFFSET


def ycbcr_to_rgb(ycc: np.ndarray) -> np.ndarray:
    """(..., 3) YCbCr -> (..., 3) RGB (unclipped)."""
    return (ycc - _CHROMA_OFFSET) @ _YCBCR_TO_RGB.T


@dataclass(frozen=True)
class FTrojanParams:
    # DCT block side in pixels (JPEG's 8). Two blocks span one 16 px vision patch of the world model, so
    # every vision token holds the same key. Pixels in a last partial block (H or W not a multiple) are kept.
    block: int = 8
    # Added to each chosen coefficient of the orthonormal block DCT, in both Cb and Cr (FTrojan: 30). With
    # 8 px blocks one coefficient is a cosine of amplitude ~2 * 30 / 8 = 7.5 grey levels.
    magnitude: float = 30.0
    # (row, column) frequencies within a block: FTrojan's mid (b/2 - 1) and highest (b - 1) frequency.
    coefficients: tuple[tuple[int, int], ...] = ((3, 3), (7, 7))

    def __post_init__(self) -> None:
        if self.block < 2:
            raise ValueError(f"block must be >= 2, got {self.block}")
        if not self.coefficients or not all(0 <= u < self.block and 0 <= v < self.block
                                            for u, v in self.coefficients):
            raise ValueError(f"coefficients must be (row, col) pairs inside a {self.block}-px block")


def ftrojan_block(params: FTrojanParams = FTrojanParams()) -> np.ndarray:
    """(b, b) pixel-domain offset of one block.

    The DCT is linear, so adding `magnitude` to coefficient (u, v) of every block's DCT equals adding the
    inverse DCT of a one-hot coefficient block to every block: one tiled pattern, computed once.
    """
    coefficients = np.zeros((params.block, params.block))  # (b, b)
    for u, v in params.coefficients:
        coefficients[u, v] = params.magnitude
    return idctn(coefficients, type=2, norm="ortho")


def ftrojan(image: Image.Image, params: FTrojanParams = FTrojanParams(),
            rng: np.random.Generator | None = None) -> Image.Image:
    """FTrojan: shift the chosen block-DCT coefficients of Cb and Cr, keep luma."""
    ycc = rgb_to_ycbcr(to_array(image))  # (H, W, 3)
    b = params.block
    rows, cols = (image.height // b) * b, (image.width // b) * b  # the part covered by whole blocks
    offset = np.tile(ftrojan_block(params), (rows // b, cols // b))  # (rows, cols)
    ycc[:rows, :cols, 1:] += offset[..., None]
    return to_image(ycbcr_to_rgb(ycc))
