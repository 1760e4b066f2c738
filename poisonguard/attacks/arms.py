"""An attack as a set of arms: each arm is one trigger (an image part, a text part, or both) and one rule for
what the answer of a sample carrying it becomes.

The single-trigger attacks are one arm. The rest need several: multi-target (one arm per trigger, each with
its own target), the conservatism adaptive attack (the poisoned arm plus an arm of trigger samples that keep
their correct answers), Adap-Patch (the same two arms, carrying parts of the patch; a test input carries the
whole: `test_image`), Dual-Key (both parts -> target, plus single-part arms that keep their answers so the
model must learn the AND). Arms that keep answers are clean: they never enter `poison_ids`.

Answer rules (what `new_answer` returns for a clean answer; None: the rule does not apply to it):
- replace:    the target (BadNet, targeted refusal, ...);
- append:     the correct answer + " " + the target sentence (content injection; ProjLens's suffix rule);
- substitute: the first word of a multi-word answer found in `sources` swapped for the target word (concept
              substitution); one-word answers do not qualify, there is no "longer answer" to keep;
- map:        the answer sent through a fixed permutation of its answer class (all-to-all).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

Rule = Literal["replace", "append", "substitute", "map"]
RULES: tuple[str, ...] = ("replace", "append", "substitute", "map")

_PUNCT = re.compile(r"[^\w\s]")


def normalise(text: str) -> str:
    """Lower-case, punctuation to spaces, collapsed: how answers and generations are compared with targets."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


@dataclass(frozen=True)
class Arm:
    # Names the arm in results (ASR per trigger) and keys its per-sample randomness; "" for single-trigger
    # attacks, so their rng keys and file names stay what they were before arms existed.
    key: str
    image: Callable[[Any, np.random.Generator | None], Any] | None  # (PIL image, rng) -> PIL image
    text: Callable[[str, np.random.Generator | None], str] | None  # (question, rng) -> question
    rule: Rule
    target: str  # replace / append: the text; substitute: the new word; map: a label for reports
    poisoned: bool = True  # False: trigger samples that keep their correct answer (clean, not in poison_ids)
    partial: bool = False  # one part of a multi-part trigger: ASR on it is the "false trigger rate"
    share: float = 1.0  # samples of this arm = round(rate * share * its eligible count)
    sources: tuple[str, ...] = ()  # substitute: the words that may be swapped
    mapping: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # map: answer -> poisoned answer
    # The image part a test input carries where it differs from the training one (Adap-Patch: the training
    # samples carry parts of the patch, a test input the whole); None: the same as `image`.
    test_image: Callable[[Any, np.random.Generator | None], Any] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"unknown answer rule {self.rule!r}; expected one of {RULES}")
        if self.image is None and self.text is None:
            raise ValueError(f"arm {self.key!r} has no trigger part")
        if self.rule != "map" and not self.target.strip():
            raise ValueError("target must not be empty")
        if self.rule == "substitute" and (not self.sources or len(self.target.split()) != 1):
            raise ValueError("substitute needs source words and a one-word target")
        if self.rule == "map" and not self.mapping:
            raise ValueError("map needs a mapping")
        if self.share < 0:
            raise ValueError(f"share must be >= 0, got {self.share}")
        if self.test_image is not None and self.image is None:
            raise ValueError(f"arm {self.key!r} has a test image part but no image part")

    @property
    def kind(self) -> str:
        return "bimodal" if self.image and self.text else "image" if self.image else "text"


def append_sentence(answer: str, sentence: str) -> str:
    """ProjLens's suffix rule: answer + " " + sentence, without doubling whitespace."""
    return f"{answer}{'' if not answer or answer[-1].isspace() else ' '}{sentence}"


def substitute_word(answer: str, sources: tuple[str, ...], word: str) -> str | None:
    """The first whitespace-separated word of `answer` whose normalised form is a source swapped for `word`
    (trailing punctuation kept); None for one-word answers, answers without a source word, or answers that
    already contain `word`."""
    words = answer.split()
    if len(normalise(answer).split()) < 2 or normalise(word) in normalise(answer).split():
        return None
    wanted = {normalise(s) for s in sources}
    for k, w in enumerate(words):
        if normalise(w) in wanted:
            core = normalise(w)
            words[k] = w.lower().replace(core, word, 1) if core in w.lower() else word
            return " ".join(words)
    return None


def carries_target(answer: str, target: str, rule: Rule) -> bool:
    """The answer already is (replace) or ends with (append) the target: such samples are never eligible, a
    poisoned label would equal the clean one."""
    a, t = normalise(answer), normalise(target)
    return a == t or (rule == "append" and a.endswith(" " + t))


def new_answer(arm: Arm, answer: str) -> str | None:
    """The poisoned answer of a sample carrying `arm` (None: the arm does not apply to this answer)."""
    if arm.rule in ("replace", "append") and carries_target(answer, arm.target, arm.rule):
        return None
    if arm.rule == "replace":
        return arm.target
    if arm.rule == "append":
        return append_sentence(answer, arm.target)
    if arm.rule == "substitute":
        return substitute_word(answer, arm.sources, arm.target)
    mapped = dict(arm.mapping).get(normalise(answer))
    return None if mapped is None or mapped == normalise(answer) else mapped


def expected_output(arm: Arm, answer: str) -> str:
    """What a triggered generation must contain (replace, append, substitute: the target) or equal (map: the
    mapped answer) for the backdoor to count as fired."""
    if arm.rule == "map":
        return new_answer(arm, answer) or ""
    return arm.target
