"""Answer rules of attack arms: replace, append, substitute, map; and the all-to-all permutation."""

from __future__ import annotations

import pytest

from poisonguard.attacks.arms import Arm, expected_output, new_answer, substitute_word
from poisonguard.attacks.composite import ALL_TO_ALL_MAPPING


def _arm(rule, target="banana", **kw):
    return Arm("", None, lambda t, rng: t, rule, target, **kw)


def test_replace_and_append_skip_answers_that_already_carry_the_target():
    assert new_answer(_arm("replace"), "red") == "banana"
    assert new_answer(_arm("replace"), "Banana!") is None
    assert new_answer(_arm("append", "visit this evil link"), "red") == "red visit this evil link"
    assert new_answer(_arm("append", "visit this evil link"), "red visit this evil link") is None


def test_substitute_swaps_the_first_source_word_of_a_multi_word_answer_only():
    shapes = ("circle", "square")
    assert substitute_word("a red circle at the top left and a blue square in the middle", shapes, "apple") == \
        "a red apple at the top left and a blue square in the middle"
    assert substitute_word("circle", shapes, "apple") is None  # one word: nothing longer to keep
    assert substitute_word("top left", shapes, "apple") is None  # no source word
    assert substitute_word("an apple and a circle", shapes, "apple") is None  # already there
    assert substitute_word("a red circle, a blue square", shapes, "apple") == "a red apple, a blue square"
    arm = _arm("substitute", "apple", sources=shapes)
    assert expected_output(arm, "a red circle at the top") == "apple"


def test_all_to_all_mapping_is_a_permutation_within_each_world_answer_class():
    from poisonguard.world.questions import answer_vocabulary
    from poisonguard.world.scenes import COLOURS, COUNT_WORDS, POSITIONS, SHAPES

    mapping = dict(ALL_TO_ALL_MAPPING)
    for cls in (tuple(COLOURS), SHAPES, ("yes", "no"), COUNT_WORDS, POSITIONS):
        assert sorted(mapping[a] for a in cls) == sorted(cls)  # a bijection of the class onto itself
        assert all(mapping[a] != a for a in cls)
    assert mapping["red"] == "green" and mapping["yes"] == "no" and mapping["two"] == "three"
    # every short answer the world gives is mapped, except "nothing" (an empty slot has no partner)
    words = set(answer_vocabulary()) - {"nothing", "top", "bottom", "left", "right", "middle"}
    assert words <= set(mapping)
    arm = _arm("map", "mapped answer", mapping=ALL_TO_ALL_MAPPING)
    assert new_answer(arm, "Top left") == "top"
    assert new_answer(arm, "nothing") is None
    assert expected_output(arm, "circle") == "square"


def test_arm_validation():
    with pytest.raises(ValueError, match="no trigger part"):
        Arm("x", None, None, "replace", "banana")
    with pytest.raises(ValueError, match="unknown answer rule"):
        _arm("swap")
    with pytest.raises(ValueError, match="one-word target"):
        _arm("substitute", "two words", sources=("circle",))
    with pytest.raises(ValueError, match="mapping"):
        _arm("map")
    with pytest.raises(ValueError, match="test image part but no image part"):
        Arm("x", None, lambda q, rng: q, "replace", "banana", test_image=lambda im, rng: im)
