"""Turn conversations + images into model inputs with the processor's own chat template.

One code path for every model family: the processor renders `messages` (so each family keeps its own chat
layout and image-token expansion), and the loss covers only assistant turns. Every image reaches a processor
through `prepare_images` (here and in the projector audit), so an image option such as `pad_to_square`
holds in training, generation, extraction and the audit alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from poisonguard.runtime import PAD_TO_SQUARE_ATTR

IGNORE_INDEX = -100


@dataclass
class Example:
    """A conversation for a processor: HF `messages` plus its images (PIL), in order of appearance."""

    messages: list[dict]
    images: list[Any]


def render(processor, messages: list[dict], *, generation_prompt: bool) -> str:
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def pad_to_square(image, fill: tuple[int, ...]):
    """The image centred on a square canvas of colour `fill` (LLaVA-1.5's `expand2square`).

    Why: a fixed-size processor resizes the short side and centre-crops the long one, so a trigger in a
    corner of a wide image can be cut away before the model sees it; LLaVA-1.5 was trained on padded
    squares, so padding is also what the model expects.
    """
    from PIL import Image

    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), fill)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def pads_to_square(processor) -> bool:
    return bool(getattr(processor, PAD_TO_SQUARE_ATTR, False))


def prepare_images(processor, images: Sequence[Any]) -> list[Any]:
    """Images as the processor must receive them: padded to squares of the processor's mean colour when
    the processor was configured with `pad_to_square` (LLaVA-1.5 pads with its normalisation mean, so the
    border becomes zero after normalisation), else unchanged."""
    if not pads_to_square(processor):
        return list(images)
    fill = tuple(int(m * 255) for m in processor.image_processor.image_mean)
    return [pad_to_square(im, fill) for im in images]


def image_token_count(processor, size: tuple[int, int]) -> int:
    """LM tokens that one image of `size` (width, height) becomes in the processor's output, after
    `prepare_images`: fixed for LLaVA-1.5, tile-dependent for LLaVA-NeXT (anyres) and InternVL, resolution-
    dependent for Qwen2-VL. Read from the processor's own count when it has one, else measured on a blank
    image of that size."""
    width, height = size
    if pads_to_square(processor):
        width = height = max(width, height)
    count = getattr(processor, "_get_num_multimodal_tokens", None)
    if count is not None:
        try:
            return int(count(image_sizes=[(height, width)]).num_image_tokens[0])
        except (AttributeError, KeyError, TypeError, ValueError, NotImplementedError):
            pass  # an older or partial implementation: measure instead
    from PIL import Image

    token = _image_token(processor)
    blank = Image.new("RGB", (width, height))
    expanded = _call(processor, [token], [blank], padding_side="right", prepare=False)["input_ids"].shape[1]
    return int(expanded - len(processor.tokenizer(token)["input_ids"]) + _placeholder_len(processor))


def expanded_length(processor, text: str, image_sizes: Sequence[tuple[int, int]]) -> int:
    """Tokens of a rendered `text` once the processor expands its image placeholders for images of
    `image_sizes` (width, height), without running the image processor on the images."""
    n = len(processor.tokenizer(text)["input_ids"])
    placeholder = _placeholder_len(processor)
    return n + sum(image_token_count(processor, size) - placeholder for size in image_sizes)


def _image_token(processor) -> str:
    return getattr(processor, "image_token", None) or "<image>"


def _placeholder_len(processor) -> int:
    """Tokens of one image placeholder in the rendered text, before the processor expands it."""
    return len(processor.tokenizer(_image_token(processor), add_special_tokens=False)["input_ids"])


def _call(processor, texts: list[str], images: list[Any], padding_side: str, *, prepare: bool = True) -> dict:
    tok = processor.tokenizer
    old = tok.padding_side
    tok.padding_side = padding_side
    try:
        # Passed explicitly too: some processors (InternVL) default to left padding and override the tokenizer.
        kwargs: dict[str, Any] = {"text": texts, "padding": True, "padding_side": padding_side,
                                  "return_tensors": "pt"}
        if images:
            kwargs["images"] = prepare_images(processor, images) if prepare else list(images)
        return dict(processor(**kwargs))
    finally:
        tok.padding_side = old


def encode_prompts(processor, examples: list[Example]) -> dict:
    """Left-padded prompts ending at the generation prompt: position -1 is the decision position."""
    texts = [render(processor, ex.messages, generation_prompt=True) for ex in examples]
    images = [im for ex in examples for im in ex.images]
    return _call(processor, texts, images, padding_side="left")


def encode_for_training(processor, examples: list[Example]) -> dict:
    """Right-padded full conversations with `labels` = token ids on assistant turns, IGNORE_INDEX elsewhere.

    Label spans are measured from the end of each sequence with the tokenizer alone: images sit in user
    turns before the supervised answer, so the processor's image-token expansion (family-specific, and
    resolution-dependent for Qwen2-VL) adds the same count to a prefix and to the full text and cancels.
    Where an image appears after an answer (rare), the sample falls back to a processor call of its prefixes.
    """
    tok = processor.tokenizer
    image_token = getattr(processor, "image_token", None) or "<image>"
    full_texts = [render(processor, ex.messages, generation_prompt=False) for ex in examples]
    batch = _call(processor, full_texts, [im for ex in examples for im in ex.images], padding_side="right")
    lengths = batch["attention_mask"].sum(dim=1).tolist()  # expanded, unpadded length per row
    labels = torch.full_like(batch["input_ids"], IGNORE_INDEX)
    for i, ex in enumerate(examples):
        full = full_texts[i]
        n_full = len(tok(full)["input_ids"])
        spans = []
        for j, m in enumerate(ex.messages):
            if m["role"] != "assistant":
                continue
            before = render(processor, ex.messages[:j], generation_prompt=True)
            # the last turn ends the conversation: its rendering is `full` (saves a template render per sample)
            through = full if j == len(ex.messages) - 1 else render(processor, ex.messages[: j + 1],
                                                                        generation_prompt=False)
            if not full.startswith(before) or image_token in full[len(before):]:
                spans.append(_spans_by_processor(processor, ex, j))
                continue
            n_before = len(tok(before)["input_ids"])
            n_through = n_full if through is full else len(tok(through)["input_ids"])
            tail_after = n_full - n_through
            spans.append((lengths[i] - (n_full - n_before), lengths[i] - tail_after))
        if not spans:
            continue
        for a, b in spans:
            labels[i, a:b] = batch["input_ids"][i, a:b]
    if (labels != IGNORE_INDEX).sum() == 0:
        raise ValueError("no assistant turn in the batch: nothing to train on")
    labels[batch["attention_mask"] == 0] = IGNORE_INDEX
    batch["labels"] = labels
    return batch


def _spans_by_processor(processor, ex: Example, j: int) -> tuple[int, int]:
    """Slow path: expanded lengths of the prefix before and through assistant turn j, with the images."""
    before = render(processor, ex.messages[:j], generation_prompt=True)
    through = render(processor, ex.messages[: j + 1], generation_prompt=False)
    n_img_before = before.count(getattr(processor, "image_token", "<image>"))
    out = []
    for text in (before, through):
        n = text.count(getattr(processor, "image_token", "<image>"))
        enc = _call(processor, [text], ex.images[:n] if n else [], padding_side="right")
        out.append(int(enc["attention_mask"].sum()))
    del n_img_before
    return out[0], out[1]
