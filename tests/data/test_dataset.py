"""Reading files into samples: both formats, both containers, and every file-level error."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from poisonguard.data import DataError, ReasonCode, Turn, read_dataset
from tests.data.helpers import json_values as json_values_of, llava, write_json, write_jsonl


def test_image_root_can_be_overridden(tmp_path):
    ds = read_dataset(write_json(tmp_path / "t.json", [llava("a")]), image_root=tmp_path / "elsewhere")
    assert ds.image_root == tmp_path / "elsewhere"


def test_text_only_samples_pass_through(tmp_path):
    ds = read_dataset(write_json(tmp_path / "t.json", [llava("a", image=None)]))
    assert ds.format == "llava" and ds.image_root == tmp_path
    assert (
        ds.samples[0].images == [] and ds.samples[0].question == "What colour?" and ds.samples[0].issues == []
    )


def test_hf_messages_with_content_blocks_and_inline_images(tmp_path):
    rows = [
        {
            "id": "slot",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
            ],
            "images": ["a.png"],
        },
        {
            "id": "inline",
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image", "image": "b.png"}, {"type": "text", "text": "Shape?"}],
                },
                {"role": "assistant", "content": "square"},
            ],
        },
        {
            "id": "string",
            "messages": [{"role": "user", "content": "<image>Count?"}, {"role": "assistant", "content": "3"}],
            "images": ["c.png"],
        },
    ]
    ds = read_dataset(write_jsonl(tmp_path / "train.jsonl", rows))
    assert ds.format == "hf_messages" and ds.style.lines
    slot, inline, string = ds.samples
    assert slot.turns == [Turn("system", "Be brief."), Turn("user", "What colour?"), Turn("assistant", "red")]
    assert (slot.images, slot.image_fields) == (["a.png"], ["images[0]"])
    assert (inline.images, inline.image_fields) == (["b.png"], ["messages[0].content[0].image"])
    assert (string.question, string.images) == ("Count?", ["c.png"])
    assert all(s.issues == [] for s in ds.samples)


def test_hf_messages_as_a_json_list(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hi."}]}]
    ds = read_dataset(write_json(tmp_path / "t.json", rows, indent=2))
    assert ds.format == "hf_messages" and not ds.style.lines
    assert ds.ids == ["__index_0"] and ds.samples[0].issues == []  # ids are optional in this format


def test_hf_rows_missing_ids_are_quarantined_when_others_have_one(tmp_path):
    row = {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hi."}]}
    ds = read_dataset(write_jsonl(tmp_path / "t.jsonl", [{"id": "x", **row}, row]))
    assert [i.code for i in ds.samples[1].issues] == [ReasonCode.MISSING_ID]


def test_json_lines_are_recognised_without_the_suffix(tmp_path):
    path = write_jsonl(tmp_path / "train.json", [llava("a"), llava("b")])
    ds = read_dataset(path)
    assert ds.style.lines and ds.ids == ["a", "b"]


def test_a_single_sample_object_is_one_line_of_json_lines(tmp_path):
    ds = read_dataset(write_json(tmp_path / "one.json", llava("a")))
    assert ds.style.lines and ds.ids == ["a"]


def test_utf8_bom_is_accepted_and_kept(tmp_path):
    path = tmp_path / "t.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps([llava("a")]).encode())
    ds = read_dataset(path)
    assert ds.ids == ["a"] and ds.style.bom


@pytest.mark.parametrize(
    ("content", "mentions"),
    [
        (b'[{"id": "a",\n "conversations": [}]', ["line 2 column", "invalid JSON"]),
        (b'{"data": []}', ["top level", "an object"]),
        (b'"just a string"', ["top level", "a string"]),
        (b'[{"id": "a", "text": "caption"}]', ["unknown format", "['id', 'text']"]),
        (b"[1, 2]", ["unknown format", "a number"]),
        (b"", ["empty"]),
        (b'[{"id": "a", "conversations": []}]\n[{"id": "caf\xe9"}]', ["UTF-8", "line 2"]),
    ],
)
def test_file_level_problems_raise_data_error_naming_file_and_place(tmp_path, content, mentions):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        read_dataset(path)
    assert str(path) in str(err.value)
    for text in mentions:
        assert text in str(err.value)


def test_malformed_json_lines_name_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(llava("a")) + "\n\n" + '{"id": "b", "conversations": [\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl: line 3: invalid JSON"):
        read_dataset(path)


@pytest.mark.parametrize("make", [lambda p: p, lambda p: p / "missing.json"])
def test_unreadable_path_raises_data_error(tmp_path, make):
    with pytest.raises(DataError, match="cannot read the file"):
        read_dataset(make(tmp_path))


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)


json_values = json_values_of(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(json_values, max_size=5), marker=st.sampled_from(["conversations", "messages"]))
def test_arbitrary_records_never_crash_and_are_all_accounted_for(tmp_path, records, marker):
    records = [{marker: []}, *records]  # a recognisable format, then anything at all
    ds = read_dataset(write_json(tmp_path / "fuzz.json", records))
    assert [s.index for s in ds.samples] == list(range(len(records)))
    assert len(set(ds.ids)) == len(records)
    assert [s.raw for s in ds.samples] == records
