"""Turn conversations + images into model inputs with the processor's own chat template.

One code path for every model family: the processor renders `messages` (so each family keeps its own chat
layout and image-token expansion), and the loss covers only assistant turns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

IGNORE_INDEX = -100


@dataclass
class Example:
    """A conversation for a processor: HF `messages` plus its images (PIL), in order of appearance."""

    messages: list[dict]
    images: list[Any]


def render(processor, messages: list[dict], *, generation_prompt: bool) -> str:
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _call(processor, texts: list[str], images: list[Any], padding_side: str) -> dict:
    tok = processor.tokenizer
    old = tok.padding_side
    tok.padding_side = padding_side
    try:
        # Passed explicitly too: some processors (InternVL) default to left padding and override the tokenizer.
        kwargs: dict[str, Any] = {"text": texts, "padding": True, "padding_side": padding_side,
                                  "return_tensors": "pt"}
        if images:
            kwargs["images"] = images
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
