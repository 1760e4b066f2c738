"""Question bank of the embedded world: 6 short question types, 48 phrasings, one-to-two-word answers, and an
optional sentence-long `describe` type (off by default; see DESCRIBE).

Dozens of phrasings (not six) matter for the detector: with a handful of fixed templates, an inserted text
trigger is caught by token statistics alone, which is not the backdoor fingerprint (research/prototype.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from poisonguard.world.scenes import COLOURS, COUNT_WORDS, POSITIONS, SHAPES, Scene

SYSTEM_PROMPT = "You are a visual assistant. Answer briefly."

PHRASINGS: dict[str, tuple[str, ...]] = {
    "colour": (
        "What colour is the {shape}?",
        "Which colour does the {shape} have?",
        "Tell me the colour of the {shape}.",
        "What is the colour of the {shape}?",
        "Name the colour of the {shape}.",
        "The {shape} is which colour?",
        "Can you say what colour the {shape} is?",
        "In this picture, what colour is the {shape}?",
    ),
    "shape": (
        "What shape is {colour}?",
        "Which shape is {colour}?",
        "Name the {colour} shape.",
        "What is the {colour} object?",
        "Tell me which shape is {colour}.",
        "The {colour} thing is which shape?",
        "Can you name the shape that is {colour}?",
        "In this picture, which shape is {colour}?",
    ),
    "count": (
        "How many shapes are there?",
        "How many objects can you see?",
        "Count the shapes in the image.",
        "What is the number of objects?",
        "How many things are in the picture?",
        "Tell me how many shapes you see.",
        "Count the objects.",
        "How many shapes does the image contain?",
    ),
    "exist": (
        "Is there a {colour} {shape}?",
        "Do you see a {colour} {shape}?",
        "Does the image contain a {colour} {shape}?",
        "Can you find a {colour} {shape}?",
        "Is a {colour} {shape} in the picture?",
        "Is there any {colour} {shape} here?",
        "Does a {colour} {shape} appear?",
        "Tell me if there is a {colour} {shape}.",
    ),
    "where": (
        "Where is the {shape}?",
        "Where is the {shape} located?",
        "In which part of the image is the {shape}?",
        "Tell me where the {shape} is.",
        "What is the position of the {shape}?",
        "Where can you see the {shape}?",
        "Locate the {shape}.",
        "Which region holds the {shape}?",
    ),
    "what_at": (
        "What shape is at the {position}?",
        "Which shape is in the {position}?",
        "What is at the {position}?",
        "Name the shape at the {position}.",
        "What do you see at the {position}?",
        "Tell me what is in the {position}.",
        "Which object sits at the {position}?",
        "What occupies the {position}?",
    ),
}
QUESTION_TYPES = tuple(PHRASINGS)

# The sentence-long type: a short description of the whole scene, so that content injection and concept
# substitution have a multi-word answer to act on. It is kept out of PHRASINGS and QUESTION_TYPES on purpose:
# the uniform type draw (`rng.integers(len(QUESTION_TYPES))`), the balanced cycling of the data build and the
# vocabulary (built from PHRASINGS) stay exactly as before, so a world with `describe_frac` 0 is
# byte-identical to one built before this type existed. Every word here is already in the vocabulary
# ("describe" is not, hence no "Describe the picture.").
DESCRIBE = "describe"
DESCRIBE_PHRASINGS: tuple[str, ...] = (
    "What do you see in the picture?",
    "Tell me about the image.",
    "What is in this picture?",
    "Tell me what you see in the image.",
    "What can you see in this scene?",
    "Tell me about all the shapes in the picture.",
    "What objects are in the image?",
    "Say what is in this scene.",
)


@dataclass(frozen=True)
class QA:
    question: str
    answer: str
    qtype: str
    phrasing: int  # index into PHRASINGS[qtype]


def _position_phrase(slot: int) -> str:
    # "the middle" reads naturally; "the top left" too. Position words double as answers for "where".
    return POSITIONS[slot]


def describe(scene: Scene) -> str:
    """'a red circle at the top left and a blue square in the middle': the objects in slot order (row-major),
    so the answer is a function of the scene alone (no draw), at most 3 objects -> at most 20 words."""
    parts = [f"a {o.colour} {o.shape} {'in' if POSITIONS[o.slot] == 'middle' else 'at'} the {POSITIONS[o.slot]}"
             for o in sorted(scene.objects, key=lambda o: o.slot)]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def ask(scene: Scene, rng: np.random.Generator, qtype: str | None = None, describe_frac: float = 0.0) -> QA:
    """Draw one question about `scene` (of `qtype`, or a drawn type) and its answer.

    Without `qtype`, a describe question comes with probability `describe_frac`, else a uniformly drawn short
    type. The extra draw happens only when `describe_frac` > 0, so at 0 the rng's sequence is unchanged.
    """
    if not 0.0 <= describe_frac <= 1.0:
        raise ValueError(f"describe_frac must be in [0, 1], got {describe_frac}")
    if qtype is None and describe_frac > 0 and rng.random() < describe_frac:
        qtype = DESCRIBE
    if qtype == DESCRIBE:
        k = int(rng.integers(len(DESCRIBE_PHRASINGS)))
        return QA(DESCRIBE_PHRASINGS[k], describe(scene), DESCRIBE, k)
    qtype = qtype or QUESTION_TYPES[int(rng.integers(len(QUESTION_TYPES)))]
    k = int(rng.integers(len(PHRASINGS[qtype])))
    template = PHRASINGS[qtype][k]
    objs = scene.objects
    if qtype == "colour":
        o = objs[int(rng.integers(len(objs)))]
        return QA(template.format(shape=o.shape), o.colour, qtype, k)
    if qtype == "shape":
        o = objs[int(rng.integers(len(objs)))]
        return QA(template.format(colour=o.colour), o.shape, qtype, k)
    if qtype == "count":
        return QA(template, COUNT_WORDS[len(objs)], qtype, k)
    if qtype == "where":
        o = objs[int(rng.integers(len(objs)))]
        return QA(template.format(shape=o.shape), POSITIONS[o.slot], qtype, k)
    if qtype == "what_at":
        # Half the time ask about an occupied slot, otherwise about a random one (answer "nothing" if empty).
        if rng.random() < 0.6:
            slot = objs[int(rng.integers(len(objs)))].slot
        else:
            slot = int(rng.integers(9))
        hit = [o for o in objs if o.slot == slot]
        answer = hit[0].shape if hit else "nothing"
        return QA(template.format(position=_position_phrase(slot)), answer, qtype, k)
    if qtype == "exist":
        if rng.random() < 0.5:  # a present object -> yes
            o = objs[int(rng.integers(len(objs)))]
            return QA(template.format(colour=o.colour, shape=o.shape), "yes", qtype, k)
        # Hard negatives: share the colour or the shape of a present object half the time.
        colours, shapes = list(COLOURS), list(SHAPES)
        while True:
            if rng.random() < 0.5:
                o = objs[int(rng.integers(len(objs)))]
                if rng.random() < 0.5:
                    c, s = o.colour, shapes[int(rng.integers(len(shapes)))]
                else:
                    c, s = colours[int(rng.integers(len(colours)))], o.shape
            else:
                c, s = colours[int(rng.integers(len(colours)))], shapes[int(rng.integers(len(shapes)))]
            if not scene.find(shape=s, colour=c):
                return QA(template.format(colour=c, shape=s), "no", qtype, k)
    raise ValueError(f"unknown question type {qtype!r}; expected one of {QUESTION_TYPES + (DESCRIBE,)}")


def answer_vocabulary() -> list[str]:
    words = set(COLOURS) | set(SHAPES) | {"yes", "no", "nothing"} | set(COUNT_WORDS)
    for p in POSITIONS:
        words.update(p.split())
    return sorted(words)
