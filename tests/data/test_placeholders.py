"""Placeholder stripping and the marks-versus-images check."""

from __future__ import annotations

import pytest

from poisonguard.data.errors import ReasonCode
from poisonguard.data.placeholders import check_placeholders, strip_placeholders


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<image>\nWhat is it?", ("What is it?", 1)),
        ("What is it?\n<image>", ("What is it?", 1)),
        ("<image>What is it?", ("What is it?", 1)),
        ("Look:\n<image>\nwhat is it?", ("Look:\nwhat is it?", 1)),
        ("<image>\n<image>\nCompare.", ("Compare.", 2)),
        ("No image here.  ", ("No image here.  ", 0)),
        ("<image>", ("", 1)),
    ],
)
def test_strip_placeholders(text, expected):
    assert strip_placeholders(text) == expected


def codes(roles, marks, n_images):
    return [r.code for r in check_placeholders("s", "conversations", roles, marks, n_images)]


def test_marks_must_match_images_and_sit_in_the_first_user_turn():
    assert codes(["system", "user", "assistant"], [0, 1, 0], 1) == []
    assert codes(["user", "assistant"], [0, 0], 0) == []
    assert codes(["user", "assistant"], [0, 0], 1) == [ReasonCode.IMAGE_WITHOUT_PLACEHOLDER]
    assert codes(["user", "assistant"], [1, 0], 0) == [ReasonCode.PLACEHOLDER_WITHOUT_IMAGE]
    assert codes(["user", "assistant"], [2, 0], 1) == [ReasonCode.PLACEHOLDER_COUNT_MISMATCH]
    assert codes(["user", "assistant", "user"], [0, 0, 1], 1) == [ReasonCode.PLACEHOLDER_MISPLACED]


def test_turns_with_unreadable_roles_are_not_judged_for_placement():
    assert codes(["", "assistant"], [1, 0], 1) == []
