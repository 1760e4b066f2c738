"""benchmarks/span_caps.py on a bench folder laid out as `poisonguard bench` writes it, with the recorded gains
of the half-learned BadNet 1 % cell (tests/fixtures/span_gains.npz): the refit reads the cell's verdict table
and poison ids, and shows the cap below which the backdoor mode and the clean tail merge."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import span_caps

GAINS = Path(__file__).resolve().parent / "fixtures" / "span_gains.npz"


def _cell(bench: Path, name: str, gain: np.ndarray, poison: np.ndarray, screened: int, asr: float = 0.399) -> None:
    cell = bench / "cells" / name
    (cell / "report").mkdir(parents=True)
    (cell / "data").mkdir()
    ids = [f"s{i}" for i in range(gain.size)]
    status = ["ok"] * gain.size
    status[0] = "quarantined"  # a quarantined sample is not part of the fit
    pd.DataFrame({"id": ids, "status": status, "score_span": gain}).to_parquet(cell / "report" / "verdicts.parquet")
    (cell / "data" / "poison_ids.json").write_text(json.dumps({"poison_ids": [i for i, p in zip(ids, poison) if p]}))
    (cell / "result.json").write_text(json.dumps({"cell": name, "after": {"asr": asr},
                                                  "detection": {"span": {"n_flagged": screened}}}))


def test_caps_refit_the_stored_gains(tmp_path):
    z = np.load(GAINS)
    gain, poison = z["badnet_1pct_gain"].astype(np.float64), z["badnet_1pct_poison"]
    assert not poison[0]
    _cell(tmp_path, "badnet_r0.01_s0", gain, poison, screened=0)
    (tmp_path / "cells" / "unscreened_s0").mkdir()  # no verdict table: left out
    [row] = span_caps.rows(tmp_path, [6, "8s", 8])
    assert row["cell"] == "badnet_r0.01_s0" and row["poisoned"] == 50 and row["screened"] == 0
    assert row["caps"][6]["flagged"] == 0 and row["caps"][6]["ashman_d"] < 2  # the merged fit
    assert row["caps"]["8s"]["tp"] == 50  # the standard fit alone takes every poisoned sample
    assert row["caps"][8]["tp"] == row["caps"][8]["flagged"] == 47 and row["caps"][8]["f1"] >= 0.95  # confirmed
    table = span_caps.markdown([row], [6, 8])
    assert table.splitlines()[2].startswith("| badnet_r0.01_s0 | 0.399 | 50 | 0 | 0 / 0.00 /")


def test_best_cut_f1_is_the_highest_f1_of_any_cut():
    score = np.array([9.0, 8.0, 7.0, 1.0, 0.5, 0.0])
    poisoned = np.array([True, False, True, True, False, False])
    # top 1: 2/4; top 3: 4/6; top 4: 6/7 -- the best
    assert span_caps.best_cut_f1(score, poisoned) == 6 / 7
    assert span_caps.best_cut_f1(score, np.zeros(6, bool)) is None


def test_where_tells_the_poisoned_gains_from_the_clean_per_target(tmp_path):
    z = np.load(GAINS)
    gain, poison = z["badnet_1pct_gain"].astype(np.float64), z["badnet_1pct_poison"]
    _cell(tmp_path, "badnet_r0.01_s0", gain, poison, screened=0)
    cell = tmp_path / "cells" / "badnet_r0.01_s0"
    truth = json.loads((cell / "data" / "poison_ids.json").read_text())
    ids = truth["poison_ids"]
    truth["targets"] = {i: ("banana" if k % 2 else "red") for k, i in enumerate(ids)}
    (cell / "data" / "poison_ids.json").write_text(json.dumps(truth))
    r = span_caps.where(cell)
    ok, p = gain[1:], poison[1:]  # sample 0 is quarantined
    assert r["poisoned"] == int(p.sum()) == 50
    assert r["poisoned_min"] == ok[p].min() and r["clean_max"] == ok[~p].max()
    assert r["clean_p99"] == float(np.quantile(ok[~p], 0.99))
    assert r["missed"] == 3 and r["missed_median"] < 8  # the default leaves the three least learned (see above)
    assert r["poisoned_median"] == float(np.median(ok[p]))
    assert {t: v["n"] for t, v in r["by_target"].items()} == {"banana": 25, "red": 25}
    assert span_caps.where_markdown([r]).splitlines()[2].startswith("| badnet_r0.01_s0 | 50 | ")
    (tmp_path / "cells" / "clean_s0").mkdir()  # no stored gains
    assert span_caps.where(tmp_path / "cells" / "clean_s0") is None


def test_a_grown_cap_refits_with_split_starts(tmp_path):
    """"8g" decides with the grown fit alone (SpanParams(grow=True, confirm=False)): on the recorded substitution
    cell it flags the 64 poisoned samples alone, where the standard fit alone ("8s") also takes the clean tail;
    the default ("8": both fits find the mode, the grown one has the lower BIC) flags the 64."""
    z = np.load(GAINS)
    gain, poison = z["substitute_describe_gain"].astype(np.float64), z["substitute_describe_poison"]
    _cell(tmp_path, "substitute_r0.05_s0", gain, poison, screened=93)
    [row] = span_caps.rows(tmp_path, ["8s", "8g", 8])
    assert row["caps"]["8s"]["tp"] == 64 and row["caps"]["8s"]["flagged"] > 64
    assert row["caps"]["8g"]["tp"] == row["caps"]["8g"]["flagged"] == 64
    assert row["caps"][8]["tp"] == row["caps"][8]["flagged"] == 64
    head = span_caps.markdown([row], ["8s", "8g", 8]).splitlines()[0]
    assert "k_max 8, standard fit alone: flagged" in head and "k_max 8, grown fit alone: flagged" in head
    assert span_caps.changed([row]) == [row]
    assert span_caps.changed(span_caps.rows(tmp_path, [8, 10])) == []  # 8 and 10 decide alike here


def test_an_intersection_cap_decides_as_revision_5_did(tmp_path):
    """"8i" flags where both fits flag (revision 5); the default ("8") takes the lower-BIC fit's mode: on the
    recorded all-to-all 5 % cell of the pinned build, 154 against the grown fit's 238 (231 poisoned)."""
    z = np.load(GAINS)
    gain = z["pinned_all_to_all_5pct_s0_gain"].astype(np.float64)
    poison = z["pinned_all_to_all_5pct_s0_poison"]
    _cell(tmp_path, "all_to_all_r0.05_s0", gain, poison, screened=154, asr=0.519)
    [row] = span_caps.rows(tmp_path, ["8i", "8g", 8])
    both, grown = row["caps"]["8i"], row["caps"]["8g"]
    assert both["flagged"] == both["tp"] == 154 and round(both["f1"], 2) == 0.79
    assert (row["caps"][8]["flagged"], row["caps"][8]["tp"]) == (grown["flagged"], grown["tp"]) == (238, 231)
    assert "k_max 8, where both fits flag: flagged" in span_caps.markdown([row], ["8i", 8]).splitlines()[0]


def test_thin_keeps_n_poisoned_samples_and_decides_again(tmp_path):
    """`--thin`: the recorded Blend 5 % cell (250 poisoned) with only 25 of its poisoned gains kept beside every
    clean one; the draws are seeded (the same probe twice gives the same counts), and only learned cells with
    more poisoned samples than the largest N are probed."""
    z = np.load(GAINS)
    gain, poison = z["blend_gain"].astype(np.float64), z["blend_poison"]
    got = span_caps.thinned(gain, poison, 25, draws=1)
    assert got[0]["tp"] == 25 and got[0]["fp"] <= 2  # two of the clean tail's top, as with all 250 kept
    assert got == span_caps.thinned(gain, poison, 25, draws=1)
    _cell(tmp_path, "blend_r0.05_s0", gain, poison, screened=252, asr=0.96)
    _cell(tmp_path, "badnet_r0.01_s0", z["badnet_1pct_gain"].astype(np.float64), z["badnet_1pct_poison"], 0)
    table = span_caps.thin_rows(tmp_path, [25], draws=1)
    assert [r["cell"] for r in table] == ["blend_r0.05_s0"]  # BadNet 1 % (ASR 0.399) is not learned
    assert table[0]["thin"][25] == got  # sample 0 (quarantined) is clean: the same draw
    assert span_caps.thin_rows(tmp_path, [300], draws=1) == []  # 250 poisoned: nothing to thin
    assert span_caps.thin_markdown(table, [25]).splitlines()[2].startswith("| blend_r0.05_s0 | 0.960 | 250 | 25/25")
    assert span_caps.thin_summary(table, [25]) == (f"- 25 kept: all found in 1 of 1 draws (1 cells), none in 0; "
                                                    f"clean flagged at most {got[0]['fp']}")
