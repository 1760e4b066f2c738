"""benchmarks/span_margins.py on a bench folder laid out as `poisonguard bench` writes it, with the real `span`
fits of recorded gains (tests/fixtures/span_gains.npz): each cell's statistics are read back from the stored
fit, the decision matches the detector's, and a folder that is no bench folder is a one-line error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from poisonguard.detect.span import AnswerSpanDetector
from tests.detect.test_span import _recorded

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import span_margins


def _cell(bench: Path, name: str, recorded: str, kind: str, asr: float | None) -> AnswerSpanDetector:
    feats, _ = _recorded(recorded)
    det = AnswerSpanDetector().fit(feats)
    flagged = int(det.score(feats).flagged.sum())
    cell = bench / "cells" / name
    (cell / "report" / "gmm").mkdir(parents=True)
    (cell / "report" / "gmm" / "detectors.json").write_text(json.dumps({"span": det.to_state()}))
    (cell / "result.json").write_text(json.dumps({
        "cell": name, "kind": kind, "attack": "clean" if kind == "clean" else recorded, "after": {"asr": asr},
        "detection": {"span": {"n_flagged": flagged}}}))
    return det


def test_margins_are_read_back_from_the_stored_fits(tmp_path):
    bench = tmp_path / "bench"
    dk = _cell(bench, "dual_key_r0.05_s0", "dual_key", "attack", 0.94)
    cl = _cell(bench, "clean_s0", "clean", "clean", None)
    (bench / "cells" / "unscreened_s0").mkdir()  # a cell without a screen is left out, not an error
    (bench / "world.json").write_text(json.dumps({"path": "work/world", "world": {"seed": 0}}))
    rows = {r["cell"]: r for r in span_margins.rows(bench)}
    assert set(rows) == {"dual_key_r0.05_s0", "clean_s0"}
    for row, det in ((rows["dual_key_r0.05_s0"], dk), (rows["clean_s0"], cl)):
        f = det.to_state()["fitted"]
        assert row["accepted"] == f["accepted"] and np.isclose(row["valley"], f["valley"])
        assert np.isclose(row["ashman_d"], f["ashman_d"]) and row["k"] == f["k"]
        first = next(iter(row["steps"].values()))  # step 1's D is the fit's D; a step taken has its valley
        assert np.isclose(first["d"], f["ashman_d"])
        assert all((v["valley"] is None) == (k not in f["valleys"]) for k, v in row["steps"].items())
    assert rows["dual_key_r0.05_s0"]["accepted"] and rows["dual_key_r0.05_s0"]["learned"] is True
    assert not rows["clean_s0"]["accepted"] and rows["clean_s0"]["flagged"] == 0
    assert rows["clean_s0"]["valley"] > 0.5 > rows["dual_key_r0.05_s0"]["valley"]  # the cut between them
    assert {r["role"] for r in rows.values()} == {"chose"}
    table = span_margins.markdown(list(rows.values()))
    assert "| clean_s0 | clean | – | – |" in table and "valley/peak ≤ 0.5" in table
    assert f"| {span_margins._steps(rows['clean_s0']['steps'])} |" in table and " / –" in table  # a step not taken


def test_cells_of_another_world_are_held_out_whatever_their_names(tmp_path):
    bench = tmp_path / "bench"
    _cell(bench, "clean_s0", "clean", "clean", None)
    (bench / "world.json").write_text(json.dumps({"path": "work/world-d1", "world": {"seed": 1}}))
    assert [r["role"] for r in span_margins.rows(bench)] == ["held-out world (seed 1)"]
    (bench / "world.json").unlink()
    assert [r["role"] for r in span_margins.rows(bench)] == ["checks (world not recorded)"]


def test_a_folder_without_cells_is_a_one_line_error(tmp_path):
    r = subprocess.run([sys.executable, str(BENCHMARKS / "span_margins.py"), "--bench", str(tmp_path)],
                       capture_output=True, text=True, check=False, timeout=120)
    assert r.returncode == 1 and r.stderr.strip().startswith("error: ") and "no cells/" in r.stderr
