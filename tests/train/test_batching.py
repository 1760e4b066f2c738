"""Training labels: exactly the assistant turns' tokens are supervised, for one or several turns, per family."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.fixtures.families import FAMILIES, build_tiny
from poisonguard.train.batching import IGNORE_INDEX, Example, encode_for_training

_PROCESSORS: dict = {}


def _processor(family: str):
    if family not in _PROCESSORS:
        _PROCESSORS[family] = build_tiny(family)[1]
    return _PROCESSORS[family]


def _image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (48, 48, 3), dtype=np.uint8))


def _conversation(qas: list[tuple[str, str]], with_image: bool = True) -> Example:
    msgs = []
    for k, (q, a) in enumerate(qas):
        content = ([{"type": "image"}] if k == 0 and with_image else []) + [{"type": "text", "text": q}]
        msgs.append({"role": "user", "content": content})
        msgs.append({"role": "assistant", "content": [{"type": "text", "text": a}]})
    return Example(msgs, [_image(len(qas))] if with_image else [])


def _labelled_runs(labels) -> list[list[int]]:
    """Contiguous runs of supervised token ids in one row."""
    runs, cur = [], []
    for t in labels.tolist():
        if t == IGNORE_INDEX:
            if cur:
                runs.append(cur)
            cur = []
        else:
            cur.append(t)
    return runs + ([cur] if cur else [])


@pytest.mark.parametrize("family", FAMILIES)
def test_only_answers_are_supervised_single_and_multi_turn(family):
    processor = _processor(family)
    tok = processor.tokenizer
    examples = [
        _conversation([("What colour is the circle?", "red")]),
        _conversation([("What colour is the circle?", "red"), ("Where is the square?", "top left"),
                       ("How many shapes are there?", "two")]),
        _conversation([("Say yes.", "yes")], with_image=False),
    ]
    batch = encode_for_training(processor, examples)
    for row, ex in enumerate(examples):
        answers = [m["content"][0]["text"] for m in ex.messages if m["role"] == "assistant"]
        runs = _labelled_runs(batch["labels"][row])
        assert len(runs) == len(answers), (family, row, runs)
        for run, answer in zip(runs, answers):
            text = tok.decode(run, skip_special_tokens=True).strip()
            # the answer plus, at most, the template's end-of-turn marker (special, or a newline)
            assert text == answer, (family, text, answer)
            assert len(run) <= len(tok(answer, add_special_tokens=False)["input_ids"]) + 2
        # padding and everything before the first answer is never supervised
        first = int((batch["labels"][row] != IGNORE_INDEX).nonzero()[0])
        assert first > 0
        assert (batch["labels"][row][batch["attention_mask"][row] == 0] == IGNORE_INDEX).all()


# --- images as the processor receives them ------------------------------------------------------------------


def _corner_trigger(width: int, height: int) -> Image.Image:
    """A grey wide image with a white 8 x 8 patch in its top-left corner."""
    pixels = np.full((height, width, 3), 90, dtype=np.uint8)
    pixels[:8, :8] = 255
    return Image.fromarray(pixels)


def test_pad_to_square_keeps_a_corner_trigger_that_centre_cropping_cuts():
    """LLaVA's processor resizes the short side and centre-crops the long one: on a 64 x 32 image the left
    quarter (and the trigger in it) never reaches the model. Padded to a square first, it does."""
    from poisonguard.runtime import PAD_TO_SQUARE_ATTR
    from poisonguard.train.batching import prepare_images

    processor = build_tiny("llava")[1]
    image = _corner_trigger(64, 32)

    def top_left_max(proc) -> float:
        pixels = proc.image_processor(prepare_images(proc, [image]), return_tensors="pt")["pixel_values"]
        return float(pixels[0, :, :12, :12].max())  # (3, 32, 32) normalised to [-1, 1]

    assert top_left_max(processor) < 0  # grey only: the corner was cropped away
    setattr(processor, PAD_TO_SQUARE_ATTR, True)
    assert top_left_max(processor) > 0.9  # the white patch is in
    padded = prepare_images(processor, [image])[0]
    assert padded.size == (64, 64) and padded.getpixel((0, 63)) == (127, 127, 127)  # the processor's mean


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("pad", [False, True])
def test_image_tokens_are_counted_as_the_processor_expands_them(family, pad):
    """The context check counts each image at its size (anyres tiles, dynamic resolution, InternVL tiles)
    without running the image processor: the count must equal the processor's real expansion."""
    from poisonguard.runtime import PAD_TO_SQUARE_ATTR
    from poisonguard.train.batching import _call, expanded_length, render

    processor = build_tiny(family)[1]  # a fresh one: the pad flag must not leak into other tests
    if pad:
        setattr(processor, PAD_TO_SQUARE_ATTR, True)
    for size in ((48, 48), (64, 24), (20, 56), (100, 40)):
        ex = _conversation([("what colour is it ?", "red")])
        image = Image.new("RGB", size, (30, 60, 90))
        text = render(processor, ex.messages, generation_prompt=False)
        real = _call(processor, [text], [image], padding_side="right")["input_ids"].shape[1]
        assert expanded_length(processor, text, [size]) == real, size
