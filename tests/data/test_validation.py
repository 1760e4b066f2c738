"""validate: each reason code from a minimal record, every sample accounted for, the extra-check hook."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from poisonguard.data import Limits, QuarantineReason, ReasonCode, read_dataset, validate, validation
from tests.data.helpers import json_values as json_values_of, chat, llava, png, write_json, write_jsonl

R = ReasonCode


def codes_for(tmp_path, record, limits=None, jsonl=False) -> set[str]:
    """The reason codes of `record` when it sits in a file after one good sample (which must stay ok)."""
    png(tmp_path / "img.png")
    png(tmp_path / "img2.png")
    good = (
        llava("good")
        if "conversations" in record
        else {
            "id": "good",
            "messages": [{"role": "user", "content": "<image>Hi?"}, {"role": "assistant", "content": "Hi"}],
            "images": ["img.png"],
        }
    )
    path = (
        write_jsonl(tmp_path / "t.jsonl", [good, record])
        if jsonl
        else write_json(tmp_path / "t.json", [good, record])
    )
    verdicts = validate(read_dataset(path), limits)
    assert verdicts["good"] == []
    (reasons,) = [v for k, v in verdicts.items() if k != "good"]
    assert all(isinstance(r, QuarantineReason) and r.message.startswith("sample ") for r in reasons)
    return {r.code for r in reasons}


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (chat("x", ("human", "Q"), ("robot", "A")), {R.UNKNOWN_ROLE}),
        (chat("x", ("gpt", "Hello"), ("human", "Q"), ("gpt", "A")), {R.FIRST_TURN_NOT_USER}),
        (chat("x", ("system", "S"), ("gpt", "A"), ("human", "Q")), {R.FIRST_TURN_NOT_USER}),
        (chat("x", ("human", "Q"), ("gpt", "A"), ("gpt", "B")), {R.TURN_ORDER}),
        (chat("x", ("gpt", "A")), {R.NO_USER_TURN}),
        (chat("x", ("human", "Q")), {R.NO_ASSISTANT_TURN}),
        (chat("x"), {R.NO_USER_TURN, R.NO_ASSISTANT_TURN}),
        (chat("x", ("human", " \n"), ("gpt", "A")), {R.EMPTY_TURN}),
        (chat("x", ("human", "Q"), ("gpt", "")), {R.EMPTY_TURN}),
        (chat("x", ("human", "Q"), ("gpt", 1)), {R.NON_STRING_VALUE}),
        ({"id": "x", "conversations": [{"from": "human"}]}, {R.MALFORMED_TURN}),
        ({"id": "x", "conversations": None}, {R.MISSING_CONVERSATION}),
        (chat("x", ("human", "Q"), ("gpt", "A"), image="img.png"), {R.IMAGE_WITHOUT_PLACEHOLDER}),
        (chat("x", ("human", "<image>\nQ"), ("gpt", "A")), {R.PLACEHOLDER_WITHOUT_IMAGE}),
        (
            chat("x", ("human", "<image><image>Q"), ("gpt", "A"), image="img.png"),
            {R.PLACEHOLDER_COUNT_MISMATCH},
        ),
        (
            chat("x", ("human", "Q"), ("gpt", "A"), ("human", "<image>Q"), ("gpt", "A"), image="img.png"),
            {R.PLACEHOLDER_MISPLACED},
        ),
        (
            {
                **llava("x"),
                "image": ["img.png", "img2.png"],
                "conversations": [
                    {"from": "human", "value": "<image><image>Q"},
                    {"from": "gpt", "value": "A"},
                ],
            },
            {R.TOO_MANY_IMAGES},
        ),
        (llava("x", image="nope.png"), {R.MISSING_IMAGE}),
        (llava("x", image="../img.png"), {R.IMAGE_OUTSIDE_ROOT}),
        (llava("x", image={"path": "img.png"}), {R.INVALID_IMAGE_REF}),
        (llava("x", question="Q" * 100), {R.CONVERSATION_TOO_LONG}),
        (llava("good"), {R.DUPLICATE_ID}),
        (llava(None), {R.MISSING_ID}),
        (llava(1.5), {R.INVALID_ID}),
        ({k: v for k, v in llava("x").items() if k != "id"}, {R.MISSING_ID}),
    ],
)
def test_llava_reason_codes(tmp_path, record, expected):
    assert codes_for(tmp_path, record, Limits(max_prompt_chars=80)) == expected


def hf(content, images=None, answer="A", role="user"):
    record = {
        "id": "x",
        "messages": [{"role": role, "content": content}, {"role": "assistant", "content": answer}],
    }
    if images is not None:
        record["images"] = images
    return record


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (hf([{"type": "image"}, {"type": "text", "text": "Q"}], images=["img.png"]), set()),
        (hf([{"type": "audio"}, {"type": "text", "text": "Q"}]), {R.UNKNOWN_CONTENT_TYPE}),
        (hf(["Q"]), {R.UNKNOWN_CONTENT_TYPE}),
        (hf([{"type": "text", "text": 5}]), {R.NON_STRING_VALUE}),
        (hf(None), {R.NON_STRING_VALUE}),
        (hf("Q", role="human"), {R.UNKNOWN_ROLE}),
        (hf("Q", images="img.png"), {R.INVALID_IMAGE_REF}),
        (hf("<image>Q", images=["img.png", "img2.png"]), {R.PLACEHOLDER_COUNT_MISMATCH, R.TOO_MANY_IMAGES}),
        (hf([{"type": "image", "url": "img.png"}, {"type": "text", "text": "Q"}]), set()),
        (
            hf("Q", answer=[{"type": "image", "path": "img.png"}, {"type": "text", "text": "A"}]),
            {R.PLACEHOLDER_MISPLACED},
        ),
        (hf("<image>Q", images=["img.png"], answer=[{"type": "text", "text": " "}]), {R.EMPTY_TURN}),
        (hf([{"type": "image", "image": "missing.png"}, {"type": "text", "text": "Q"}]), {R.MISSING_IMAGE}),
        ({"id": "x", "messages": "hello"}, {R.MISSING_CONVERSATION}),
        (["not", "a", "record"], {R.NOT_AN_OBJECT, R.MISSING_ID}),
    ],
)
def test_hf_messages_reason_codes(tmp_path, record, expected):
    assert codes_for(tmp_path, record, jsonl=True) == expected


def test_image_problems_name_sample_field_and_folder(tmp_path):
    png(tmp_path / "img.png")
    verdicts = validate(read_dataset(write_json(tmp_path / "t.json", [llava("abc", image="../x.png")])))
    (reason,) = verdicts["abc"]
    assert reason.message == (
        f"sample 'abc' field 'image': path '../x.png' escapes the image folder {tmp_path.resolve()}"
    )


def test_every_sample_is_accounted_for_in_input_order(tmp_path):
    png(tmp_path / "img.png")
    records = [llava("b"), llava("a", image="none.png"), llava("b"), "junk", llava("c", image=None)]
    verdicts = validate(read_dataset(write_json(tmp_path / "t.json", records)))
    assert list(verdicts) == ["b", "a", "b#dup2", "__index_3", "c"]
    assert [bool(v) for v in verdicts.values()] == [False, True, True, True, False]


def test_extra_checks_plug_in(tmp_path):
    png(tmp_path / "img.png")

    def too_many_tokens(sample):
        if len(sample.question.split()) > 3:
            yield QuarantineReason.at("prompt_too_long", sample.id, "conversations", "more than 3 tokens")

    records = [llava("short"), llava("long", question="one two three four"),
               llava("broken", image="missing.png", question="one two three four")]
    verdicts = validate(read_dataset(write_json(tmp_path / "t.json", records)), checks=[too_many_tokens])
    assert verdicts["short"] == [] and [r.code for r in verdicts["long"]] == ["prompt_too_long"]
    # a sample already quarantined is not handed to the extra checks (they assume a well-formed sample)
    assert [r.code for r in verdicts["broken"]] == ["missing_image"]


def test_a_shared_image_is_decoded_once(tmp_path, monkeypatch):
    png(tmp_path / "img.png")
    calls = []
    real = validation.load_image
    monkeypatch.setattr(validation, "load_image", lambda *a: calls.append(a[0]) or real(*a))
    validate(read_dataset(write_json(tmp_path / "t.json", [llava("a"), llava("b"), llava("c")])))
    assert calls == ["img.png"]


json_values = json_values_of(
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from(["", "<image>", "img.png", "human", "gpt", "user", "assistant", "text", "image", "x"]),
    max_leaves=14,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(json_values, max_size=5), marker=st.sampled_from(["conversations", "messages"]))
def test_validate_never_crashes_and_gives_every_sample_a_verdict(tmp_path, records, marker):
    png(tmp_path / "img.png")
    ds = read_dataset(write_json(tmp_path / "fuzz.json", [{marker: []}, *records]))
    verdicts = validate(ds)
    assert list(verdicts) == ds.ids
    assert all(isinstance(r.code, str) and r.code and r.message for v in verdicts.values() for r in v)
