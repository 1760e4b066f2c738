"""`poisonguard bench --quick --retrain` end to end on the tiny world: every cell kind, the tables, the defence
loop, the HTML report with its plots, resuming, and the refusal to mix settings or worlds in one folder. Real
world, real fine-tunes, real screening; only the sizes are tiny (12 samples, a 2-layer LM), so the numbers mean
nothing -- the test checks the machinery and the bookkeeping."""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from poisonguard.cli import app

runner = CliRunner()

# A 2-layer model: TCAP's layer filter must fit it; 12 samples: 2 strata, a short fine-tune.
PARAMS = """\
profile_heads: {strata_k: 2}
fit_gmm:
  detectors: {span: {}, shift: {}, fused: {}, tcap_plus: {}, tcap: {l_sens: 1, h_sens: 2}, projector: {}, bye: {},
              spectral: {}, activation_clustering: {}}
finetune:
  epochs: 1.0
  batch_size: 16
"""


@pytest.fixture(scope="module")
def quick_run(tiny_world, tmp_path_factory):
    world, _ = tiny_world
    tmp = tmp_path_factory.mktemp("bench")
    (tmp / "params.yaml").write_text(PARAMS)
    args = ["bench", "--world", str(world), "--out", str(tmp / "out"), "--quick", "--retrain", "--rates", "0.3",
            "--params", str(tmp / "params.yaml")]
    t0 = time.perf_counter()
    r = runner.invoke(app, args)
    seconds = time.perf_counter() - t0
    assert r.exit_code == 0, r.output
    return tmp, args, r, seconds


def test_quick_runs_every_cell_kind_and_writes_the_tables(quick_run):
    tmp, _, r, seconds = quick_run
    out = tmp / "out"
    summary = json.loads((out / "summary.json").read_text())
    kinds = sorted((c["kind"], c["attack"]) for c in summary["cells"])
    assert kinds == [("attack", "badnet"), ("attack", "sig"), ("attack", "text_prefix"),
                     ("base_model", "badnet"), ("clean", "clean"), ("no_relabel", "badnet")]
    assert "--max-train 1000 --max-test 200 --retrain" in summary["command"]
    dets = summary["config"]["detectors"]
    for c in summary["cells"]:
        assert set(dets) <= set(c["detection"]), c["cell"]
        for d in dets:
            m = c["detection"][d]
            assert 0 <= m["flag_rate"] <= 1 and m["n_flagged"] == round(m["flag_rate"] * 12)
    base_cell = next(c for c in summary["cells"] if c["kind"] == "base_model")
    assert "after" not in base_cell and base_cell["n_poison"] == 4  # screened, never fine-tuned
    tables = (out / "tables.md").read_text()
    assert tables in r.output  # the CLI prints the tables it wrote
    for heading in ("Detection, F1 / AUROC", "Controls, share of samples flagged", "Defence loop",
                    "Goal check for `span`", "Goal check for `fused`"):
        assert heading in tables
    assert "| base model on badnet 30% | 1 |" in tables and "| clean set (0%) | 1 |" in tables
    assert f"{len(summary['cells'])} cells in" in r.output
    print(f"quick bench with retraining on the tiny world: {seconds:.0f} s")


def test_collecting_the_finished_cells_rebuilds_the_runs_tables(quick_run, tmp_path):
    """benchmarks/bench_collect.py (the tables of a folder filled by several runs) reads the cells back from
    disk alone; on a folder one run filled, its tables are that run's tables.md."""
    tmp, _, _, _ = quick_run
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import bench_collect

    text = bench_collect.main(["--bench", str(tmp / "out"), "--out", str(tmp_path / "all.md")])
    assert text == (tmp / "out" / "tables.md").read_text() == (tmp_path / "all.md").read_text()
    with pytest.raises(SystemExit, match="no cells/ folder"):
        bench_collect.main(["--bench", str(tmp_path)])


def test_defence_loop_retrains_per_distinct_cleaned_set(quick_run):
    tmp, *_ = quick_run
    summary = json.loads((tmp / "out" / "summary.json").read_text())
    for c in (c for c in summary["cells"] if c["kind"] == "attack"):
        retrain = c["retrain"]
        assert set(retrain) == {*summary["config"]["detectors"], "oracle"}
        oracle = retrain["oracle"]
        assert (oracle["n_poison_removed"], oracle["n_clean_removed"]) == (c["n_poison"], 0)
        keys = set()
        for entry in retrain.values():
            if entry["n_removed"] == 0:  # nothing removed: the vanilla model is the retrained one
                assert entry["reused"].startswith("vanilla")
                assert (entry["cp"], entry["asr"]) == (c["after"]["cp"], c["after"]["asr"])
            else:
                assert (tmp / "out" / "cells" / c["cell"] / "retrain" / entry["model"] / "eval.json").is_file()
                keys.add(entry["model"])
        models = list((tmp / "out" / "cells" / c["cell"] / "retrain").iterdir())
        assert len(models) == len(keys)  # one fine-tune per distinct cleaned set
    clean = next(c for c in summary["cells"] if c["kind"] == "clean")
    assert set(clean["asr_by_attack"]) >= {"badnet", "sig", "text_prefix"}


def test_html_report_has_every_plot_beside_it(quick_run):
    tmp, *_ = quick_run
    report = tmp / "out" / "report"
    page = (report / "index.html").read_text()
    images = re.findall(r'<img src="([^"]+)"', page)
    assert all((report / name).is_file() and (report / name).stat().st_size > 1000 for name in images)
    for attack in ("badnet", "sig", "text_prefix"):
        for kind in ("roc", "hist", "drift"):
            assert f"{kind}_{attack}.png" in images
        assert f"heads_{attack}_tcap.png" in images
        assert f"alloc_{attack}.png" in images or "Allocation shift" in page
    assert "controls_flag_rate.png" in images
    assert "<table>" in page and "base model on badnet 30%" in page


def test_rerun_resumes_without_recomputing(quick_run):
    tmp, args, _, _ = quick_run
    cells = tmp / "out" / "cells"
    stamps = {p: p.stat().st_mtime_ns for p in cells.glob("*/finetuned/finetune.json")}
    stamps |= {p: p.stat().st_mtime_ns for p in cells.glob("*/retrain/*/eval.json")}
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert not re.search(r"\] (fine-tuning on|screening with|retraining without)", r.output), r.output
    assert "results unchanged; HTML report kept" in r.output
    assert stamps and all(p.stat().st_mtime_ns == t for p, t in stamps.items())


def test_other_settings_in_the_same_folder_are_refused(quick_run):
    _, args, _, _ = quick_run
    r = runner.invoke(app, [*args, "--max-train", "6"])
    assert r.exit_code == 2
    assert "other settings" in r.output and "max_train" in r.output


def test_another_world_in_the_same_folder_is_refused(quick_run, tiny_world, tmp_path):
    import shutil

    tmp, args, _, _ = quick_run
    world, _ = tiny_world
    assert json.loads((tmp / "out" / "world.json").read_text())["world"]["seed"] == 3
    other = tmp_path / "other_world"
    shutil.copytree(world, other)
    identity = json.loads((other / "world.json").read_text())
    (other / "world.json").write_text(json.dumps({**identity, "seed": 4}))
    at = args.index("--world") + 1
    r = runner.invoke(app, [*args[:at], str(other), *args[at + 1:]])
    assert r.exit_code == 2
    assert "another world (world seed 3, this one 4" in r.output and "differs in seed" in r.output


def test_another_build_of_the_same_world_is_refused(quick_run, tiny_world, tmp_path):
    """Same world.json, other base-model bytes (a rebuild on another host): the folder's cells started from other
    weights, so resuming into it is refused and the message names the recorded hash and host."""
    import shutil

    tmp, args, _, _ = quick_run
    world, _ = tiny_world
    rec = json.loads((tmp / "out" / "world.json").read_text())
    weights = min((Path(world) / "base_model").glob("*.safetensors"))
    recorded = hashlib.sha256(weights.read_bytes()).hexdigest()  # what `sha256sum` prints for the file
    assert rec["base_model_sha256"] == {weights.name: recorded}
    assert set(rec["host"]) == {"torch", "aten", "mkl_cbwr", "onednn_max_cpu_isa", "threads"}
    other = tmp_path / "rebuilt_world"
    shutil.copytree(world, other)
    rebuilt = other / "base_model" / weights.name
    rebuilt.write_bytes(rebuilt.read_bytes() + b" ")  # other bytes; never loaded: the check comes first
    at = args.index("--world") + 1
    r = runner.invoke(app, [*args[:at], str(other), *args[at + 1:]])
    assert r.exit_code == 2
    assert f"another build of this world: its base model's {weights.name} differs" in r.output
    assert recorded[:12] in r.output


def test_unknown_attack_is_a_readable_error(tmp_path):
    r = runner.invoke(app, ["bench", "--world", str(tmp_path), "--attacks", "badnet,nosuch"])
    assert r.exit_code == 2 and "unknown attack(s) nosuch" in r.output


def test_missing_world_is_a_readable_error(tmp_path):
    r = runner.invoke(app, ["bench", "--world", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "build the world first" in r.output


def test_defence_loop_scope_limits_the_retrained_cells_and_methods(quick_run):
    """--retrain-seeds/-rates/-detectors: the summary holds only the asked-for methods (plus the oracle), no
    new fine-tune runs for methods already retrained, and the command that reproduces it names the scope."""
    tmp, args, _, _ = quick_run
    r = runner.invoke(app, [*args, "--retrain-detectors", "fused,spectral", "--retrain-rates", "0.3"])
    assert r.exit_code == 0, r.output
    assert "retraining without" not in r.output  # everything in scope was retrained by the first run
    summary = json.loads((tmp / "out" / "summary.json").read_text())
    assert "--retrain --retrain-rates 0.3 --retrain-detectors fused,spectral" in summary["command"]
    for c in (c for c in summary["cells"] if c["kind"] == "attack"):
        assert set(c["retrain"]) == {"fused", "spectral", "oracle"}
    clean = next(c for c in summary["cells"] if c["kind"] == "clean")  # rate 0: in scope by its seed
    assert set(clean["asr_by_attack"]) >= {"badnet", "sig", "text_prefix"}
    r = runner.invoke(app, [*args, "--retrain-seeds", "7"])  # no cell of seed 7: no defence rows at all
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp / "out" / "summary.json").read_text())
    assert not any(c.get("retrain") or c.get("asr_by_attack") for c in summary["cells"])
    assert "Defence loop" not in (tmp / "out" / "tables.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--seeds", "0,x"], "--seeds takes comma-separated ints, got '0,x'"),
    (["--retrain-rates", "ten"], "--retrain-rates takes comma-separated floats"),
    (["--retrain-detectors", "shift,nosuch"], "--retrain-detectors: nosuch not among the benchmark's detectors"),
])
def test_bad_option_values_are_readable_errors(tmp_path, args, message):
    r = runner.invoke(app, ["bench", "--world", str(tmp_path), *args])
    assert r.exit_code == 2 and message in r.output, r.output


def test_attacks_the_world_cannot_carry_are_dropped_up_front_with_the_reason(tmp_path):
    import json as _json

    from poisonguard.bench.run import ALL_ATTACKS, BenchConfig, WorldFiles, drop_unpoisonable
    from tests.attacks.helpers import make_dataset

    samples, images = make_dataset(40)  # short answers only: no multi-word answer to substitute in
    for ref, img in images.items():
        (tmp_path / ref).parent.mkdir(parents=True, exist_ok=True)
        img.save(tmp_path / ref)
    (tmp_path / "train.json").write_text(_json.dumps([s.raw for s in samples]))
    world = WorldFiles(tmp_path / "train.json", tmp_path / "train.json", tmp_path)
    cfg = BenchConfig(world=tmp_path, out=tmp_path / "out", rates=(0.05, 0.1))
    assert set(cfg.attacks) == set(ALL_ATTACKS) and {"dual_key", "multi_target", "all_to_all"} <= set(ALL_ATTACKS)
    kept, skipped = drop_unpoisonable(cfg, world, log=lambda m: None)
    assert skipped == {"substitute": "no sample to poison at rate 0.05 for substitute"}
    assert kept.attacks == tuple(a for a in ALL_ATTACKS if a != "substitute") and kept.controls == ("badnet",)
    tiny = BenchConfig(world=tmp_path, out=tmp_path / "out", attacks=("badnet",), rates=(0.01,))
    assert drop_unpoisonable(tiny, world, log=lambda m: None)[1] == {
        "badnet": "no sample to poison at rate 0.01 for badnet"}  # 0.4 of a sample rounds to none
    # params.yaml's poison.attacks reach the bench: a part ratio that leaves a Dual-Key part without samples
    tuned = BenchConfig(world=tmp_path, out=tmp_path / "out", attacks=("dual_key",), rates=(0.1,),
                        attack_params={"dual_key": {"part_ratio": 0.1}})
    assert drop_unpoisonable(tuned, world, log=lambda m: None)[1] == {
        "dual_key": "no sample to poison at rate 0.1 for image_only, text_only"}


def test_attack_params_are_part_of_the_settings_only_when_set(tmp_path):
    from poisonguard.bench.run import BenchConfig, finetune_settings

    plain = finetune_settings(BenchConfig(world=tmp_path, out=tmp_path))
    assert "attack_params" not in plain  # folders of earlier runs stay valid
    tuned = finetune_settings(BenchConfig(world=tmp_path, out=tmp_path, attack_params={"badnet": {"side_frac": 0.25}}))
    assert tuned == {**plain, "attack_params": {"badnet": {"side_frac": 0.25}}}


def test_a_revised_detector_rule_is_part_of_the_screen_settings(tmp_path, monkeypatch):
    """A change of decision logic with the same parameters re-screens finished cells: the revision of each
    detector the settings configure is part of what a cell's detection depends on, named only past revision 1
    (folders screened before revisions were recorded stay valid)."""
    from poisonguard.bench.run import BenchConfig, screen_settings
    from poisonguard.detect.span import AnswerSpanDetector

    cfg = BenchConfig(world=tmp_path, out=tmp_path)
    assert AnswerSpanDetector.revision >= 2
    assert screen_settings(cfg)["revisions"] == {"span": AnswerSpanDetector.revision}
    monkeypatch.setattr(AnswerSpanDetector, "revision", 1)
    assert "revisions" not in screen_settings(cfg)


def test_cli_bench_takes_all_attacks_by_name(tmp_path):
    from typer.testing import CliRunner

    from poisonguard.cli import app

    r = CliRunner().invoke(app, ["bench", "--world", str(tmp_path / "none"), "--out", str(tmp_path / "o"),
                                 "--attacks", "all", "--no-screen"])
    assert r.exit_code == 2 and "not found: build the world first" in r.output  # 'all' passed the name check
    r = CliRunner().invoke(app, ["bench", "--world", str(tmp_path / "none"), "--attacks", "badnet,nope"])
    assert r.exit_code == 2 and "unknown attack(s) nope" in r.output
