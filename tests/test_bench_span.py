"""benchmarks/bench_span.py end to end on the tiny world, the base model standing in for the fine-tuned one:
every section is written, and with no fine-tuning gain nothing is flagged anywhere."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_span


def test_bench_span_runs_and_the_base_model_flags_nothing(tiny_world, tmp_path):
    world, _ = tiny_world
    ids = [s["id"] for s in json.loads((world / "train.json").read_text())]
    truth = tmp_path / "poison_ids.json"
    truth.write_text(json.dumps({"poison_ids": ids[:2]}))
    base = world / "base_model"
    res = bench_span.main(["--data", str(world / "train.json"), "--truth", str(truth), "--base", str(base),
                           "--finetuned", str(base), "--clean", str(world / "train.json"),
                           "--out", str(tmp_path / "out"), "--batch-size", "4", "--threads", "1"])
    assert (tmp_path / "out" / "span_bench.json").is_file()
    assert res["drop"]["n"] == len(ids) and res["drop"]["n_flagged"] == 0
    assert res["base_model_control"]["n_flagged"] == 0
    assert res["clean_set_same_finetune"]["n_flagged"] == 0
    assert {row["rate"] for row in res["subsampled_rates"]} == {0.005, 0.01, 0.02, 0.05, 0.2}
