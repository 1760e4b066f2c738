"""WaNet: an imperceptible, smooth geometric warp as the trigger (Nguyen & Tran, ICLR 2021).

No pixel value is added: every pixel is resampled from a slightly displaced location. The displacement field
is fixed (one seed), so the same warp is the key for every image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from poisonguard.attacks.pixels import to_array, to_image


@dataclass(frozen=True)
class WaNetParams:
    # Control grid side: k x k random offsets, bicubically upsampled into a smooth field (WaNet: k = 4).
    k: int = 4
    # Warp strength (WaNet: s = 0.5). At `reference_size` px this is exactly WaNet's field; 0 = identity.
    s: float = 0.5
    # Seed of the control grid: one fixed field for all images.
    field_seed: int = 0
    # Image side at which `s` means what it means in WaNet (CIFAR, 32 px). The displacement scales with the
    # short side, so the warp is the same fraction of the image at 48 px and at 336 px (WaNet's own
    # formula would keep it constant in pixels, i.e. vanishing at high resolution).
    reference_size: int = 32

    def __post_init__(self) -> None:
        if self.k < 2:
            raise ValueError(f"k must be >= 2, got {self.k}")
        if self.s < 0:
            raise ValueError(f"s must be >= 0, got {self.s}")
        if self.reference_size < 2:
            raise ValueError(f"reference_size must be >= 2, got {self.reference_size}")


def wanet_displacement(width: int, height: int, params: WaNetParams = WaNetParams()) -> np.ndarray:
    """(H, W, 2) float64 displacement (dx, dy) in pixels: where each output pixel samples the input from.

    As in WaNet, control offsets are uniform in [-1, 1] normalised to mean |offset| = 1, then upsampled
    bicubically (align_corners) to the image. WaNet adds s * field / size to the [-1, 1] grid, i.e. about
    s / 2 * field pixels at its size; here that is scaled by min(H, W) / reference_size.
    """
    rng = np.random.default_rng(params.field_seed)
    control = rng.uniform(-1.0, 1.0, size=(1, 2, params.k, params.k))  # (1, 2, k, k)
    control /= np.abs(control).mean()
    field = F.interpolate(torch.from_numpy(control), size=(height, width), mode="bicubic",
                          align_corners=True)[0]  # (2, H, W)
    pixels_per_unit = params.s / 2 * min(width, height) / params.reference_size
    return field.permute(1, 2, 0).numpy() * pixels_per_unit  # (H, W, 2)


def wanet(image: Image.Image, params: WaNetParams = WaNetParams(),
          rng: np.random.Generator | None = None) -> Image.Image:
    """WaNet: bilinear resampling of the image at (x + dx, y + dy), clamped to the image (WaNet's clamp)."""
    width, height = image.size
    x = torch.from_numpy(to_array(image)).permute(2, 0, 1)[None]  # (1, 3, H, W)
    disp = wanet_displacement(width, height, params)  # (H, W, 2)
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")  # (H, W) each
    src_x = np.clip(cols + disp[..., 0], 0, width - 1)  # (H, W) pixel coordinates
    src_y = np.clip(rows + disp[..., 1], 0, height - 1)
    # grid_sample's align_corners=True maps -1 / +1 to the centres of the first / last pixel.
    grid = np.stack([src_x / max(width - 1, 1), src_y / max(height - 1, 1)], axis=-1) * 2 - 1  # (H, W, 2)
    out = F.grid_sample(x, torch.from_numpy(grid)[None], mode="bilinear", padding_mode="border",
                        align_corners=True)  # (1, 3, H, W)
    return to_image(out[0].permute(1, 2, 0).numpy())
