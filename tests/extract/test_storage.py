"""Sharded storage: atomic shards, resume skips finished ones, reruns are identical, plans never mix."""

from __future__ import annotations

import json

import numpy as np
import pytest

from poisonguard.extract import storage
from poisonguard.extract.extraction import extract
from poisonguard.extract.storage import (
    ARRAYS,
    MANIFEST,
    extract_shard,
    extract_to_dir,
    load_extraction,
    shard_path,
)

from .conftest import mixed_examples, tiny

IDS = ["s0", "s1", "s2", "s3", "s4"]


def _assert_same(a, b):
    for name in ARRAYS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.meta == b.meta


def test_sharded_extraction_equals_one_pass(tmp_path):
    model, processor = tiny("llava_next")
    examples = mixed_examples()
    stored = extract_to_dir(model, processor, examples, IDS, tmp_path, shard_size=2, batch_size=2,
                            show_progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST, "shard_00000.npz", "shard_00001.npz",
                                                        "shard_00002.npz"]  # no temp files left behind
    assert stored.ids == IDS
    direct = extract(model, processor, examples, batch_size=2, show_progress=False)
    np.testing.assert_allclose(stored.alloc, direct.alloc, atol=1e-6)
    np.testing.assert_array_equal(stored.n_tokens, direct.n_tokens)
    _assert_same(load_extraction(tmp_path, ids=IDS), stored)


def test_resume_skips_finished_shards_and_reruns_identically(tmp_path, monkeypatch):
    model, processor = tiny("llava")
    examples = mixed_examples()
    first = extract_to_dir(model, processor, examples, IDS, tmp_path, shard_size=2, show_progress=False)
    stamps = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("shard_*.npz")}

    # a killed run: shard 1 never written, a stray temp file from the interrupted write
    shard_path(tmp_path, 1).unlink()
    (tmp_path / ".shard_00001.npz.abc.tmp").write_bytes(b"partial")
    with pytest.raises(FileNotFoundError, match="unfinished"):
        load_extraction(tmp_path)

    calls = []
    real_extract = storage.extract
    monkeypatch.setattr(storage, "extract", lambda *a, **k: calls.append(len(a[2])) or real_extract(*a, **k))
    second = extract_to_dir(model, processor, examples, IDS, tmp_path, shard_size=2, show_progress=False)
    assert calls == [2]  # only the missing shard was computed
    assert shard_path(tmp_path, 0).stat().st_mtime_ns == stamps["shard_00000.npz"]
    assert shard_path(tmp_path, 2).stat().st_mtime_ns == stamps["shard_00002.npz"]
    _assert_same(first, second)

    calls.clear()
    third = extract_to_dir(model, processor, examples, IDS, tmp_path, shard_size=2, show_progress=False)
    assert calls == []
    _assert_same(first, third)


def test_extract_shard_runs_one_shard_standalone(tmp_path):
    model, processor = tiny("qwen2_vl")
    examples = mixed_examples()
    path = extract_shard(model, processor, examples, IDS, tmp_path, 2, shard_size=2)
    assert path == shard_path(tmp_path, 2) and not shard_path(tmp_path, 0).exists()
    with np.load(path) as z:
        assert list(z["ids"]) == ["s4"] and z["alloc"].shape[0] == 1
        assert json.loads(str(z["meta"]))["backend"] == "capture"
    with pytest.raises(IndexError):
        extract_shard(model, processor, examples, IDS, tmp_path, 3, shard_size=2)


def test_a_different_plan_is_refused(tmp_path):
    model, processor = tiny("llava")
    examples = mixed_examples()
    extract_shard(model, processor, examples, IDS, tmp_path, 0, shard_size=2)
    for change in ({"shard_size": 3}, {"backend": "eager"}, {"tag": "other-model"}):
        kwargs = {"shard_size": 2, **change}
        with pytest.raises(ValueError, match="different extraction"):
            extract_shard(model, processor, examples, IDS, tmp_path, 0, **kwargs)
    with pytest.raises(ValueError, match="different extraction"):
        extract_shard(model, processor, examples, IDS[::-1], tmp_path, 0, shard_size=2)
    with pytest.raises(ValueError, match="unique"):
        extract_shard(model, processor, examples, ["a"] * 5, tmp_path / "x", 0, shard_size=2)


def test_changed_inputs_never_reuse_a_shard(tmp_path):
    """A sample edited under the same id changes the plan: refused by default, restarted on request."""
    model, processor = tiny("llava")
    examples = mixed_examples()
    digests = [f"content-{i}" for i in IDS]
    first = extract_to_dir(model, processor, examples, IDS, tmp_path, shard_size=2, inputs=digests,
                           show_progress=False)
    edited = [*digests[:3], "content-s3-edited", digests[4]]
    with pytest.raises(ValueError, match="different extraction"):
        extract_to_dir(model, processor, examples, IDS, tmp_path, shard_size=2, inputs=edited,
                       show_progress=False)
    stamps = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("shard_*.npz")}
    lines = []
    again = extract_to_dir(model, processor, examples, IDS, tmp_path, shard_size=2, inputs=edited,
                           on_stale="restart", show_progress=False, log=lines.append)
    assert any("discarded 3 stale shard(s)" in line for line in lines)
    assert all(shard_path(tmp_path, k).stat().st_mtime_ns != stamps[shard_path(tmp_path, k).name]
               for k in range(3))  # every shard recomputed
    _assert_same(first, again)  # same examples, so the same numbers


def test_a_shard_of_another_plan_is_recomputed_and_never_loaded(tmp_path):
    model, processor = tiny("llava")
    examples = mixed_examples()
    extract_to_dir(model, processor, examples, IDS, tmp_path / "a", shard_size=2, tag="model-a",
                   show_progress=False)
    b = tmp_path / "b"
    extract_shard(model, processor, examples, IDS, b, 1, shard_size=2, tag="model-b")
    # a shard computed for model a, copied into b's folder: load refuses it, extraction replaces it
    shard_path(b, 0).write_bytes(shard_path(tmp_path / "a", 0).read_bytes())
    shard_path(b, 2).write_bytes(b"PK\x03\x04 not a whole zip")  # and an unreadable one
    with pytest.raises(ValueError, match="stale"):
        load_extraction(b)
    lines = []
    stored = extract_to_dir(model, processor, examples, IDS, b, shard_size=2, tag="model-b",
                            show_progress=False, log=lines.append)
    assert any("1 of 3 shards already finished, skipped" in line for line in lines)
    assert sum("recomputing" in line for line in lines) == 2
    assert stored.ids == IDS and storage.shard_done(b, json.loads((b / MANIFEST).read_text()), 0)


def test_temp_files_of_a_killed_writer_are_removed(tmp_path):
    (tmp_path / ".shard_00001.npz.abc.tmp").write_bytes(b"partial")
    (tmp_path / "keep.txt").write_text("not ours")
    assert storage.remove_temp_files(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
