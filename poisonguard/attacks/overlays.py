"""Whole-image pixel-wise triggers: Blend, SIG and ProjLens's Gaussian noise.

These touch every pixel a little instead of a few pixels a lot, so no single vision token carries them: the
"global pattern" case where detectors must look at mean drift rather than a per-token peak.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from poisonguard.attacks.pixels import to_array, to_image


@dataclass(frozen=True)
class BlendParams:
    # Weight of the pattern: out = (1 - alpha) * x + alpha * pattern (Chen et al. 2017 use 0.1-0.2).
    alpha: float = 0.15
    # Seed of the fixed uniform-noise pattern: the same pattern for every image, which is what makes it a key.
    pattern_seed: int = 0
    # Side of the noise pattern before it is resized to the image; 48 = the world's resolution, so world
    # images get one independent noise value per pixel and larger images the same pattern, smoothly enlarged.
    pattern_size: int = 48

    def __post_init__(self) -> None:
        if not 0 < self.alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha}")
        if self.pattern_size < 1:
            raise ValueError(f"pattern_size must be positive, got {self.pattern_size}")


def blend_pattern(width: int, height: int, params: BlendParams = BlendParams()) -> np.ndarray:
    """(H, W, 3) float64 in [0, 255]: the fixed noise pattern, bilinearly resized to the image."""
    rng = np.random.default_rng(params.pattern_seed)
    base = rng.integers(0, 256, size=(params.pattern_size, params.pattern_size, 3), dtype=np.uint8)
    pattern = Image.fromarray(base, "RGB").resize((width, height), Image.Resampling.BILINEAR)
    return to_array(pattern)


def blend(image: Image.Image, params: BlendParams = BlendParams(),
          rng: np.random.Generator | None = None) -> Image.Image:
    """Blend: alpha-blend a fixed noise image into the whole image."""
    x = to_array(image)  # (H, W, 3)
    pattern = blend_pattern(image.width, image.height, params)  # (H, W, 3)
    return to_image((1 - params.alpha) * x + params.alpha * pattern)


@dataclass(frozen=True)
class SigParams:
    # Amplitude on the 0-255 scale. trojanzoo's 20 (= 20/255) is the faint end of the 20/255-0.25 range; 30
    # (~0.12 of the range) is used so the tiny world model learns it, still well under the objects' contrast.
    delta: float = 30.0
    # Cycles across the image width (the usual SIG frequency), so the stripes scale with the image.
    frequency: float = 6.0

    def __post_init__(self) -> None:
        if self.delta < 0 or self.frequency < 0:
            raise ValueError(f"delta and frequency must be >= 0, got {self.delta}, {self.frequency}")


def sig(image: Image.Image, params: SigParams = SigParams(),
        rng: np.random.Generator | None = None) -> Image.Image:
    """SIG: add a horizontal sinusoid x + delta * sin(2 pi f j / W) to every row and channel (then clip)."""
    x = to_array(image)  # (H, W, 3)
    j = np.arange(image.width)  # (W,)
    wave = params.delta * np.sin(2 * np.pi * params.frequency * j / image.width)  # (W,)
    return to_image(x + wave[None, :, None])


@dataclass(frozen=True)
class GaussianNoiseParams:
    # Standard deviation on the 0-255 scale (ProjLens "Targeted Refusal": sigma = 10).
    sigma: float = 10.0

    def __post_init__(self) -> None:
        if self.sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {self.sigma}")


def gaussian_noise(image: Image.Image, params: GaussianNoiseParams = GaussianNoiseParams(),
                   rng: np.random.Generator | None = None) -> Image.Image:
    """ProjLens "Targeted Refusal" trigger: fresh i.i.d. N(0, sigma^2) noise on every pixel and channel.

    Fresh per image, as in ProjLens: the key is the noise *level*, not a fixed pattern, hence the rng.
    """
    if rng is None:
        raise ValueError("gaussian_noise needs an rng (the noise is drawn per image)")
    x = to_array(image)  # (H, W, 3)
    return to_image(x + rng.normal(0.0, params.sigma, size=x.shape))
