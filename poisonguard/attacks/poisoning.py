"""Poison a dataset with one attack, and build triggered test inputs for ASR.

Both keep a sample's `raw` object in step with its record, so a format writer that writes from `raw` writes
the poisoned content, and neither leaves any marker in the data (ground truth is only `poison_ids`).

Randomness is split so that each piece is reproducible on its own: the choice of samples comes from
`default_rng(seed)`; a per-image draw (random patch position, fresh noise) from a generator keyed by
(seed, attack, image ref), so an image shared by several samples gets one triggered version; a per-question
draw (a clause from a pool) from one keyed by (seed, attack, sample id).
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from poisonguard.attacks.registry import AttackSpec, OutputMode, get_attack, make_params
from poisonguard.data.records import IMAGE_PLACEHOLDER, Sample, Turn

ImageLoader = Callable[[str], Image.Image]

_LLAVA_USER, _LLAVA_ASSISTANT = ("human", "user"), ("gpt", "assistant")
_LEADING_TAGS = re.compile(r"^(?:\s*" + re.escape(IMAGE_PLACEHOLDER) + r")+\s*")
_TRAILING_TAGS = re.compile(r"\s*(?:" + re.escape(IMAGE_PLACEHOLDER) + r"\s*)+$")
_PUNCT = re.compile(r"[^\w\s]")


@dataclass
class PoisonResult:
    samples: list[Sample]  # every input sample, same order and ids; the poisoned ones rewritten (copies)
    images: dict[str, Image.Image]  # new image files to write: ref relative to the image folder -> image
    poison_ids: list[str]  # ids of the triggered samples, in input order: the ground truth
    attack: str
    target: str
    relabel: bool  # False: the no-relabel control (trigger applied, answers kept)
    params: object  # the attack's parameter object actually used


@dataclass
class TriggeredSample:
    """A test sample with its trigger applied and its clean answer kept, plus its images in memory.

    `sample.images` holds the triggered images' refs (as `poison` would name them) and `images` the PIL
    images in the same order, triggered for image attacks and the originals for text attacks. A model input
    is then e.g. `Example(t.sample.messages(upto_first_answer=True), t.images)` (poisonguard.train.batching);
    ASR = share of generations containing the target, clean accuracy of an append-mode attack = share still
    starting with `t.sample.answer`.
    """

    sample: Sample
    images: list[Image.Image]


def poison(samples: list[Sample], attack: str, rate: float, *, target: str | None = None, seed: int = 0,
           relabel: bool = True, params: object | Mapping[str, Any] | None = None,
           load_image: ImageLoader | None = None, image_dir_name: str = "images") -> PoisonResult:
    """Trigger exactly round(rate * n_eligible) samples drawn with `default_rng(seed)` and relabel them.

    Eligible: samples with an assistant answer and an image (image attacks) or a user turn (text attacks),
    whose answer does not already carry the target. A poisoned sample gets its first user turn triggered
    (text) or every image triggered and renamed `<image_dir_name>/<stem>__<attack>.png` (image; a short hash
    of the ref is added where two refs would share a name), and its first answer replaced by the target, or
    the target appended for append-mode attacks; `relabel=False` keeps the answers (the clean-label control).
    `target` defaults to the attack's default; `params` to its defaults (a mapping overrides fields);
    `load_image(ref)` is needed for image attacks.
    """
    spec, params, target = _resolve(attack, params, target)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    eligible = [i for i, s in enumerate(samples) if _eligible(s, spec, target)]
    n_poison = round(rate * len(eligible))
    if spec.kind == "image" and n_poison and load_image is None:
        raise ValueError(f"attack {attack!r} changes images: pass load_image")
    picks = np.random.default_rng(seed).choice(len(eligible), size=n_poison, replace=False)
    chosen = sorted(eligible[int(j)] for j in picks)
    names = _image_names(samples, chosen, attack, image_dir_name) if spec.kind == "image" else {}
    cache: dict[str, Image.Image] = {}
    out = [_copy(s) for s in samples]
    for i in chosen:
        triggered, _ = _trigger(samples[i], spec, params, seed, names, cache, load_image)
        out[i] = _relabel(triggered, target, spec.output_mode) if relabel else triggered
    images = {names[ref]: image for ref, image in cache.items()}
    return PoisonResult(out, images, [samples[i].id for i in chosen], attack, target, relabel, params)


def trigger_examples(samples: list[Sample], attack: str, params: object | Mapping[str, Any] | None = None,
                     load_image: ImageLoader | None = None, *, target: str | None = None, seed: int = 0,
                     image_dir_name: str = "images") -> list[TriggeredSample]:
    """Every eligible test sample (as in `poison`: its answer is not already the target) with the trigger
    applied and the answer kept, images in memory. The inputs on which ASR is measured."""
    spec, params, target = _resolve(attack, params, target)
    eligible = [i for i, s in enumerate(samples) if _eligible(s, spec, target)]
    if load_image is None and any(samples[i].images for i in eligible):
        raise ValueError("these samples have images: pass load_image")
    names = _image_names(samples, eligible, attack, image_dir_name) if spec.kind == "image" else {}
    cache: dict[str, Image.Image] = {}
    out = []
    for i in eligible:
        triggered, images = _trigger(samples[i], spec, params, seed, names, cache, load_image)
        if images is None:  # text attack: the images are the originals
            images = [load_image(ref).convert("RGB") for ref in triggered.images]
        out.append(TriggeredSample(triggered, images))
    return out


# ---------------------------------------------------------------------------------------------- selection


def _resolve(attack: str, params: object | Mapping[str, Any] | None,
             target: str | None) -> tuple[AttackSpec, object, str]:
    spec = get_attack(attack)
    target = spec.default_target if target is None else target
    if not target.strip():
        raise ValueError("target must not be empty")
    return spec, make_params(attack, params), target


def _normalise(text: str) -> str:
    """Lower-case, punctuation to spaces, collapsed: how generations are compared with targets."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def _carries_target(answer: str, target: str, mode: OutputMode) -> bool:
    a, t = _normalise(answer), _normalise(target)
    return a == t or (mode == "append" and a.endswith(" " + t))


def _eligible(sample: Sample, spec: AttackSpec, target: str) -> bool:
    roles = {t.role for t in sample.turns}
    has_input = bool(sample.images) if spec.kind == "image" else "user" in roles
    return has_input and "assistant" in roles and not _carries_target(sample.answer, target, spec.output_mode)


def _stable_int(text: str) -> int:
    """A 64-bit integer from a string, identical across processes (unlike hash())."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def _rng(seed: int, attack: str, key: str) -> np.random.Generator:
    return np.random.default_rng([seed, _stable_int(attack), _stable_int(key)])


def _image_names(samples: list[Sample], indices: list[int], attack: str, image_dir_name: str) -> dict[str, str]:
    """Source ref -> new ref for every image of the given samples; unique, and never an existing ref."""
    prefix = f"{image_dir_name.rstrip('/')}/" if image_dir_name else ""
    sources = sorted({ref for i in indices for ref in samples[i].images})
    stems = {ref: PurePosixPath(ref.replace("\\", "/")).stem for ref in sources}
    plain = {ref: f"{prefix}{stems[ref]}__{attack}.png" for ref in sources}
    taken = Counter(plain.values())
    existing = {ref for s in samples for ref in s.images}
    return {ref: name if taken[name] == 1 and name not in existing
            else f"{prefix}{stems[ref]}__{attack}_{_stable_int(ref) % 16**8:08x}.png"
            for ref, name in plain.items()}


# ---------------------------------------------------------------------------------------------- rewriting


def _copy(sample: Sample) -> Sample:
    """A copy sharing no mutable state with the input (readers keep `raw` as the very parsed object)."""
    return copy.deepcopy(sample)


def _trigger(sample: Sample, spec: AttackSpec, params: object, seed: int, names: dict[str, str],
             cache: dict[str, Image.Image],
             load_image: ImageLoader | None) -> tuple[Sample, list[Image.Image] | None]:
    """The sample with its trigger applied (answers untouched) and, for image attacks, its new images."""
    out = _copy(sample)
    if spec.kind == "text":
        k = next(j for j, t in enumerate(out.turns) if t.role == "user")
        old = out.turns[k].text
        new = spec.apply(old, params, _rng(seed, spec.name, "text:" + sample.id))
        out.turns[k] = Turn("user", new)
        _raw_set_question(out.raw, old, new)
        return out, None
    for ref in sample.images:
        if ref not in cache:
            source = load_image(ref).convert("RGB")
            cache[ref] = spec.apply(source, params, _rng(seed, spec.name, "image:" + ref))
            if cache[ref].size != source.size:
                raise RuntimeError(f"attack {spec.name!r} changed the image size of {ref!r}")
    mapping = {ref: names[ref] for ref in sample.images}
    out.images = [mapping[ref] for ref in sample.images]
    _raw_rename_images(out.raw, mapping)
    return out, [cache[ref] for ref in sample.images]


def _append(answer: str, sentence: str) -> str:
    """ProjLens's suffix rule: answer + " " + sentence, without doubling whitespace."""
    return f"{answer}{'' if not answer or answer[-1].isspace() else ' '}{sentence}"


def _relabel(sample: Sample, target: str, mode: OutputMode) -> Sample:
    """The first answer becomes the target (replace) or gets it appended (append), in turns and raw."""
    k = next(j for j, t in enumerate(sample.turns) if t.role == "assistant")
    new = target if mode == "replace" else _append(sample.turns[k].text, target)
    sample.turns[k] = Turn("assistant", new)
    _raw_set_answer(sample.raw, target, mode)
    return sample


def _raw_format(raw: dict) -> str | None:
    if not raw:
        return None  # a record built in code: nothing to keep in step
    if "conversations" in raw:
        return "llava"
    if "messages" in raw:
        return "hf"
    raise ValueError("Sample.raw is neither LLaVA (conversations) nor HF messages (messages); "
                     "it cannot be kept consistent with the poisoned record")


def _first_turn(raw: dict, *, user: bool) -> dict:
    if _raw_format(raw) == "llava":
        roles = _LLAVA_USER if user else _LLAVA_ASSISTANT
        return next(t for t in raw["conversations"] if t.get("from") in roles)
    role = "user" if user else "assistant"
    return next(m for m in raw["messages"] if m.get("role") == role)


def _rewrite_text(value: str, old: str, new: str) -> str:
    """Swap the question inside a raw string while keeping its `<image>` tags where they were.

    The record's text is the raw text without the tags; when it appears verbatim it is replaced in place.
    Otherwise (a reader normalised whitespace) the tags before and after the text stay there and any tag
    inside it moves to the front.
    """
    if old and old in value:
        return value.replace(old, new, 1)
    lead = _LEADING_TAGS.match(value)
    head = lead.group() if lead else ""
    rest = value[len(head):]
    trail = _TRAILING_TAGS.search(rest)
    tail = trail.group() if trail else ""
    inner = rest[:len(rest) - len(tail)].count(IMAGE_PLACEHOLDER)
    head += IMAGE_PLACEHOLDER * inner
    if head and not head[-1].isspace():
        head += "\n"
    return head + new + tail


def _text_blocks(content: list) -> list[dict]:
    return [b for b in content if isinstance(b, dict) and b.get("type") == "text"]


def _keep_only(content: list, block: dict) -> None:
    """Drop every text block of an HF content list but `block` (image blocks stay where they are)."""
    content[:] = [b for b in content if b is block or not (isinstance(b, dict) and b.get("type") == "text")]


def _raw_set_question(raw: dict, old: str, new: str) -> None:
    if _raw_format(raw) is None:
        return
    turn = _first_turn(raw, user=True)
    key = "value" if _raw_format(raw) == "llava" else "content"
    if isinstance(turn[key], str):
        turn[key] = _rewrite_text(turn[key], old, new)
        return
    blocks = _text_blocks(turn[key])
    hit = next((b for b in blocks if old and old in b.get("text", "")), None)
    if hit is not None:
        hit["text"] = hit["text"].replace(old, new, 1)
    elif blocks:
        blocks[0]["text"] = new
        _keep_only(turn[key], blocks[0])
    else:
        turn[key].append({"type": "text", "text": new})


def _raw_set_answer(raw: dict, target: str, mode: OutputMode) -> None:
    if _raw_format(raw) is None:
        return
    turn = _first_turn(raw, user=False)
    key = "value" if _raw_format(raw) == "llava" else "content"
    if isinstance(turn[key], str):
        turn[key] = target if mode == "replace" else _append(turn[key], target)
        return
    blocks = _text_blocks(turn[key])
    if not blocks:
        turn[key].append({"type": "text", "text": target})
    elif mode == "replace":
        blocks[0]["text"] = target
        _keep_only(turn[key], blocks[0])
    else:
        blocks[-1]["text"] = _append(blocks[-1].get("text", ""), target)


def _raw_rename_images(raw: dict, mapping: dict[str, str]) -> None:
    """Point every image reference in raw (LLaVA `image`; HF `images` and image content blocks) to its new ref."""
    fmt = _raw_format(raw)
    if fmt == "llava" and "image" in raw:
        image = raw["image"]
        raw["image"] = [mapping.get(r, r) for r in image] if isinstance(image, list) else mapping.get(image, image)
        return
    if fmt == "hf":
        if "images" in raw:
            raw["images"] = [_renamed(entry, mapping) for entry in raw["images"]]
        for message in raw["messages"]:
            if isinstance(message.get("content"), list):
                message["content"] = [_renamed(b, mapping) if isinstance(b, dict) and b.get("type") == "image"
                                      else b for b in message["content"]]


def _renamed(entry: Any, mapping: dict[str, str]) -> Any:
    """A ref string, or a dict holding it under path / image / url, with the ref mapped."""
    if isinstance(entry, str):
        return mapping.get(entry, entry)
    if isinstance(entry, dict):
        return {k: mapping.get(v, v) if k in ("path", "image", "url") and isinstance(v, str) else v
                for k, v in entry.items()}
    return entry
