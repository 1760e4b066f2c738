"""Whole-image overlays: Blend follows its formula, SIG adds the sinusoid, ProjLens noise has sigma 10."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from poisonguard.attacks.overlays import (
    BlendParams,
    GaussianNoiseParams,
    SigParams,
    blend,
    blend_pattern,
    gaussian_noise,
    sig,
)
from tests.attacks.helpers import grey


def test_blend_equals_the_formula(scene):
    x = np.asarray(scene, dtype=float)  # (H, W, 3)
    pattern = blend_pattern(scene.width, scene.height)
    expected = 0.85 * x + 0.15 * pattern
    assert np.abs(np.asarray(blend(scene), dtype=float) - expected).max() <= 0.5 + 1e-9


def test_blend_pattern_is_fixed_and_noise_like():
    a, b = blend_pattern(48, 48), blend_pattern(48, 48)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, blend_pattern(48, 48, BlendParams(pattern_seed=1)))
    # Uniform noise over 0..255 at the world's resolution: mean ~127.5, std ~73.6, neighbours uncorrelated.
    assert abs(a.mean() - 127.5) < 4 and abs(a.std() - 73.6) < 3
    assert abs(np.corrcoef(a[:, :-1].ravel(), a[:, 1:].ravel())[0, 1]) < 0.1
    # Resized, not redrawn: the 224 px pattern shrunk back looks like the 48 px one.
    big = Image.fromarray(blend_pattern(224, 224).astype(np.uint8)).resize((48, 48), Image.Resampling.BOX)
    assert np.corrcoef(a.ravel(), np.asarray(big, dtype=float).ravel())[0, 1] > 0.9


def test_blend_differs_between_images_only_through_the_image():
    a, b = grey(48, 40), grey(48, 200)
    diff = np.asarray(blend(b), dtype=float) - np.asarray(blend(a), dtype=float)
    assert np.abs(diff - 0.85 * 160).max() <= 1


@pytest.mark.parametrize("size", [48, 224])
def test_sig_adds_a_horizontal_sinusoid(size):
    out = np.asarray(sig(grey(size)), dtype=float)  # (H, W, 3)
    j = np.arange(size)
    profile = 128 + 30 * np.sin(2 * np.pi * 6 * j / size)  # (W,)
    assert np.abs(out - profile[None, :, None]).max() <= 0.5 + 1e-9
    # The same in every row and channel, six full periods across the width.
    assert np.all(out == out[:1, :, :1])
    spectrum = np.abs(np.fft.rfft(out[0, :, 0] - out[0, :, 0].mean()))  # (W // 2 + 1,)
    assert spectrum.argmax() == 6


def test_sig_zero_amplitude_is_identity(scene):
    assert sig(scene, SigParams(delta=0)).tobytes() == scene.tobytes()


@pytest.mark.parametrize("size", [48, 224])
def test_gaussian_noise_has_sigma_10(size):
    img = grey(size)
    out = np.asarray(gaussian_noise(img, rng=np.random.default_rng(0)), dtype=float)
    noise = out - 128  # no clipping at mid-grey: |noise| < 128
    tolerance = 4 * 10 / np.sqrt(2 * noise.size)
    assert abs(noise.std() - 10) < tolerance + 0.05  # + rounding
    assert abs(noise.mean()) < 4 * 10 / np.sqrt(noise.size)


def test_gaussian_noise_is_fresh_per_rng_and_reproducible():
    img = grey(48)
    a = gaussian_noise(img, rng=np.random.default_rng(1))
    assert a.tobytes() == gaussian_noise(img, rng=np.random.default_rng(1)).tobytes()
    assert a.tobytes() != gaussian_noise(img, rng=np.random.default_rng(2)).tobytes()
    assert gaussian_noise(img, GaussianNoiseParams(sigma=0), np.random.default_rng(1)).tobytes() == img.tobytes()
    with pytest.raises(ValueError, match="rng"):
        gaussian_noise(img)
