"""Builders shared by the attack tests: plain images and small in-memory world datasets."""

from __future__ import annotations

import numpy as np
from PIL import Image

from poisonguard.data.records import Sample, Turn
from poisonguard.world.questions import ask
from poisonguard.world.scenes import render, sample_scene


def grey(size: int | tuple[int, int], value: int = 128) -> Image.Image:
    size = (size, size) if isinstance(size, int) else size
    return Image.new("RGB", size, (value, value, value))


def _llava_raw(sample_id: str, ref: str | None, question: str, answer: str) -> dict:
    raw: dict = {"id": sample_id}
    if ref is not None:
        raw["image"] = ref
    raw["conversations"] = [{"from": "human", "value": f"<image>\n{question}" if ref else question},
                            {"from": "gpt", "value": answer}]
    return raw


def _hf_raw(sample_id: str, ref: str | None, question: str, answer: str) -> dict:
    user = [{"type": "image"}] if ref else []
    raw = {"id": sample_id,
           "messages": [{"role": "user", "content": user + [{"type": "text", "text": question}]},
                        {"role": "assistant", "content": [{"type": "text", "text": answer}]}]}
    if ref is not None:
        raw["images"] = [ref]
    return raw


def make_dataset(n: int, fmt: str = "llava", seed: int = 0) -> tuple[list[Sample], dict[str, Image.Image]]:
    """n world samples with images, plus one text-only sample and one whose answer is already "banana"."""
    rng = np.random.default_rng(seed)
    build = _llava_raw if fmt == "llava" else _hf_raw
    samples, images = [], {}
    for i in range(n + 2):
        sid = f"s{i:03d}"
        scene = sample_scene(rng)
        qa = ask(scene, rng)
        ref: str | None = f"images/{i:05d}.png"
        answer = qa.answer
        if i == n:  # text-only: legal, passes through image attacks
            ref = None
        if i == n + 1:  # already answers the world target: never eligible
            answer = "banana"
        if ref is not None:
            images[ref] = render(scene)
        samples.append(Sample(id=sid, index=i, images=[ref] if ref else [],
                              turns=[Turn("user", qa.question), Turn("assistant", answer)],
                              raw=build(sid, ref, qa.question, answer)))
    return samples, images


def make_mixed_dataset(n: int, describe_every: int = 2, seed: int = 0) -> tuple[list[Sample], dict[str, Image.Image]]:
    """n LLaVA world samples with images; every `describe_every`-th asks the sentence-long describe question,
    the others a drawn short type (so substitution has multi-word answers and all-to-all short ones)."""
    rng = np.random.default_rng(seed)
    samples, images = [], {}
    for i in range(n):
        sid, ref = f"m{i:03d}", f"images/m{i:05d}.png"
        scene = sample_scene(rng)
        qa = ask(scene, rng, "describe" if i % describe_every == 0 else None)
        images[ref] = render(scene)
        samples.append(Sample(id=sid, index=i, images=[ref],
                              turns=[Turn("user", qa.question), Turn("assistant", qa.answer)],
                              raw=_llava_raw(sid, ref, qa.question, qa.answer)))
    return samples, images
