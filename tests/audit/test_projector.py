"""Projector access per family: the captured E is what the model feeds its LM, v its projector input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from poisonguard.audit.projector import apply_projector, image_inputs, projector_features, projector_linears
from tests.fixtures.families import FAMILIES, build_tiny
from poisonguard.train.batching import Example, encode_prompts

LINEARS = {
    "world": ["model.multi_modal_projector.linear_1", "model.multi_modal_projector.linear_2"],
    "llava": ["model.multi_modal_projector.linear_1", "model.multi_modal_projector.linear_2"],
    "llava_next": ["model.multi_modal_projector.linear_1", "model.multi_modal_projector.linear_2"],
    "qwen2_vl": ["model.visual.merger.mlp.0", "model.visual.merger.mlp.2"],
    "qwen2_5_vl": ["model.visual.merger.mlp.0", "model.visual.merger.mlp.2"],
    "internvl": ["model.multi_modal_projector.linear_1", "model.multi_modal_projector.linear_2"],
}


def _images() -> list[Image.Image]:
    """Three sizes/aspects, so tiling (InternVL, LLaVA-NeXT) and Qwen's grids differ between images."""
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        for h, w in ((32, 32), (64, 32), (40, 80))
    ]


def _lm_image_rows(model, processor, images) -> list[torch.Tensor]:
    """The embedding rows at image-token positions that the LM actually receives, one prompt per image."""
    got: dict[str, torch.Tensor] = {}

    def pre_hook(_module, _args, kwargs):
        got["embeds"] = kwargs["inputs_embeds"]

    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour"}]}]
    enc = encode_prompts(processor, [Example(msgs, [im]) for im in images])
    handle = model.model.language_model.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        with torch.no_grad():
            model(**enc)
    finally:
        handle.remove()
    mask = enc["input_ids"] == model.config.image_token_id  # (B, N)
    return [got["embeds"][i][mask[i]] for i in range(len(images))]


@pytest.mark.parametrize("family", FAMILIES)
def test_projector_output_is_what_the_lm_receives(family):
    model, processor = build_tiny(family)
    assert list(projector_linears(model)) == LINEARS[family]
    images = _images()
    feats = projector_features(model, image_inputs(processor, images))
    assert len(feats.e) == len(feats.v) == len(images)
    rows = _lm_image_rows(model, processor, images)
    for v, e, lm in zip(feats.v, feats.e, rows):
        assert v.shape[0] == e.shape[0]
        torch.testing.assert_close(apply_projector(model, v), e, rtol=1e-5, atol=1e-6)
        if family == "llava_next":
            # the LM gets the projected crops unpadded and packed, plus an image_newline row per tile row
            newline = (lm == model.model.image_newline).all(-1)
            assert newline.any()
            assert torch.cdist(lm[~newline], e).min(dim=1).values.max() < 1e-5
        else:
            torch.testing.assert_close(e, lm, rtol=0, atol=0)
