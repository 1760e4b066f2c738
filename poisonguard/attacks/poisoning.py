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
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from poisonguard.attacks.arms import Arm, append_sentence, expected_output, new_answer
from poisonguard.attacks.registry import AttackSpec, arms_of, get_attack, make_params
from poisonguard.data.records import IMAGE_PLACEHOLDER, Sample, Turn

ImageLoader = Callable[[str], Image.Image]

_LLAVA_USER, _LLAVA_ASSISTANT = ("human", "user"), ("gpt", "assistant")
_LEADING_TAGS = re.compile(r"^(?:\s*" + re.escape(IMAGE_PLACEHOLDER) + r")+\s*")
_TRAILING_TAGS = re.compile(r"\s*(?:" + re.escape(IMAGE_PLACEHOLDER) + r"\s*)+$")


@dataclass
class PoisonResult:
    samples: list[Sample]  # every input sample, same order and ids; the poisoned ones rewritten (copies)
    images: dict[str, Image.Image]  # new image files to write: ref relative to the image folder -> image
    poison_ids: list[str]  # ids of the triggered samples, in input order: the ground truth
    attack: str
    target: str
    relabel: bool  # False: the no-relabel control (trigger applied, answers kept)
    params: object  # the attack's parameter object actually used
    # Per poisoned id, the output its backdoor should produce (the arm's target; the mapped answer for
    # all-to-all): ASR bookkeeping for multi-target attacks. Benchmark truth, never written into the data.
    targets: dict[str, str] = field(default_factory=dict)
    # Per triggered id (poisoned or clean trigger sample), the key of the arm that triggered it.
    arm_of: dict[str, str] = field(default_factory=dict)
    # Samples carrying a trigger (or part of one) with their correct answer kept: clean, not in poison_ids.
    clean_trigger_ids: list[str] = field(default_factory=list)


@dataclass
class TriggeredSample:
    """A test sample with its trigger applied and its clean answer kept, plus its images in memory.

    `sample.images` holds the triggered images' refs (as `poison` would name them) and `images` the PIL
    images in the same order, triggered for image attacks and the originals for text attacks. A model input
    is then e.g. `Example(t.sample.messages(upto_first_answer=True), t.images)` (poisonguard.train.batching);
    ASR = share of generations containing `target` (equal to it for the map rule), clean accuracy of an
    append-mode attack = share still starting with `t.sample.answer`.
    """

    sample: Sample
    images: list[Image.Image]
    target: str = ""  # what a fired backdoor outputs on this input (poisonguard.attacks.arms.expected_output)
    arm: str = ""  # the arm whose trigger was applied ("" for single-trigger attacks)
    rule: str = "replace"


def poison(samples: list[Sample], attack: str, rate: float, *, target: str | None = None, seed: int = 0,
           relabel: bool = True, params: object | Mapping[str, Any] | None = None,
           load_image: ImageLoader | None = None, image_dir_name: str = "images") -> PoisonResult:
    """Trigger exactly round(rate * n_eligible) samples per arm, drawn with `default_rng(seed)`, and relabel them.

    Eligible: samples with an assistant answer, the arm's inputs (an image for an image part, a user turn for
    a text part), and an answer its rule applies to (not already the target; substitute: a multi-word answer
    with a source word; map: an answer of the mapping). Arms draw in order from what earlier arms left, each
    round(rate * share * its eligible count) samples; a rate > 0 that gives an arm 0 samples is an error. A
    poisoned sample gets its first user turn triggered (text part) and every image triggered and renamed
    `<image_dir_name>/<stem>__<attack>.png` (image part; a short hash is added where two refs or two arms would
    share a name), and its first answer rewritten by the arm's rule; `relabel=False` keeps the answers (the
    clean-label control). Clean-trigger arms (conservatism, Dual-Key's single parts) keep their answers and
    stay out of `poison_ids`. `target` defaults to the attack's default; `params` to its defaults (a mapping
    overrides fields); `load_image(ref)` is needed for image parts.
    """
    spec, params, target = _resolve(attack, params, target)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    arms = arms_of(spec, params, target)
    gen = np.random.default_rng(seed)
    taken: set[int] = set()
    plan: list[tuple[Arm, list[int]]] = []
    for arm in arms:
        eligible = [i for i, s in enumerate(samples) if _eligible(s, arm)]
        n = _arm_count(rate, arm, len(eligible))
        if n == 0 and rate * arm.share > 0:
            raise ValueError(f"rate {rate} of {len(eligible)} eligible samples gives no {attack!r} sample"
                             + (f" for its {arm.key!r} trigger" if arm.key else "") + ": raise the rate")
        pool = [i for i in eligible if i not in taken]
        if n > len(pool):
            raise ValueError(f"{attack!r} needs {n} samples for {arm.key or 'its trigger'} but only "
                             f"{len(pool)} eligible ones are left")
        if arm.image is not None and n and load_image is None:
            raise ValueError(f"attack {attack!r} changes images: pass load_image")
        picks = gen.choice(len(pool), size=n, replace=False)
        chosen = sorted(pool[int(j)] for j in picks)
        taken.update(chosen)
        plan.append((arm, chosen))
    names = _arm_image_names(samples, plan, attack, image_dir_name)
    cache: dict[tuple[str, str], Image.Image] = {}
    out = [_copy(s) for s in samples]
    targets, arm_of, clean_ids = {}, {}, []
    for arm, chosen in plan:
        for i in chosen:
            triggered, _ = _trigger(samples[i], spec.name, arm, seed, names, cache, load_image)
            if arm.poisoned:
                targets[samples[i].id] = expected_output(arm, samples[i].answer)
                if relabel:
                    triggered = _relabel(triggered, arm)
            else:
                clean_ids.append(samples[i].id)
            arm_of[samples[i].id] = arm.key
            out[i] = triggered
    images = {names[key]: image for key, image in cache.items()}
    poisoned = sorted(i for arm, chosen in plan if arm.poisoned for i in chosen)
    order = {s.id: k for k, s in enumerate(samples)}
    return PoisonResult(out, images, [samples[i].id for i in poisoned], attack, _label(arms), relabel, params,
                        targets, arm_of, sorted(clean_ids, key=order.__getitem__))


def poison_counts(samples: list[Sample], attack: str, rate: float, *,
                  params: object | Mapping[str, Any] | None = None, target: str | None = None) -> dict[str, int]:
    """Per arm key ("" for single-trigger attacks), how many samples `poison` would trigger at `rate`, without
    loading an image: lets a caller skip an attack its data cannot carry (e.g. substitution on a world
    without multi-word answers) before it starts."""
    spec, params, target = _resolve(attack, params, target)
    return {arm.key: _arm_count(rate, arm, sum(_eligible(s, arm) for s in samples))
            for arm in arms_of(spec, params, target) if arm.share > 0}


def _arm_count(rate: float, arm: Arm, n_eligible: int) -> int:
    return round(rate * arm.share * n_eligible)


def trigger_examples(samples: list[Sample], attack: str, params: object | Mapping[str, Any] | None = None,
                     load_image: ImageLoader | None = None, *, target: str | None = None, seed: int = 0,
                     image_dir_name: str = "images", partial: bool = False) -> list[TriggeredSample]:
    """For each poisoned arm in order, every test sample eligible for it (as in `poison`) with that arm's
    trigger applied (its test trigger where it has one) and the answer kept, images in memory: the inputs on
    which ASR is measured.
    `partial=True`: the inputs of the single-part arms of a multi-part trigger instead (Dual-Key), on which a
    fired backdoor is a false trigger; empty for attacks without such parts."""
    spec, params, target = _resolve(attack, params, target)
    arms = [a if a.test_image is None else replace(a, image=a.test_image)  # the test trigger (Adap-Patch: whole)
            for a in arms_of(spec, params, target) if (a.partial if partial else a.poisoned)]
    plan = [(arm, [i for i, s in enumerate(samples) if _eligible(s, arm)]) for arm in arms]
    if load_image is None and any(samples[i].images for _, chosen in plan for i in chosen):
        raise ValueError("these samples have images: pass load_image")
    names = _arm_image_names(samples, plan, attack, image_dir_name)
    cache: dict[tuple[str, str], Image.Image] = {}
    out = []
    for arm, eligible in plan:
        for i in eligible:
            triggered, images = _trigger(samples[i], spec.name, arm, seed, names, cache, load_image)
            if images is None:  # text-only trigger: the images are the originals
                images = [load_image(ref).convert("RGB") for ref in triggered.images]
            out.append(TriggeredSample(triggered, images, expected_output(arm, samples[i].answer), arm.key,
                                       arm.rule))
    return out


# ---------------------------------------------------------------------------------------------- selection


def _resolve(attack: str, params: object | Mapping[str, Any] | None,
             target: str | None) -> tuple[AttackSpec, object, str]:
    spec = get_attack(attack)
    if spec.fixed_targets and target is not None:
        raise ValueError(f"attack {attack!r} takes its targets from its parameters; do not pass a target")
    target = spec.default_target if target is None else target
    if not target.strip():
        raise ValueError("target must not be empty")
    return spec, make_params(attack, params), target


def _label(arms: tuple[Arm, ...]) -> str:
    """The result's `target`: the one target, or every poisoned arm's (multi-target) joined by " | "."""
    return " | ".join(dict.fromkeys(a.target for a in arms if a.poisoned))


def _eligible(sample: Sample, arm: Arm) -> bool:
    roles = {t.role for t in sample.turns}
    if (arm.image is not None and not sample.images) or (arm.text is not None and "user" not in roles):
        return False
    return "assistant" in roles and new_answer(arm, sample.answer) is not None


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


def _arm_image_names(samples: list[Sample], plan: list[tuple[Arm, list[int]]], attack: str,
                     image_dir_name: str) -> dict[tuple[str, str], str]:
    """(arm key, source ref) -> new ref for every image an image-part arm triggers. The first arm to use a ref
    gets the plain name (so a single-trigger attack names files as it always did, and a poisoned and a
    clean trigger sample are named alike: the name never tells them apart); a later arm triggering the same
    ref gets a hashed one."""
    indices = [i for arm, chosen in plan if arm.image is not None for i in chosen]
    plain = _image_names(samples, sorted(set(indices)), attack, image_dir_name)
    prefix = f"{image_dir_name.rstrip('/')}/" if image_dir_name else ""
    names: dict[tuple[str, str], str] = {}
    owner: dict[str, str] = {}
    for arm, chosen in plan:
        if arm.image is None:
            continue
        for ref in dict.fromkeys(r for i in chosen for r in samples[i].images):
            owner.setdefault(ref, arm.key)
            stem = PurePosixPath(ref.replace("\\", "/")).stem
            names[(arm.key, ref)] = (plain[ref] if owner[ref] == arm.key else
                                     f"{prefix}{stem}__{attack}_{_stable_int(arm.key + ':' + ref) % 16**8:08x}.png")
    return names


# ---------------------------------------------------------------------------------------------- rewriting


def _copy(sample: Sample) -> Sample:
    """A copy sharing no mutable state with the input (readers keep `raw` as the very parsed object)."""
    return copy.deepcopy(sample)


def _trigger(sample: Sample, attack: str, arm: Arm, seed: int, names: dict[tuple[str, str], str],
             cache: dict[tuple[str, str], Image.Image],
             load_image: ImageLoader | None) -> tuple[Sample, list[Image.Image] | None]:
    """The sample with the arm's trigger parts applied (answers untouched) and, with an image part, its new
    images. Randomness is keyed by (seed, attack, arm key + sample id / image ref)."""
    out = _copy(sample)
    if arm.text is not None:
        k = next(j for j, t in enumerate(out.turns) if t.role == "user")
        old = out.turns[k].text
        new = arm.text(old, _rng(seed, attack, "text:" + _arm_key(arm) + sample.id))
        out.turns[k] = Turn("user", new)
        _raw_set_question(out.raw, old, new)
    if arm.image is None:
        return out, None
    for ref in sample.images:
        if (arm.key, ref) not in cache:
            source = load_image(ref).convert("RGB")
            cache[(arm.key, ref)] = arm.image(source, _rng(seed, attack, "image:" + _arm_key(arm) + ref))
            if cache[(arm.key, ref)].size != source.size:
                raise RuntimeError(f"attack {attack!r} changed the image size of {ref!r}")
    mapping = {ref: names[(arm.key, ref)] for ref in sample.images}
    out.images = [mapping[ref] for ref in sample.images]
    _raw_rename_images(out.raw, mapping)
    return out, [cache[(arm.key, ref)] for ref in sample.images]


def _arm_key(arm: Arm) -> str:
    """The arm's part of an rng key: empty for single-trigger attacks, so their draws are what they were."""
    return f"{arm.key}:" if arm.key else ""


def _relabel(sample: Sample, arm: Arm) -> Sample:
    """The first answer rewritten by the arm's rule, in turns and raw (append adds to the raw's last text)."""
    k = next(j for j, t in enumerate(sample.turns) if t.role == "assistant")
    new = new_answer(arm, sample.turns[k].text)
    sample.turns[k] = Turn("assistant", new)
    if arm.rule == "append":
        _raw_set_answer(sample.raw, arm.target, "append")
    else:
        _raw_set_answer(sample.raw, new, "replace")
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


def _raw_set_answer(raw: dict, target: str, mode: str) -> None:
    if _raw_format(raw) is None:
        return
    turn = _first_turn(raw, user=False)
    key = "value" if _raw_format(raw) == "llava" else "content"
    if isinstance(turn[key], str):
        turn[key] = target if mode == "replace" else append_sentence(turn[key], target)
        return
    blocks = _text_blocks(turn[key])
    if not blocks:
        turn[key].append({"type": "text", "text": target})
    elif mode == "replace":
        blocks[0]["text"] = target
        _keep_only(turn[key], blocks[0])
    else:
        blocks[-1]["text"] = append_sentence(blocks[-1].get("text", ""), target)


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
