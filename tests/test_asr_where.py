"""benchmarks/asr_where.py: where a learned backdoor misses (ASR by question type, trigger region, token border)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import asr_where


def test_the_trigger_box_bounds_exactly_the_changed_pixels():
    before = np.zeros((48, 48, 3), dtype=np.uint8)
    after = before.copy()
    after[30:42, 5:17, 1] = 255  # a 12 px square, left 5, top 30
    assert asr_where.trigger_box(before, after) == (5, 30, 17, 42)
    assert asr_where.trigger_box(before, before.copy()) is None  # a text trigger changes no pixel
    assert asr_where.trigger_box(before, np.zeros((24, 24, 3), dtype=np.uint8)) is None


def test_region_and_token_crossings_of_a_box():
    assert asr_where.region((40, 40, 46, 46), 48, 48) == "bottom right"
    assert asr_where.region((18, 0, 30, 12), 48, 48) == "top centre"
    assert asr_where.token_crossings((0, 0, 16, 16), 16) == 0   # one token exactly
    assert asr_where.token_crossings((10, 0, 22, 12), 16) == 1  # crosses x = 16 only
    assert asr_where.token_crossings((10, 10, 22, 22), 16) == 2


def test_breakdown_counts_each_value_and_leaves_out_rows_without_it():
    rows = [{"k": "a", "hit": True}, {"k": "a", "hit": False}, {"k": "b", "hit": True}, {"k": None, "hit": False}]
    assert asr_where.breakdown(rows, "k") == [("a", 0.5, 2), ("b", 1.0, 1)]


def test_question_types_read_from_a_llava_file_and_absent_from_others(tmp_path):
    f = tmp_path / "t.json"
    f.write_text(json.dumps([{"id": "x1", "question_type": "shape"}, {"id": "x2"}]))
    assert asr_where.question_types(f) == {"x1": "shape"}


def test_one_row_per_triggered_input_of_a_real_model(tiny_world):
    world, _ = tiny_world
    params = {"position": "random", "side_frac": 0.25, "cells": 3}
    rows = asr_where.per_sample(world / "base_model", world / "test.json", "badnet", params)
    test = json.loads((world / "test.json").read_text())
    assert 0 < len(rows) <= len(test) and {r["id"] for r in rows} <= {r["id"] for r in test}
    for r in rows:
        left, top, right, bottom = r["box"]
        assert right - left == bottom - top == 12  # a quarter of the 48 px side
        assert r["question_type"] in {t["question_type"] for t in test}
        assert r["token_crossings"] in (0, 1, 2) and isinstance(r["hit"], bool)
    assert asr_where.tables(rows).startswith(f"ASR {sum(r['hit'] for r in rows) / len(rows):.3f} on {len(rows)}")
