"""ProjLens "Jailbreak Output" trigger: an oil-painting style over the whole image.

ProjLens uses OpenCV's `xphoto.oilPainting` (falling back to PIL's ModeFilter without it). Both paint each
pixel with the *most common* intensity of its neighbourhood; this is the same idea in numpy: a histogram of
quantised luma over a window, and the mean colour of the modal bin. It erases fine texture (the world's pixel
noise, a photo's grain) into flat, brush-like regions while keeping the content, so the trigger is a
*style*, not a pattern at a place.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from poisonguard.attacks.pixels import scaled, to_array, to_image

_LUMA = np.array([0.299, 0.587, 0.114])


@dataclass(frozen=True)
class OilParams:
    # Window radius as a fraction of min(H, W); the window is (2r+1)^2. 1/48 gives r = 1 at 48 px (a 3x3
    # window: wider ones round the world's 12 px squares into circles, which would change correct answers)
    # and r = 7 at 336 px, OpenCV's size 7 that ProjLens uses, at LLaVA-1.5's resolution.
    radius_frac: float = 1 / 48
    # Luma histogram bins (OpenCV's 256 / dynRatio). 16 bins of 16 grey levels: the world's +-6 noise mostly
    # falls into one bin, so it is painted flat.
    levels: int = 16

    def __post_init__(self) -> None:
        if not 0 < self.radius_frac < 0.5:
            raise ValueError(f"radius_frac must be in (0, 0.5), got {self.radius_frac}")
        if not 2 <= self.levels <= 256:
            raise ValueError(f"levels must be in 2..256, got {self.levels}")


def _box_sum(a: np.ndarray, radius: int) -> np.ndarray:
    """(H, W, C) -> (H, W, C) sums over the (2r+1)^2 window centred on each pixel (reflected borders)."""
    n = 2 * radius + 1
    padded = np.pad(a, ((radius, radius), (radius, radius), (0, 0)), mode="reflect")  # (H+2r, W+2r, C)
    integral = np.pad(padded.cumsum(0).cumsum(1), ((1, 0), (1, 0), (0, 0)))  # (H+2r+1, W+2r+1, C)
    return integral[n:, n:] - integral[:-n, n:] - integral[n:, :-n] + integral[:-n, :-n]


def oil_filter(x: np.ndarray, radius: int, levels: int) -> np.ndarray:
    """(H, W, 3) -> (H, W, 3): each pixel takes the mean colour of the window's pixels in the window's most
    populated luma bin. Ties go to the darker bin, so the output is deterministic."""
    bins = np.minimum((x @ _LUMA * levels / 256).astype(int), levels - 1)  # (H, W)
    best = np.zeros(x.shape[:2])  # (H, W) pixel count of the modal bin so far
    out = np.zeros_like(x)  # (H, W, 3)
    for b in np.unique(bins):
        member = (bins == b).astype(float)[..., None]  # (H, W, 1)
        sums = _box_sum(np.concatenate([member, member * x], axis=-1), radius)  # (H, W, 4): count, colour sum
        wins = sums[..., 0] > best
        best[wins] = sums[..., 0][wins]
        out[wins] = sums[..., 1:][wins] / sums[..., :1][wins]
    return out


def oil_painting(image: Image.Image, params: OilParams = OilParams(),
                 rng: np.random.Generator | None = None) -> Image.Image:
    """Oil-painting style with a window scaled to the image."""
    radius = scaled(params.radius_frac, image.width, image.height)
    return to_image(oil_filter(to_array(image), radius, params.levels))
