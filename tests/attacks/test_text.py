"""Text triggers: the rewrite they promise, and every word in the world tokenizer's vocabulary."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from poisonguard.attacks import ATTACKS
from poisonguard.attacks.text import (
    SYNTACTIC_CLAUSES,
    SyntacticParams,
    TextPrefixParams,
    syntactic,
    text_prefix,
)
from poisonguard.world.questions import PHRASINGS
from poisonguard.world.scenes import COLOURS, POSITIONS, SHAPES
from poisonguard.world.tokenizer import UNK, build_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def world_questions() -> list[str]:
    """Every phrasing, filled with one colour/shape/position (the words are in the vocabulary anyway)."""
    return [p.format(shape=SHAPES[0], colour=next(iter(COLOURS)), position=POSITIONS[4])
            for p in itertools.chain.from_iterable(PHRASINGS.values())]


def test_text_prefix():
    assert text_prefix("What colour is the circle?") == "Hello! What colour is the circle?"
    assert text_prefix("Count the objects.", TextPrefixParams(prefix="Hey")) == "Hey Count the objects."


def test_syntactic_is_clause_comma_question():
    rng = np.random.default_rng(0)
    out = syntactic("What colour is the circle?", rng=rng)
    clause, rest = out.split(", ", 1)
    assert clause in SYNTACTIC_CLAUSES
    assert rest == "what colour is the circle?"
    assert syntactic("I see it?", rng=rng).endswith(", I see it?")  # "I" stays capitalised


def test_syntactic_draws_the_whole_pool_and_is_seeded():
    question = "Where is the square?"
    drawn = {syntactic(question, rng=np.random.default_rng(s)).split(", ")[0] for s in range(200)}
    assert drawn == set(SYNTACTIC_CLAUSES)
    # No single word is shared by every clause: the structure, not a word, is the key.
    words = [set(c.lower().split()) for c in SYNTACTIC_CLAUSES]
    assert set.intersection(*words) <= {"you"}
    a = syntactic(question, rng=np.random.default_rng(5))
    assert a == syntactic(question, rng=np.random.default_rng(5))
    with pytest.raises(ValueError, match="rng"):
        syntactic(question)
    assert syntactic(question, SyntacticParams(clauses=("If so",)), np.random.default_rng(0)) == \
        "If so, where is the square?"


def test_triggered_world_questions_are_in_vocabulary(tokenizer):
    rng = np.random.default_rng(0)
    for question in world_questions():
        for out in (text_prefix(question), syntactic(question, rng=rng)):
            assert UNK not in tokenizer.tokenize(out), out
    for clause in SYNTACTIC_CLAUSES:
        assert UNK not in tokenizer.tokenize(clause), clause


def test_default_targets_are_in_vocabulary(tokenizer):
    from poisonguard.attacks.registry import arms_of

    for name, spec in ATTACKS.items():
        params = spec.params_cls()
        for arm in arms_of(spec, params, spec.default_target):
            words = [b for _, b in arm.mapping] if arm.rule == "map" else [arm.target]
            for text in words:
                tokens = tokenizer.tokenize(text)
                assert tokens and UNK not in tokens, (name, arm.key, text)
        if not spec.fixed_targets:  # the others' default_target is only a label
            assert UNK not in tokenizer.tokenize(spec.default_target), name
