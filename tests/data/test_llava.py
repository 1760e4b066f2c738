"""LLaVA records -> Sample, without files."""

from __future__ import annotations

import pytest

from poisonguard.data import ReasonCode, Turn
from poisonguard.data.llava import parse_llava
from tests.data.helpers import chat, llava


def test_a_record_becomes_a_typed_sample():
    record = chat(
        "a",
        ("system", "Be brief."),
        ("human", "<image>\nWhat colour?"),
        ("gpt", "red"),
        ("human", "And the shape?"),
        ("gpt", "square"),
        image="imgs/a.png",
    )
    sample = parse_llava(record, "a", 3)
    assert (sample.id, sample.index, sample.images, sample.image_fields) == (
        "a",
        3,
        ["imgs/a.png"],
        ["image"],
    )
    assert sample.turns == [
        Turn("system", "Be brief."),
        Turn("user", "What colour?"),
        Turn("assistant", "red"),
        Turn("user", "And the shape?"),
        Turn("assistant", "square"),
    ]
    assert (sample.system, sample.question, sample.answer) == ("Be brief.", "What colour?", "red")
    assert sample.raw is record and sample.issues == []


@pytest.mark.parametrize(
    "value",
    ["<image>\nWhat colour?", "What colour?\n<image>", "<image> What colour?", "What colour? <image>"],
)
def test_the_placeholder_may_sit_anywhere_in_the_first_turn(value):
    sample = parse_llava(chat("a", ("human", value), ("gpt", "red"), image="a.png"), "a", 0)
    assert sample.question == "What colour?" and sample.issues == []


def test_text_only_records_have_no_images():
    sample = parse_llava(llava("a", image=None), "a", 0)
    assert sample.images == [] and sample.question == "What colour?" and sample.issues == []


def test_an_image_list_is_several_images():
    record = {**llava("a"), "image": ["x.png", "y.png"]}
    record["conversations"][0]["value"] = "<image>\n<image>\nSame?"
    sample = parse_llava(record, "a", 0)
    assert (sample.images, sample.image_fields, sample.issues) == (
        ["x.png", "y.png"],
        ["image[0]", "image[1]"],
        [],
    )


def test_unreadable_turns_are_left_out_and_reported():
    record = chat("a", ("human", "Q"), ("bot", "A"), ("gpt", 5))
    sample = parse_llava(record, "a", 0)
    assert sample.turns == [Turn("user", "Q")]
    assert [(r.code, r.message.split(":")[0]) for r in sample.issues] == [
        (ReasonCode.UNKNOWN_ROLE, "sample 'a' field 'conversations[1].from'"),
        (ReasonCode.NON_STRING_VALUE, "sample 'a' field 'conversations[2].value'"),
    ]
