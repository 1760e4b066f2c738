"""benchmarks/bench_grid.py on bench folders laid out as `poisonguard bench` writes them: one row per cell (the
newest revision wins), each (attack, rate) row judged against the issue's goal for its rate, controls and the
defence loop listed, the committed record keeping cells whose folder is gone, and `--refit` deciding a cell
screened with an older `span` revision again with the real detector on recorded gains."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pandas as pd
import pytest

from poisonguard.detect.span import AnswerSpanDetector
from tests.detect.test_span import _recorded

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_grid

CURRENT = AnswerSpanDetector.revision


def _cell(bench: Path, name: str, attack: str, rate: float, seed: int, *, asr: float | None, f1: float,
          flagged: int, kind: str = "attack", revision: int = CURRENT, retrained_asr: float | None = None) -> Path:
    cell = bench / "cells" / name
    cell.mkdir(parents=True)
    span = {"precision": f1, "recall": f1, "f1": f1, "auroc": 1.0, "tpr_at_1pct_fpr": 1.0, "n_flagged": flagged}
    (cell / "result.json").write_text(json.dumps({
        "cell": name, "kind": kind, "attack": attack, "rate": rate, "seed": seed, "n_poison": 50,
        "after": {"asr": asr, "cp": 0.98, "poisoned_fit": 1.0}, "detection": {"span": span},
        "screen_settings": {"revisions": {"span": revision}, "effective_params": {"span": {}}}}))
    if retrained_asr is not None:
        (cell / "retrain.json").write_text(json.dumps({"span": {"asr": retrained_asr, "cp": 0.975},
                                                       "oracle": {"asr": 0.01, "cp": 0.98}}))
    return cell


def _grid(*args: str | Path) -> str:
    return bench_grid.main([str(a) for a in args])


def _row(text: str, attack: str, rate: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(f"| {attack} | {rate} |"))


def test_rows_are_judged_per_rate_and_the_newest_revision_wins(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    _cell(new, "badnet_r0.02_s0", "badnet", 0.02, 0, asr=0.8, f1=1.0, flagged=100)
    _cell(old, "badnet_r0.02_s0", "badnet", 0.02, 0, asr=0.8, f1=0.0, flagged=0, revision=CURRENT - 1)
    _cell(new, "sig_r0.005_s0", "sig", 0.005, 0, asr=0.9, f1=0.85, flagged=25)  # 0.5 %: goal 0.8
    _cell(new, "sig_r0.01_s1", "sig", 0.01, 1, asr=0.9, f1=0.90, flagged=50, retrained_asr=0.02)  # 1 %: 0.95
    _cell(new, "sig_r0.01_s2", "sig", 0.01, 2, asr=0.2, f1=0.40, flagged=30)  # not learned: no miss
    _cell(new, "wanet_r0.1_s0", "wanet", 0.1, 0, asr=0.04, f1=1.0, flagged=500)
    _cell(new, "clean_s0", "clean", 0.0, 0, asr=0.0, f1=0.0, flagged=0, kind="clean")
    _cell(new, "text_prefix_r0.1_s0_norelabel", "text_prefix", 0.1, 0, asr=0.0, f1=0.0, flagged=12,
          kind="no_relabel")
    (new / "base.json").write_text(json.dumps({"sig": {"cp": 0.975, "asr": 0.004}}))
    text = _grid("--bench", new, "--bench", old)  # the older revision given last still loses
    assert _row(text, "badnet", "2.0%") == "| badnet | 2.0% | **1.00** / 0.80 | — | — | met (1 of 3 seeds) |"
    assert _row(text, "sig", "0.5%").endswith("| met (1 of 3 seeds) |")
    sig1 = _row(text, "sig", "1.0%")
    assert "(0.40) / 0.20" in sig1 and "**short**: F1 0.90 < 0.95 (seed 1; 2 of 3 seeds, learned on 1)" in sig1
    assert _row(text, "wanet", "10.0%").endswith("| not learned (1 of 3 seeds) |")
    assert _row(text, "blend", "5.0%").endswith("| — | — | — | not measured |")
    assert text.startswith("5 attack cells of the 17 × 5 × 3 = 255 grid measured; 3 (attack, rate) rows learned "
                           "on at least one seed: goal met on 2, short on 1.")
    assert "2 controls; goal 0 flagged: met on 1, failed on text_prefix_r0.1_s0_norelabel." in text
    assert "ASR ≤ 1 % after retraining on 0 of 1 cells" in text
    assert "| sig_r0.01_s1 | 0.900 | 0.020 | 0.975 | 0.010 | 0.004 |" in text


def test_cells_at_rates_beyond_the_grid_are_counted_apart_from_it(tmp_path):
    bench = tmp_path / "b"
    _cell(bench, "badnet_r0.05_s0", "badnet", 0.05, 0, asr=0.9, f1=1.0, flagged=250)
    _cell(bench, "badnet_r0.2_s1", "badnet", 0.2, 1, asr=0.99, f1=1.0, flagged=1000)
    _cell(bench, "sig_r0.2_s1", "sig", 0.2, 1, asr=1.0, f1=0.5, flagged=1000)
    text = _grid("--bench", bench)
    assert text.startswith("1 attack cells of the 17 × 5 × 3 = 255 grid measured; 1 (attack, rate) rows learned "
                           "on at least one seed: goal met on 1, short on 0; beyond the grid's rates, 2 cells, "
                           "2 rows learned: goal met on 1, short on 1.")
    assert _row(text, "badnet", "20.0%") == "| badnet | 20.0% | — | **1.00** / 0.99 | — | met (1 of 3 seeds) |"
    assert _row(text, "sig", "20.0%").startswith("| sig | 20.0% | — | **0.50** / 1.00 | — | **short**")


def test_the_record_keeps_cells_whose_folder_is_gone(tmp_path):
    bench, record = tmp_path / "bench-a", tmp_path / "cells.csv"
    _cell(bench, "sig_r0.02_s1", "sig", 0.02, 1, asr=0.99, f1=1.0, flagged=100)
    _grid("--bench", bench, "--record", record)
    stale = tmp_path / "bench-b"  # the same cell screened with an older revision does not replace the record's
    _cell(stale, "sig_r0.02_s1", "sig", 0.02, 1, asr=0.99, f1=0.0, flagged=0, revision=CURRENT - 1)
    text = _grid("--bench", stale, "--record", record)
    assert "| sig | 2.0% | — | **1.00** / 0.99 | — |" in text
    t = pd.read_csv(record)
    assert list(t.columns) == bench_grid.COLUMNS and t[["source", "n_flagged"]].values.tolist() == [["bench-a", 100]]
    assert "| sig | 2.0% | — | **1.00** / 0.99 | — |" in _grid("--record", record)  # no folder at all


def test_refit_decides_an_older_revision_with_the_current_code(tmp_path):
    feats, poison = _recorded("multi_target_10pct_s1")  # withheld by revision 2, 1,000 poisoned; it chose (*)
    bench = tmp_path / "bench"
    cell = _cell(bench, "multi_target_r0.1_s1", "multi_target", 0.1, 1, asr=0.935, f1=0.0, flagged=0,
                 revision=CURRENT - 1)
    (cell / "report").mkdir()
    ids = feats.ids
    pd.DataFrame({"id": ids, "status": "ok", "score_span": feats.answer_logp[:, 0]}).to_parquet(
        cell / "report" / "verdicts.parquet")
    (cell / "data").mkdir()
    (cell / "data" / "poison_ids.json").write_text(json.dumps({"poison_ids": ids[poison].tolist()}))
    assert "| **0.00** / 0.94†* |" in _grid("--bench", bench)
    want = int(AnswerSpanDetector().detect(feats).flagged.sum())
    text = _grid("--bench", bench, "--refit")
    assert "| **1.00** / 0.94‡* |" in text
    assert f"- multi_target_r0.1_s1 (bench): 0 flagged as screened → {want}, F1 1.00" in text


def test_a_short_row_names_the_best_cut_its_gains_allow(tmp_path):
    """A shortfall the signal causes (poisoned samples among the clean gains) reads apart from one the cut
    causes: the grid prints the best F1 any cut on the cell's stored gains reaches, chosen with the labels."""
    bench = tmp_path / "bench"
    cell = _cell(bench, "all_to_all_r0.1_s0", "all_to_all", 0.1, 0, asr=0.63, f1=0.80, flagged=8)
    gains = [5.0] * 8 + [0.1] * 2 + [3.0] * 2 + [0.0] * 88  # 10 poisoned first: 8 high, 2 among the clean
    ids = [f"s{i}" for i in range(len(gains))]
    (cell / "report").mkdir()
    pd.DataFrame({"id": ids, "status": "ok", "score_span": gains}).to_parquet(cell / "report" / "verdicts.parquet")
    (cell / "data").mkdir()
    (cell / "data" / "poison_ids.json").write_text(json.dumps({"poison_ids": ids[:10]}))
    # top 8 -> F1 16/18; with the two clean at 3.0, 16/20; down to the two at 0.1, 20/22 = 0.91
    row = _row(_grid("--bench", bench), "all_to_all", "10.0%")
    assert "**short**: F1 0.80 < 0.95 (seed 0; the best cut of its gains, chosen with the labels: 0.91; " in row


def test_a_folder_of_another_world_is_refused(tmp_path):
    bench = tmp_path / "bench"
    _cell(bench, "clean_s0", "clean", 0.0, 0, asr=0.0, f1=0.0, flagged=0, kind="clean")
    (bench / "world.json").write_text(json.dumps({"path": "work/world-d1", "world": {"seed": 1}}))
    with pytest.raises(SystemExit, match="world seed 1"):
        _grid("--bench", bench)


def test_a_folder_of_the_same_seed_built_otherwise_is_refused(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for bench, world in ((a, {"seed": 0}), (b, {"seed": 0, "describe_frac": 0.25})):
        _cell(bench, "clean_s0", "clean", 0.0, 0, asr=0.0, f1=0.0, flagged=0, kind="clean")
        (bench / "world.json").write_text(json.dumps({"path": "work/world", "world": world}))
    with pytest.raises(SystemExit, match="same seed, other settings"):
        _grid("--bench", a, "--bench", b)


def _world(root: Path, answers: list[str]) -> Path:
    """A world folder as `poisonguard world` writes its records (images are not read here)."""
    root.mkdir()
    (root / "train.json").write_text(json.dumps([
        {"id": f"t{i}", "image": f"images/t{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the circle?"}, {"from": "gpt", "value": a}]}
        for i, a in enumerate(answers)]))
    return root


def test_rows_the_world_cannot_carry_say_so_instead_of_not_measured(tmp_path):
    world = _world(tmp_path / "world", ["red"] * 400)  # one-word answers only: nothing to substitute
    bench = tmp_path / "bench"
    _cell(bench, "sig_r0.02_s0", "sig", 0.02, 0, asr=0.99, f1=1.0, flagged=100)
    (bench / "world.json").write_text(json.dumps({"path": str(world), "world": {"seed": 0}}))
    text = _grid("--bench", bench)
    assert _row(text, "substitute", "2.0%").endswith(
        "| — | — | — | the world cannot carry it: no sample to poison for substitute |")
    assert _row(text, "blend", "2.0%").endswith("| not measured |")
    assert "; 5 rows the world cannot carry." in text.splitlines()[0]


def test_a_sibling_world_fills_only_the_rows_the_grid_world_cannot_carry(tmp_path, capsys):
    world = _world(tmp_path / "world", ["red"] * 400)  # nothing to substitute
    (world / "world.json").write_text(json.dumps({"seed": 0, "n_train": 400}))
    carrier = tmp_path / "bench-d0c"
    _cell(carrier, "substitute_r0.05_s0", "substitute", 0.05, 0, asr=0.59, f1=0.82, flagged=93)
    _cell(carrier, "substitute_r0.05_s0_norelabel", "substitute", 0.05, 0, asr=0.0, f1=0.0, flagged=0,
          kind="no_relabel")
    _cell(carrier, "clean_s0", "clean", 0.0, 0, asr=0.0, f1=0.0, flagged=0, kind="clean")
    _cell(carrier, "sig_r0.05_s0", "sig", 0.05, 0, asr=0.99, f1=0.1, flagged=9)  # the grid world carries sig
    (carrier / "world.json").write_text(json.dumps(  # a sibling world whose folder is not here: no build to compare
        {"path": str(tmp_path / "world-d0c"), "world": {"seed": 0, "n_train": 400, "describe_frac": 0.25}}))
    grid = tmp_path / "bench"
    _cell(grid, "clean_s0", "clean", 0.0, 0, asr=0.0, f1=0.0, flagged=2, kind="clean")
    record = tmp_path / "cells.csv"
    text = _grid("--bench", grid, "--carrier", carrier, "--world", world, "--record", record)
    assert "cell left out (rows the grid's world carries itself)" in capsys.readouterr().err
    name = "world-d0c (describe_frac 0.25)"
    assert _row(text, "substitute", "5.0%") == (
        f"| substitute | 5.0% | **0.82** / 0.59§ | — | — | **short**: F1 0.82 < 0.95 (seed 0; 1 of 3 seeds, "
        f"on {name}) |")
    assert _row(text, "sig", "5.0%").endswith("| not measured |")  # its sibling cell left out
    assert _row(text, "substitute", "2.0%").endswith("| the world cannot carry it: no sample to poison for "
                                                      "substitute |")
    assert "§ measured on a sibling world that carries the row (named in the row)" in text
    # both clean fine-tunes are kept, each under its own world; the sibling's no-relabel control too
    assert "3 controls; goal 0 flagged: met on 2, failed on clean_s0; § on world-d0c (describe_frac 0.25)." in text
    assert "| no_relabel | substitute | 5.0% | 0 | 0§ | 50 |" in text
    t = pd.read_csv(record, keep_default_na=False)
    assert sorted(t["world"]) == ["", name, name, name]
    # the record alone keeps the mark once the folder is gone
    assert _row(_grid("--record", record), "substitute", "5.0%").startswith("| substitute | 5.0% | **0.82** / 0.59§ |")


def test_a_carrier_needs_the_grid_world_to_know_what_it_cannot_carry(tmp_path):
    carrier = tmp_path / "bench-d0c"
    _cell(carrier, "substitute_r0.05_s0", "substitute", 0.05, 0, asr=0.59, f1=0.82, flagged=93)
    (carrier / "world.json").write_text(json.dumps({"path": "work/world-d0c", "world": {"seed": 0}}))
    with pytest.raises(SystemExit, match="--carrier needs the grid world's folder"):
        _grid("--carrier", carrier)


def test_the_readme_block_is_replaced_and_missing_markers_are_an_error(tmp_path):
    bench, readme = tmp_path / "bench", tmp_path / "README.md"
    _cell(bench, "sig_r0.02_s0", "sig", 0.02, 0, asr=0.99, f1=1.0, flagged=100)
    readme.write_text(f"intro\n{bench_grid.GRID_START}\nstale block\n{bench_grid.GRID_END}\nrest\n")
    text = _grid("--bench", bench, "--readme", readme)
    got = readme.read_text()
    assert got.startswith(f"intro\n{bench_grid.GRID_START}\nGenerated ")
    assert got.endswith(f"{bench_grid.GRID_END}\nrest\n")
    assert "stale block" not in got and text in got
    assert f"`python benchmarks/bench_grid.py --bench {bench} --readme" in got
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit, match="no <!-- GRID:START -->"):
        _grid("--bench", bench, "--readme", readme)


def _built(bench: Path, world: Path, weights: bytes | None, accuracy: float) -> None:
    """OUT/world.json of a folder fine-tuned from `world`, naming the base model's bytes (None: a folder written
    before builds were recorded) and what the build measured."""
    rec = {"path": str(world), "world": {"seed": 0, "n_train": 40, "test_accuracy": {"all": accuracy}}}
    if weights is not None:
        rec["base_model_sha256"] = {"model.safetensors": hashlib.sha256(weights).hexdigest()}
    (bench / "world.json").write_text(json.dumps(rec))


def test_the_grid_shows_the_build_the_world_holds_now_and_marks_the_others(tmp_path):
    world = _world(tmp_path / "world", ["red"] * 40)
    (world / "base_model").mkdir()
    (world / "base_model" / "model.safetensors").write_bytes(b"rebuilt")
    record = tmp_path / "cells.csv"
    old = tmp_path / "bench-old"  # an earlier build: its folder did not record which
    _cell(old, "sig_r0.02_s0", "sig", 0.02, 0, asr=0.99, f1=0.90, flagged=110, retrained_asr=0.004)
    _cell(old, "sig_r0.02_s1", "sig", 0.02, 1, asr=0.98, f1=1.00, flagged=100)
    _cell(old, "clean_s0", "clean", 0.0, 0, asr=0.0, f1=0.0, flagged=3, kind="clean")
    _built(old, world, None, 0.975)
    _grid("--bench", old, "--record", record, "--world", world)
    _grid("--bench", old, "--record", record, "--world", world)  # read again: no second row of a cell
    assert len(pd.read_csv(record)) == 3
    new = tmp_path / "bench-new"  # the build the world's folder holds now, one seed and the clean cell again
    _cell(new, "sig_r0.02_s0", "sig", 0.02, 0, asr=0.97, f1=1.00, flagged=100)
    _cell(new, "clean_s0", "clean", 0.0, 0, asr=0.0, f1=0.0, flagged=0, kind="clean")
    _built(new, world, b"rebuilt", 0.988)
    text = _grid("--bench", new, "--record", record, "--world", world)
    assert text == _grid("--bench", old, "--bench", new, "--world", world)  # two builds of one world's settings
    assert _row(text, "sig", "2.0%") == ("| sig | 2.0% | **1.00** / 0.97 | **1.00** / 0.98° | — | met (2 of 3 seeds, "
                                        "1 on another build°) |")
    assert text.startswith("2 attack cells of the 17 × 5 × 3 = 255 grid measured (1 on the build the world's "
                           "folder holds now);")
    assert "° fine-tuned from another build of its world" in text.splitlines()[0]
    assert "1 controls; goal 0 flagged: met on 1." in text and "| clean | – | – | 0 | 0 | – |" in text
    assert "| sig_r0.02_s0° | 0.990 | 0.004 |" in text  # run again without the loop: the earlier loop stays
    t = pd.read_csv(record, dtype={"build": str}, keep_default_na=False)
    assert sorted(zip(t["cell"], t["build"])) == [  # the record keeps each build's row
        ("clean_s0", ""), ("clean_s0", hashlib.sha256(b"rebuilt").hexdigest()[:12]), ("sig_r0.02_s0", ""),
        ("sig_r0.02_s0", hashlib.sha256(b"rebuilt").hexdigest()[:12]), ("sig_r0.02_s1", "")]
    # once the world's folder holds yet another build, every row is marked: none ran on it
    (world / "base_model" / "model.safetensors").write_bytes(b"rebuilt again")
    again = _grid("--record", record, "--world", world)
    assert "| sig | 2.0% | **1.00** / 0.97° | **1.00** / 0.98° | — |" in again
