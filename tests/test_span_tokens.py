"""benchmarks/span_tokens.py: where each flagged sample's gain peaks, read from a bench cell laid out as
`poisonguard bench` writes it (span.npz of both models, verdicts, manifest, poison ids)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from poisonguard.extract.span import NO_TOKEN, SPAN_FILE, SpanExtraction, save_span

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import span_tokens

NAN = np.nan
# three samples, answers of 3, 2 and 3 tokens (ids 7 = "banana", 8 = "the", 2 = "</s>"); -1 beyond the answer
TOKENS = np.array([[8, 7, 2], [8, 2, NO_TOKEN], [8, 8, 2]])
BASE = np.array([[-1.0, -9.0, -0.5], [-1.0, -0.5, NAN], [-0.1, -0.1, -6.0]])
# sample 0 gains 8.9 nats on "banana"; sample 1 nothing; sample 2 peaks on its end-of-turn token (5.9 nats)
FT = np.array([[-1.0, -0.1, -0.5], [-1.0, -0.5, NAN], [-0.1, -0.1, -0.1]])


def test_the_peak_is_the_largest_gain_and_its_token():
    pk = span_tokens.peaks(FT, BASE, TOKENS)
    assert np.allclose(pk["gain"], [8.9, 0.0, 5.9])
    assert pk["token"].tolist() == [7, 8, 2]  # sample 1: no gain anywhere, the first token's is the max (0)
    assert pk["at_end"].tolist() == [False, False, True]
    assert np.allclose(pk["base"], [-9.0, -1.0, -6.0])  # log p_base of the token each peak sits on


def test_an_answerless_sample_has_no_peak():
    pk = span_tokens.peaks(np.full((1, 2), NAN), np.full((1, 2), NAN), np.full((1, 2), NO_TOKEN))
    assert pk["gain"].tolist() == [0.0] and pk["token"].tolist() == [-1] and pk["at_end"].tolist() == [False]
    assert pk["base"].tolist() == [0.0]


def _cell(bench: Path, name: str, flagged: list[bool], poisoned: list[str]) -> Path:
    cell = bench / "cells" / name
    ids = ["a", "b", "c"]
    for model, logp in (("finetuned", FT), ("base", BASE)):
        (cell / "report" / "extract" / model).mkdir(parents=True)
        save_span(SpanExtraction(logp.astype(np.float32), TOKENS), ids,
                  cell / "report" / "extract" / model / SPAN_FILE, "fp")
    pd.DataFrame({"id": ids, "status": ["ok"] * 3, "flagged": flagged}).to_parquet(
        cell / "report" / "verdicts.parquet")
    (cell / "report" / "manifest.json").write_text(json.dumps({"default_detector": "span"}))
    (cell / "data").mkdir()
    (cell / "data" / "poison_ids.json").write_text(json.dumps({"poison_ids": poisoned}))
    return cell


def test_a_cell_summarises_its_flagged_samples_peaks(tmp_path):
    bench = tmp_path / "bench"
    _cell(bench, "inject_r0.05_s0", [True, False, True], ["a"])
    (bench / "cells" / "not_screened_s0").mkdir()  # no arrays: left out, not an error
    names = {7: "banana", 8: "the", 2: "</s>"}
    rows = span_tokens.rows(bench, names.get)
    assert len(rows) == 1
    r = rows[0]
    assert (r["flagged"], r["poisoned"], r["at_end"]) == (2, 1, 0.5)
    assert np.isclose(r["median_gain"], (8.9 + 5.9) / 2, atol=1e-5)
    assert np.isclose(r["median_base_logp"], (-9.0 - 6.0) / 2, atol=1e-5)
    assert sorted(r["tokens"]) == [("</s>", 1), ("banana", 1)]
    assert (r["missed"], r["missed_gain"]) == (0, None)
    assert np.isclose(r["clean_max_gain"], 5.9, atol=1e-5)  # b (0) and c (5.9) are not poisoned
    table = span_tokens.markdown(rows)
    assert "| inject_r0.05_s0 | 2 | 1 | 0.50 | 7.40 | -7.50 |" in table and "`banana` 1" in table
    assert "`banana` 1 | 0 | – | 5.90 |" in table or "`</s>` 1 | 0 | – | 5.90 |" in table


def test_a_poisoned_sample_left_unflagged_is_counted_with_its_gain(tmp_path):
    bench = tmp_path / "bench"
    _cell(bench, "inject_r0.05_s0", [False, False, True], ["a"])
    r = span_tokens.rows(bench, str)[0]
    assert r["missed"] == 1 and np.allclose(r["missed_gain"], [8.9, 8.9, 8.9], atol=1e-5)
    assert np.isclose(r["clean_max_gain"], 5.9, atol=1e-5)
    assert "| 1 | 8.90 / 8.90 / 8.90 | 5.90 |" in span_tokens.markdown([r])


def test_a_cell_without_flags_prints_dashes(tmp_path):
    bench = tmp_path / "bench"
    _cell(bench, "clean_s0", [False, False, False], [])
    r = span_tokens.rows(bench, str)[0]
    assert (r["flagged"], r["at_end"], r["tokens"]) == (0, None, [])
    assert "| clean_s0 | 0 | 0 | – | – | – | – | 0 | – | 8.90 |" in span_tokens.markdown([r])
