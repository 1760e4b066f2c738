"""Writing back: byte-identical round trips, only removed samples missing, atomic replacement."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from poisonguard.data import read_dataset, write_dataset
from tests.data.helpers import llava, write_json, write_jsonl

text = st.text(max_size=20)
turn = st.fixed_dictionaries({"from": st.sampled_from(["human", "gpt"]), "value": text})


@st.composite
def llava_record(draw) -> dict:
    """A LLaVA record with optional image and extra fields, keys in a random order."""
    fields = {"id": draw(st.text(min_size=1, max_size=6)), "conversations": draw(st.lists(turn, max_size=3))}
    if draw(st.booleans()):
        fields["image"] = draw(st.text(min_size=1, max_size=10))
    if draw(st.booleans()):
        fields["meta"] = draw(
            st.dictionaries(
                st.text(max_size=4), st.integers() | st.floats(allow_nan=False) | text, max_size=2
            )
        )
    order = draw(st.permutations(list(fields)))
    return {key: fields[key] for key in order}


json_dump_settings = st.fixed_dictionaries(
    {
        "indent": st.sampled_from([None, 2, 4, "\t"]),
        "ensure_ascii": st.booleans(),
    }
)
fast = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@fast
@given(records=st.lists(llava_record(), max_size=6), kwargs=json_dump_settings, final_newline=st.booleans())
def test_llava_json_round_trip_is_byte_identical(tmp_path, records, kwargs, final_newline):
    source = tmp_path / "in.json"
    source.write_text(json.dumps(records, **kwargs) + ("\n" if final_newline else ""), encoding="utf-8")
    out = write_dataset(read_dataset(source), tmp_path / "out.json")
    assert out.read_bytes() == source.read_bytes()


@fast
@given(records=st.lists(llava_record(), min_size=1, max_size=6), kwargs=json_dump_settings, data=st.data())
def test_a_subset_is_written_as_json_dump_would_write_it(tmp_path, records, kwargs, data):
    source = write_json(tmp_path / "in.json", records, **kwargs)
    ds = read_dataset(source)
    keep = data.draw(st.sets(st.sampled_from(ds.ids)))
    write_dataset(ds, tmp_path / "out.json", keep_ids=keep)
    expected = [s.raw for s in ds.samples if s.id in keep]  # input order, duplicates of an id included
    assert (tmp_path / "out.json").read_text(encoding="utf-8") == json.dumps(expected, **kwargs)


@fast
@given(records=st.lists(llava_record(), max_size=6))
def test_json_lines_round_trip_is_byte_identical(tmp_path, records):
    source = write_jsonl(tmp_path / "in.jsonl", records)
    out = write_dataset(read_dataset(source), tmp_path / "out.jsonl")
    assert out.read_bytes() == source.read_bytes()


def test_removed_samples_are_the_only_difference(tmp_path):
    records = [llava("a"), llava("b"), llava("c")]
    ds = read_dataset(write_json(tmp_path / "in.json", records, indent=2))
    write_dataset(ds, tmp_path / "out.json", keep_ids=["c", "a"])
    assert json.loads((tmp_path / "out.json").read_text()) == [records[0], records[2]]


def test_release_writes_the_original_record_even_for_renamed_duplicates(tmp_path):
    records = [llava("a", answer="first"), llava("a", answer="second")]
    ds = read_dataset(write_json(tmp_path / "in.json", records))
    assert ds.ids == ["a", "a#dup2"]
    write_dataset(ds, tmp_path / "out.json", keep_ids=["a#dup2"])
    assert json.loads((tmp_path / "out.json").read_text()) == [records[1]]


def test_unknown_keep_ids_are_refused(tmp_path):
    ds = read_dataset(write_json(tmp_path / "in.json", [llava("a")]))
    with pytest.raises(ValueError, match="'zzz'"):
        write_dataset(ds, tmp_path / "out.json", keep_ids=["a", "zzz"])
    assert not (tmp_path / "out.json").exists()


def test_write_is_atomic_and_leaves_no_temporary_file(tmp_path):
    ds = read_dataset(write_json(tmp_path / "in.json", [llava("a")]))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    write_dataset(ds, out_dir / "clean.json")
    assert os.listdir(out_dir) == ["clean.json"]
    assert oct((out_dir / "clean.json").stat().st_mode & 0o777) == oct(0o644)


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path, monkeypatch):
    ds = read_dataset(write_json(tmp_path / "in.json", [llava("a")]))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "clean.json").write_text("old")

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        write_dataset(ds, out_dir / "clean.json")
    assert os.listdir(out_dir) == ["clean.json"]
    assert (out_dir / "clean.json").read_text() == "old"
