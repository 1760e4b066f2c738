"""`poisonguard audit-table` on a tiny bench that the test runs itself (`poisonguard bench`, two attacks, a
no-relabel control, the clean cell): one row per fine-tuned cell, the detection numbers exactly as the bench
measured them, the fusion refit reproducing the bench, resuming, the README block, bad input. Real world,
real fine-tunes, real screening; the sizes are tiny (12 samples, a 2-layer LM), so the numbers mean nothing
-- the test checks the machinery and the bookkeeping."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from poisonguard.bench.audit_table import README_END, README_START
from poisonguard.cli import app

runner = CliRunner()

# A 2-layer model and 12 samples: 2 strata, TCAP's layer filter inside the model, a one-epoch fine-tune; only
# the three detectors the table reads.
PARAMS = """\
profile_heads: {strata_k: 2}
fit_gmm:
  detectors: {fused: {}, tcap_plus: {}, projector: {}}
em_vote: {decide: fused, annotators: [fused, projector]}
finetune:
  epochs: 1.0
  batch_size: 16
"""
ATTACKS = ("badnet", "pl_logo")


@pytest.fixture(scope="module")
def tiny_bench(tiny_world, tmp_path_factory):
    world, _ = tiny_world
    tmp = tmp_path_factory.mktemp("audit_bench")
    (tmp / "params.yaml").write_text(PARAMS)
    r = runner.invoke(
        app,
        [
            "bench",
            "--world",
            str(world),
            "--out",
            str(tmp / "bench"),
            "--attacks",
            ",".join(ATTACKS),
            "--rates",
            "0.3",
            "--controls",
            "badnet",
            "--params",
            str(tmp / "params.yaml"),
        ],
    )
    assert r.exit_code == 0, r.output
    return tmp / "bench"


@pytest.fixture(scope="module")
def table_run(tiny_bench):
    r = runner.invoke(app, ["audit-table", "--bench", str(tiny_bench), "--quiet"])
    assert r.exit_code == 0, r.output
    return tiny_bench, r


def _results(bench) -> dict[str, dict]:
    out = {}
    for p in (bench / "cells").glob("*/result.json"):
        res = json.loads(p.read_text())
        out[p.parent.name] = res
    return out


def test_one_row_per_fine_tuned_cell_in_table_order(table_run):
    bench, r = table_run
    summary = json.loads((bench / "audit" / "audit_table.json").read_text())
    rows = summary["rows"]
    assert [(row["kind"], row["attack"]) for row in rows] == [
        ("attack", "badnet"),
        ("attack", "pl_logo"),
        ("no_relabel", "badnet"),
        ("clean", None),
    ]
    base_cells = [name for name, res in _results(bench).items() if res.get("kind") == "base_model"]
    for name in base_cells:  # the base-model control has no fine-tune: left out, and said so
        assert any(line.startswith(f"{name}: base-model control") for line in summary["skipped"])
    md = (bench / "audit" / "audit_table.md").read_text()
    assert md in r.output
    assert md.count("\n| badnet 30% |") == 2 and "| clean fine-tune (0%) | – / " in md
    assert "Clean-set flag rate (clean_s0): projector" in md


def test_rows_carry_the_audit_and_the_bench_numbers(table_run):
    bench, _ = table_run
    summary = json.loads((bench / "audit" / "audit_table.json").read_text())
    results = _results(bench)
    for row in summary["rows"]:
        res = results[row["cell"]]
        for det in ("projector", "tcap_plus", "fused"):
            assert row["detection"][det] == res["detection"][det], (row["cell"], det)
        assert [lay["layer"] for lay in row["spectrum"]] == ["linear_1", "linear_2"]
        for lay in row["spectrum"]:
            assert 0 <= lay["top1"] <= lay["top4"] <= 1 + 1e-9
        assert sorted(row["remove"], key=int) == ["1", "2", "4"] == sorted(row["reconstruct"], key=int)
        assert row["finetuned"]["cp"] == pytest.approx(res["after"]["cp"]), "same test set, same model"
        assert row["fusion"]["reproduces_bench"], row["cell"]
        assert row["fusion"]["alt"]["scores"] == ["drift_max_rel", "drift_mean_rel"]
        assert row["norm_law_n_tokens"]["clean"] > 0
        if row["kind"] == "clean":
            assert row["norm_law_r"]["poisoned"] is None
        else:
            assert (
                row["norm_law_n_tokens"]["poisoned"] > 0
                and row["image_r"]["poisoned"]["n"] == row["n_poison"]
            )
        audit = bench / "audit" / "cells" / row["cell"]
        for name in ("audit.json", "spectra.png", "norm_law.png", "rank_k.png", "drift_scores.csv"):
            assert (audit / name).exists(), (row["cell"], name)


def test_rerun_skips_finished_cells_and_writes_the_readme_block(table_run, tmp_path):
    bench, _ = table_run
    rows = sorted((bench / "audit" / "cells").glob("*/row.json"))
    stamps = [p.stat().st_mtime_ns for p in rows]
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_START}\nold\n{README_END}\nrest\n")
    r = runner.invoke(app, ["audit-table", "--bench", str(bench), "--quiet", "--readme", str(readme)])
    assert r.exit_code == 0, r.output
    assert [p.stat().st_mtime_ns for p in rows] == stamps, "finished cells are not audited again"
    text = readme.read_text()
    md = (bench / "audit" / "audit_table.md").read_text()
    assert text.startswith("intro\n") and text.endswith("rest\n") and "old" not in text
    assert md in text and f"poisonguard audit-table --bench {bench}" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bench", "{tmp}/nothing"], "--bench: folder not found"),
        (["--bench", "{tmp}"], "not a `poisonguard bench` folder"),
        (["--bench", "{bench}", "--cells", "nope_s0"], "cells not found or not auditable: ['nope_s0']"),
        (["--bench", "{bench}", "--ks", "0"], "--ks must be comma-separated positive integers"),
        (["--bench", "{bench}", "--readme", "{tmp}/README.md"], "has no <!-- AUDIT:START -->"),
    ],
)
def test_bad_input_exits_2(table_run, tmp_path, args, message):
    bench, _ = table_run
    (tmp_path / "README.md").write_text("no markers\n")
    r = runner.invoke(app, ["audit-table", "--quiet", *[a.format(tmp=tmp_path, bench=bench) for a in args]])
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
