"""validate_turns: one check of a conversation's turns for both input formats."""

from __future__ import annotations

import pytest

from poisonguard.data import ReasonCode, Turn
from poisonguard.data.hfmessages import parse_hf_messages
from poisonguard.data.llava import parse_llava
from poisonguard.data.turns import UNREADABLE, ReadTurn, check_shape, typed_turns, validate_turns
from tests.data.helpers import chat

R = ReasonCode


def codes(*turns: ReadTurn, n_images: int = 0, prompt_image: bool = False) -> list[str]:
    return [r.code for r in validate_turns("s", "conversations", turns, n_images, prompt_image=prompt_image)]


def user(text: str = "Q", marks: int = 0) -> ReadTurn:
    return ReadTurn("user", text, marks)


def assistant(text: str = "A") -> ReadTurn:
    return ReadTurn("assistant", text)


def test_a_well_formed_conversation_passes():
    assert (
        codes(ReadTurn("system", "Be brief."), user(marks=1), assistant(), user(), assistant(), n_images=1)
        == []
    )


@pytest.mark.parametrize(
    ("turns", "expected"),
    [
        ((assistant(), user(), assistant()), [R.FIRST_TURN_NOT_USER]),
        ((ReadTurn("system", "S"), assistant(), user()), [R.FIRST_TURN_NOT_USER]),
        ((user(), assistant(), assistant()), [R.TURN_ORDER]),
        ((user(), ReadTurn("system", "S"), assistant()), [R.TURN_ORDER]),
        ((assistant(),), [R.NO_USER_TURN]),
        ((user(),), [R.NO_ASSISTANT_TURN]),
        ((), [R.NO_USER_TURN, R.NO_ASSISTANT_TURN]),
        ((user(" \n"), assistant()), [R.EMPTY_TURN]),
        ((user(), assistant("")), [R.EMPTY_TURN]),
    ],
)
def test_shape_problems_have_their_codes(turns, expected):
    assert codes(*turns) == expected


def test_an_image_alone_is_a_prompt_only_when_the_sample_has_a_usable_image():
    assert codes(user("", marks=1), assistant(), n_images=1, prompt_image=True) == []
    assert codes(user("", marks=1), assistant(), n_images=1, prompt_image=False) == [R.EMPTY_TURN]


def test_messages_name_the_sample_the_field_and_the_turn():
    (reason,) = validate_turns(
        "s", "messages", [user(), assistant(), user(""), assistant()], 0, prompt_image=False
    )
    assert reason.message == "sample 's' field 'messages[2]': turn 2 is empty or whitespace-only"
    (reason,) = validate_turns("s", "messages", [user(), user(), assistant()], 0, prompt_image=False)
    assert reason.message == (
        "sample 's' field 'messages[1]': turn 1 is a user turn where an assistant turn belongs; "
        "user and assistant turns must alternate"
    )


def test_placeholders_come_first_and_are_checked_against_the_images():
    assert codes(user(), assistant(), n_images=1) == [R.IMAGE_WITHOUT_PLACEHOLDER]
    assert codes(user(), assistant(), user(marks=1), user(), n_images=1) == [
        R.PLACEHOLDER_MISPLACED,
        R.TURN_ORDER,
    ]


def test_an_unreadable_turn_skips_the_shape_but_not_the_placeholders():
    # The reader reported the unreadable turn; without it the order checks would only restate that.
    assert codes(UNREADABLE, assistant()) == []
    assert codes(ReadTurn("user", None, 1), assistant()) == [R.PLACEHOLDER_WITHOUT_IMAGE]
    assert codes(user(), assistant(), UNREADABLE, user(marks=1), n_images=1) == [R.PLACEHOLDER_MISPLACED]


def test_typed_turns_keep_the_readable_ones():
    turns = [user("Q"), ReadTurn("assistant", None), ReadTurn(None, "x"), assistant("A")]
    assert typed_turns(turns) == [Turn("user", "Q"), Turn("assistant", "A")]
    assert check_shape("s", "f", typed_turns(turns), prompt_image=False) == []


@pytest.mark.parametrize(
    ("llava_turns", "hf_messages"),
    [
        ((("gpt", "A"), ("human", "Q")), [("assistant", "A"), ("user", "Q")]),
        (
            (("human", "Q"), ("human", "Q2"), ("gpt", "A")),
            [("user", "Q"), ("user", "Q2"), ("assistant", "A")],
        ),
        ((("human", "Q"), ("gpt", " ")), [("user", "Q"), ("assistant", " ")]),
        (
            (("human", "Q"), ("gpt", "A"), ("human", "<image>Q")),
            [("user", "Q"), ("assistant", "A"), ("user", "<image>Q")],
        ),
        ((("human", "Q"), ("robot", "A")), [("user", "Q"), ("robot", "A")]),
    ],
)
def test_both_readers_report_the_same_turn_problems(llava_turns, hf_messages):
    from_llava = parse_llava(chat("s", *llava_turns), "s", 0).issues
    hf = {"messages": [{"role": role, "content": text} for role, text in hf_messages]}
    from_hf = parse_hf_messages(hf, "s", 0).issues
    assert [r.code for r in from_llava] == [r.code for r in from_hf] != []
    strip = lambda reasons: [r.message.split(":", 1)[1] for r in reasons if r.code != R.UNKNOWN_ROLE]
    assert strip(from_llava) == strip(from_hf)  # the same words; only the field names differ
