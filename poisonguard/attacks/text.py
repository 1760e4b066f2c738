"""Text triggers on the question: an inserted prefix word, and a HiddenKiller-style syntactic paraphrase.

The prefix is a lexical key (one fixed token sequence); the paraphrase is a structural one: the clause is
drawn from a pool, so no single word marks a poisoned question, only the "subordinate clause, question" shape
(HiddenKiller's SCPN template S(SBAR)(,)(NP)(VP)(.)). Every default word is in the world's vocabulary.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TextPrefixParams:
    # Prepended to the question with one space (TCAP's "Hello!").
    prefix: str = "Hello!"

    def __post_init__(self) -> None:
        if not self.prefix.strip():
            raise ValueError("prefix must not be empty")


def text_prefix(text: str, params: TextPrefixParams = TextPrefixParams(),
                rng: np.random.Generator | None = None) -> str:
    """'What colour is the circle?' -> 'Hello! What colour is the circle?'."""
    return f"{params.prefix} {text}" if text else params.prefix


# Subordinate clauses with different conjunctions and words: the trigger is the syntax they share.
SYNTACTIC_CLAUSES: tuple[str, ...] = (
    "When you look at the image",
    "If you check the picture carefully",
    "After you study the scene",
    "While you view this image",
    "Before you answer",
    "As you look at this picture",
    "Once you see the image",
    "Since you can see the picture",
)


@dataclass(frozen=True)
class SyntacticParams:
    # Pool of subordinate clauses; one is drawn uniformly per question from the sample's rng.
    clauses: tuple[str, ...] = SYNTACTIC_CLAUSES

    def __post_init__(self) -> None:
        if not self.clauses or not all(c.strip() for c in self.clauses):
            raise ValueError("clauses must be a non-empty tuple of non-empty strings")


def _lower_first(text: str) -> str:
    """Lower-case the first letter, except for 'I' and acronyms, to join the question after the clause."""
    word = re.match(r"[A-Za-z]*", text).group()  # leading letters
    if not word[:1].isupper() or word == "I" or (len(word) > 1 and word.isupper()):
        return text
    return text[0].lower() + text[1:]


def syntactic(text: str, params: SyntacticParams = SyntacticParams(),
              rng: np.random.Generator | None = None) -> str:
    """'What colour is the circle?' -> 'When you look at the image, what colour is the circle?'."""
    if rng is None:
        raise ValueError("syntactic needs an rng (the clause is drawn per question)")
    clause = params.clauses[int(rng.integers(len(params.clauses)))]
    return f"{clause}, {_lower_first(text)}" if text else clause
