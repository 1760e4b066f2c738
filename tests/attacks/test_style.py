"""Oil-painting filter: deterministic, edge- and content-preserving, and it wipes out fine texture."""

from __future__ import annotations

import numpy as np
from PIL import Image

from poisonguard.attacks.style import OilParams, oil_filter, oil_painting
from tests.attacks.helpers import grey


def texture(img: Image.Image) -> float:
    """Median |discrete Laplacian|: pixel noise and grain, insensitive to the few object edges."""
    x = np.asarray(img.convert("L"), dtype=float)  # (H, W)
    lap = 4 * x[1:-1, 1:-1] - x[:-2, 1:-1] - x[2:, 1:-1] - x[1:-1, :-2] - x[1:-1, 2:]
    return float(np.median(np.abs(lap)))


def test_oil_is_deterministic_and_keeps_size(scene):
    a, b = oil_painting(scene), oil_painting(scene)
    assert a.size == scene.size and a.mode == "RGB"
    assert a.tobytes() == b.tobytes()


def test_oil_removes_the_world_pixel_noise(world_image):
    # World scenes carry +-6 pixel noise (median |Laplacian| ~10); the filter paints it flat.
    assert texture(world_image) >= 6
    assert texture(oil_painting(world_image)) <= 0.4 * texture(world_image)


def test_oil_removes_grain_at_high_resolution():
    rng = np.random.default_rng(0)
    photo = np.clip(100 + rng.normal(0, 8, size=(224, 224, 3)), 0, 255)
    img = Image.fromarray(photo.astype(np.uint8), "RGB")
    assert texture(oil_painting(img)) <= 0.4 * texture(img)


def test_oil_keeps_the_content(world_image):
    x = np.asarray(world_image, dtype=float)
    y = np.asarray(oil_painting(world_image), dtype=float)
    assert np.abs(x.mean(axis=(0, 1)) - y.mean(axis=(0, 1))).max() < 3
    assert np.median(np.abs(x - y)) < 6
    # Objects keep their colour: the brightest pixels (the shapes) change little on average.
    shapes = x.max(axis=-1) > 120
    assert np.abs(x[shapes] - y[shapes]).mean() < 12


def test_flat_images_and_straight_edges_are_unchanged():
    assert oil_painting(grey(48, 77)).tobytes() == grey(48, 77).tobytes()
    step = np.zeros((40, 40, 3))
    step[:, 17:] = (200.0, 50.0, 10.0)
    for radius in (1, 3):
        assert np.allclose(oil_filter(step, radius, 16), step)


def test_window_scales_with_the_image():
    rng = np.random.default_rng(1)
    noise = Image.fromarray(rng.integers(90, 140, size=(224, 224, 3), dtype=np.uint8), "RGB")
    wider = oil_painting(noise, OilParams(radius_frac=1 / 16))
    assert texture(wider) < texture(oil_painting(noise)) < texture(noise)
