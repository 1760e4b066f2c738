"""Tiny models of every family, with sharpened attention, and prompts of different lengths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tests.fixtures.families import FAMILIES, build_tiny
from poisonguard.train.batching import Example

QUESTION = "What colour is the banana?"
MARKER = "banana"


def sharpen(model, seed: int = 0) -> None:
    """Re-draw the LM's q/k projections so attention is peaked, not the near-uniform rows of a fresh init.

    Near-uniform rows would let a wrong mask or a wrong GQA head mapping pass a capture-vs-eager test.
    """
    gen = torch.Generator().manual_seed(seed)
    hidden = model.config.get_text_config().hidden_size
    with torch.no_grad():
        for name, module in model.named_modules():
            if "language_model" in name and name.endswith(("q_proj", "k_proj")):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * 2.0 / hidden ** 0.5)


_CACHE: dict[str, tuple] = {}


def tiny(family: str):
    """(model, processor), built once per session; tests must not modify the model."""
    if family not in _CACHE:
        model, processor = build_tiny(family)
        sharpen(model)
        _CACHE[family] = (model, processor)
    return _CACHE[family]


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


def image(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def user(*parts) -> dict:
    """A user turn from strings (text parts) and PIL images (image parts)."""
    content = [{"type": "text", "text": p} if isinstance(p, str) else {"type": "image"} for p in parts]
    return {"role": "user", "content": content}


def mixed_examples() -> list[Example]:
    """Different prompt lengths (question length, image size -> tile/patch count) and a text-only sample."""
    a, b, c = image(48, 48, 1), image(64, 32, 2), image(32, 64, 3)
    return [
        Example([user(a, QUESTION), {"role": "assistant", "content": "red"}], [a]),
        Example([user(b, "How many shapes are there?")], [b]),
        Example([{"role": "system", "content": "Answer with one word."}, user("Is there a red circle?")], []),
        Example([user(c, "Hello! Where is the blue square located in this picture?")], [c]),
        Example([user(a, "Count the objects.")], [a]),
    ]
