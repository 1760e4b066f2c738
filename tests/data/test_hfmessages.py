"""HF messages records -> Sample, without files."""

from __future__ import annotations

from poisonguard.data import ReasonCode, Turn
from poisonguard.data.hfmessages import parse_hf_messages


def message(role, content):
    return {"role": role, "content": content}


def test_content_blocks_with_an_image_slot():
    record = {
        "messages": [
            message("system", "Be brief."),
            message("user", [{"type": "image"}, {"type": "text", "text": "What colour?"}]),
            message("assistant", [{"type": "text", "text": "red"}]),
        ],
        "images": ["a.png"],
    }
    sample = parse_hf_messages(record, "s", 0)
    assert sample.turns == [
        Turn("system", "Be brief."),
        Turn("user", "What colour?"),
        Turn("assistant", "red"),
    ]
    assert (sample.images, sample.image_fields, sample.issues) == (["a.png"], ["images[0]"], [])


def test_inline_image_references_under_any_accepted_key():
    for key in ("image", "path", "url"):
        record = {
            "messages": [
                message("user", [{"type": "image", key: "b.png"}, {"type": "text", "text": "Q"}]),
                message("assistant", "A"),
            ]
        }
        sample = parse_hf_messages(record, "s", 0)
        assert (sample.images, sample.image_fields) == (["b.png"], [f"messages[0].content[0].{key}"])
        assert sample.issues == []


def test_placeholder_in_string_content_takes_the_listed_image():
    record = {"messages": [message("user", "<image>Count?"), message("assistant", "3")], "images": ["c.png"]}
    sample = parse_hf_messages(record, "s", 0)
    assert (sample.question, sample.images, sample.issues) == ("Count?", ["c.png"], [])


def test_several_text_blocks_join_with_newlines():
    record = {
        "messages": [
            message("user", [{"type": "text", "text": "One."}, {"type": "text", "text": "Two?"}]),
            message("assistant", "A"),
        ]
    }
    assert parse_hf_messages(record, "s", 0).question == "One.\nTwo?"


def test_unknown_blocks_drop_the_message_and_are_reported():
    record = {
        "messages": [
            message("user", [{"type": "audio"}, {"type": "text", "text": "Q"}]),
            message("assistant", "A"),
        ]
    }
    sample = parse_hf_messages(record, "s", 0)
    assert sample.turns == [Turn("assistant", "A")]
    assert [r.code for r in sample.issues] == [ReasonCode.UNKNOWN_CONTENT_TYPE]
    assert "'audio'" in sample.issues[0].message and "messages[0].content[0]" in sample.issues[0].message
