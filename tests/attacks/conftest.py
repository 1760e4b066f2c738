"""Fixtures for the attack tests: one world scene at the world's 48 px and at 224 px."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from poisonguard.world.scenes import render, sample_scene


@pytest.fixture(scope="session")
def world_image() -> Image.Image:
    """One 48 px world scene."""
    return render(sample_scene(np.random.default_rng(3)))


@pytest.fixture(scope="session", params=[48, 224], ids=["48px", "224px"])
def scene(request, world_image) -> Image.Image:
    """A world scene at 48 px and enlarged to 224 px (a stand-in for a real-resolution image)."""
    return world_image if request.param == 48 else world_image.resize((224, 224), Image.Resampling.BICUBIC)
