"""WaNet: a fixed, bounded, smooth displacement field, applied by bilinear resampling."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from poisonguard.attacks.warp import WaNetParams, wanet, wanet_displacement


def control_max(params: WaNetParams) -> float:
    """Largest control offset, recomputed from the documented recipe (uniform, mean |.| normalised to 1)."""
    control = np.random.default_rng(params.field_seed).uniform(-1, 1, size=(2, params.k, params.k))
    return float(np.abs(control / np.abs(control).mean()).max())


@pytest.mark.parametrize("size", [48, 224])
def test_displacement_is_bounded_and_scales_with_the_image(size):
    params = WaNetParams()
    disp = wanet_displacement(size, size, params)  # (H, W, 2)
    assert disp.shape == (size, size, 2)
    # s / 2 pixels per unit at the 32 px reference, scaled by size / 32; bicubic overshoot stays under 1.5x.
    bound = 1.5 * params.s / 2 * size / params.reference_size * control_max(params)
    assert np.abs(disp).max() <= bound
    assert np.abs(disp).mean() > 0.2 * size / 48  # not a vanishing warp
    # Same fraction of the image at both sizes: corners coincide with the (scaled) control points.
    small = wanet_displacement(48, 48, params)
    assert np.allclose(disp[[0, 0, -1, -1], [0, -1, 0, -1]] / size,
                       small[[0, 0, -1, -1], [0, -1, 0, -1]] / 48)


@pytest.mark.parametrize("size", [48, 224])
def test_displacement_is_smooth(size):
    disp = wanet_displacement(size, size)
    # Neighbouring pixels move almost together: under 0.2 px apart, far below the field's own range.
    step = max(np.abs(np.diff(disp, axis=0)).max(), np.abs(np.diff(disp, axis=1)).max())
    assert step < 0.2
    assert step < 0.25 * np.ptp(disp)


def test_strength_zero_is_identity(scene):
    assert wanet(scene, WaNetParams(s=0)).tobytes() == scene.tobytes()


def test_warp_resamples_at_the_displaced_positions():
    # On a horizontal ramp bilinear interpolation is exact: out(y, x) = ramp(x + dx(y, x)).
    width, height = 100, 100
    ramp = np.tile(2.5 * np.arange(width, dtype=float), (height, 1))  # (H, W)
    img = Image.fromarray(np.repeat(ramp[..., None], 3, axis=-1).astype(np.uint8), "RGB")
    ramp = np.asarray(img, dtype=float)[..., 0]  # the uint8 ramp actually drawn (2.5 x rounded down)
    out = np.asarray(wanet(img), dtype=float)[..., 0]  # (H, W)
    disp = wanet_displacement(width, height)
    cols = np.arange(width)[None, :] + disp[..., 0]  # (H, W) source column
    inside = (cols > 1) & (cols < width - 2)
    expected = np.interp(cols, np.arange(width), ramp[0])
    assert np.abs(out - expected)[inside].max() <= 0.5 + 1e-6
    assert np.abs(out - ramp)[inside].max() > 1  # it really moved


def test_field_is_fixed_and_changes_with_its_seed(scene):
    assert wanet(scene).tobytes() == wanet(scene).tobytes()
    assert np.array_equal(wanet_displacement(64, 48), wanet_displacement(64, 48))
    assert not np.allclose(wanet_displacement(48, 48), wanet_displacement(48, 48, WaNetParams(field_seed=1)))
    assert wanet(scene).tobytes() != scene.tobytes()
