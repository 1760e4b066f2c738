"""benchmarks/bench_rebuilt.py: a folder's cells on a rebuilt base model beside the record's cells of the same
world, each side judged as the grid judges it (learned, goal met or its distance, controls silent)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.test_bench_grid import _cell

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import bench_grid
import bench_rebuilt


def test_each_cell_is_judged_on_both_builds_and_sibling_worlds_are_not_its_counterpart(tmp_path, capsys):
    old, new, record = tmp_path / "bench-old", tmp_path / "bench-new", tmp_path / "cells.csv"
    _cell(old, "badnet_r0.01_s0", "badnet", 0.01, 0, asr=0.40, f1=0.90, flagged=45)  # not learned before
    _cell(old, "sig_r0.05_s0", "sig", 0.05, 0, asr=0.95, f1=1.00, flagged=250)
    _cell(old, "sig_r0.1_s0_norelabel", "sig", 0.1, 0, asr=0.0, f1=0.0, flagged=3, kind="no_relabel")
    bench_grid.main(["--bench", str(old), "--record", str(record)])
    rows = pd.read_csv(record)
    sibling = rows[rows["cell"] == "sig_r0.05_s0"].assign(world="world-d0c (describe_frac 0.25)", f1=0.5)
    pd.concat([rows, sibling]).to_csv(record, index=False)  # the same cell on a sibling world: not a counterpart
    _cell(new, "badnet_r0.01_s0", "badnet", 0.01, 0, asr=0.92, f1=0.97, flagged=51)
    _cell(new, "sig_r0.05_s0", "sig", 0.05, 0, asr=0.96, f1=0.90, flagged=280)
    _cell(new, "sig_r0.1_s0_norelabel", "sig", 0.1, 0, asr=0.0, f1=0.0, flagged=0, kind="no_relabel")
    _cell(new, "dual_key_r0.02_s1", "dual_key", 0.02, 1, asr=0.90, f1=1.0, flagged=100)  # not in the record
    _cell(new, "sig_r0.1_s1_norelabel", "sig", 0.1, 1, asr=0.0, f1=0.0, flagged=2, kind="no_relabel")  # nor this
    (new / "world.json").write_text(json.dumps({"path": str(tmp_path / "world"), "base_model_sha256": {"m": "ab"},
                                                "host": {"aten": "AVX2"}}))
    bench_grid.main(["--bench", str(new), "--record", str(record)])  # the record now holds both builds' rows
    text = bench_rebuilt.main(["--record", str(record), "--bench", str(new)])
    assert "| badnet 1 % s0 | attack | 0.400 / 1.000 / 0.90 / 45 (bench-old) | 0.920 / 1.000 / 0.97 / 51 | " \
           "not learned | met |" in text
    assert text.count("| sig 5 % s0 | attack |") == 1 and "| sig 5 % s0 | attack | 0.950 / 1.000 / 1.00 / 250" in text
    assert "| met | short -0.05 |" in text
    assert "| no_relabel | " in text and "| 3 flagged | silent |" in text
    assert "| dual_key 2 % s1 | attack | – / – / – / – | 0.900 / 1.000 / 1.00 / 100 | — | met |" in text
    assert "| sig 10 % s1 | no_relabel | – / – / – / – | 0.000 / 1.000 / 0.00 / 2 | — | 2 flagged |" in text
    assert text.rstrip().endswith("5 rebuilt cells, 3 with a recorded counterpart; same verdict on 0; before: 1 "
                                  "learned, goal met on 1; rebuilt: 3 learned, goal met on 2")
    assert '"ab"' in text and "AVX2" in text


def test_a_folder_that_records_no_world_is_refused(tmp_path):
    bench, record = tmp_path / "bench", tmp_path / "cells.csv"
    _cell(bench, "sig_r0.05_s0", "sig", 0.05, 0, asr=0.95, f1=1.0, flagged=250)
    bench_grid.main(["--bench", str(bench), "--record", str(record)])
    with pytest.raises(SystemExit, match="records no world"):
        bench_rebuilt.main(["--record", str(record), "--bench", str(bench)])
