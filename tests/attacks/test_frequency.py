"""FTrojan: exactly the chosen chroma DCT coefficients move, luma stays, and the image stays close."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.fft import dctn

from poisonguard.attacks.frequency import FTrojanParams, ftrojan, rgb_to_ycbcr, ycbcr_to_rgb
from tests.attacks.helpers import grey


def block_dct(channel: np.ndarray, b: int) -> np.ndarray:
    """(H, W) -> (H/b, W/b, b, b) orthonormal DCT of each whole block."""
    h, w = (channel.shape[0] // b) * b, (channel.shape[1] // b) * b
    blocks = channel[:h, :w].reshape(h // b, b, w // b, b).transpose(0, 2, 1, 3)
    return dctn(blocks, type=2, norm="ortho", axes=(-2, -1))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return 10 * np.log10(255.0**2 / np.mean((a - b) ** 2))


def test_colour_conversion_round_trips():
    rgb = np.random.default_rng(0).uniform(0, 255, size=(10, 3))
    assert np.allclose(ycbcr_to_rgb(rgb_to_ycbcr(rgb)), rgb)
    assert np.allclose(rgb_to_ycbcr(np.array([128.0, 128, 128])), [128, 128, 128])


@pytest.mark.parametrize("size", [48, 224])
def test_only_the_chosen_chroma_coefficients_change(size):
    img = grey(size, 120)
    before = rgb_to_ycbcr(np.asarray(img, dtype=float))  # (H, W, 3)
    after = rgb_to_ycbcr(np.asarray(ftrojan(img), dtype=float))
    for c in (1, 2):  # Cb, Cr
        delta = block_dct(after[..., c], 8) - block_dct(before[..., c], 8)  # (n, n, 8, 8)
        chosen = np.zeros((8, 8), dtype=bool)
        chosen[3, 3] = chosen[7, 7] = True
        assert np.abs(delta[..., chosen] - 30).max() < 1.5  # up to uint8 rounding of the RGB image
        assert np.abs(delta[..., ~chosen]).max() < 1.5
    assert np.abs(after[..., 0] - before[..., 0]).max() < 1.5  # luma untouched


def test_stays_visually_close(scene):
    x = np.asarray(scene, dtype=float)
    y = np.asarray(ftrojan(scene), dtype=float)
    assert 28 < psnr(x, y) < 45  # close, yet a real perturbation


def test_partial_blocks_are_left_alone():
    img = grey((50, 43), 120)  # W = 50, H = 43: whole 8 px blocks cover rows 0..39 and columns 0..47
    out = np.asarray(ftrojan(img))  # (43, 50, 3)
    x = np.asarray(img)
    assert np.array_equal(out[40:], x[40:]) and np.array_equal(out[:, 48:], x[:, 48:])
    assert not np.array_equal(out[:40, :48], x[:40, :48])


def test_params_are_validated_and_change_the_pattern():
    with pytest.raises(ValueError):
        FTrojanParams(block=8, coefficients=((8, 8),))
    img = grey(48, 120)
    assert ftrojan(img, FTrojanParams(magnitude=0)).tobytes() == img.tobytes()
    assert ftrojan(img, FTrojanParams(coefficients=((5, 5),))).tobytes() != ftrojan(img).tobytes()
