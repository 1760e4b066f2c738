"""`poisonguard audit` on the tiny world: the report it writes, what it prints, and exit code 2 on bad input."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from poisonguard.cli import app
from tests.audit.conftest import rank_one_projector_change

runner = CliRunner()


@pytest.fixture(scope="module")
def rank_one_model(tiny_world, tmp_path_factory):
    """The tiny world's base with a rank-1 change of the projector's last layer (a stand-in fine-tune)."""
    out, _ = tiny_world
    return rank_one_projector_change(out / "base_model", tmp_path_factory.mktemp("rank_one") / "model", seed=1)


def test_audit_writes_the_report_and_prints_a_summary(tiny_world, rank_one_model, tmp_path):
    world, _ = tiny_world
    train = json.loads((world / "train.json").read_text())
    truth = tmp_path / "poison_ids.json"
    truth.write_text(json.dumps({"poison_ids": [r["id"] for r in train[:4]]}))
    out = tmp_path / "audit"
    args = [
        "audit",
        "--base",
        str(world / "base_model"),
        "--finetuned",
        str(rank_one_model),
        "--out",
        str(out),
        "--data",
        str(world / "train.json"),
        "--truth",
        str(truth),
        "--test",
        str(world / "test.json"),
        "--attack",
        "badnet",
        "--ks",
        "1,2",
        "--layers",
        "joint",
        "--repair-k",
        "1",
        "--quiet",
    ]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    report = json.loads((out / "audit.json").read_text())
    first, second = report["weights"]["layers"]
    assert second["energy"]["top1"] == pytest.approx(1.0, abs=1e-6) and first["fro_norm"] == 0.0
    assert "linear_2: ΔW energy top-1 1.000" in r.output
    act = report["activations"]
    assert act["n_scored"] == len(train) and f"drift: {len(train)} samples scored" in r.output
    assert set(act["truth"]["norm_law"]) == {"all", "poisoned", "clean"}
    assert act["truth"]["image_norm_r"]["poisoned"]["n"] == 4
    rows = report["benchmark"]["rank_k"]
    assert {(x["mode"], x["layers"], x["k"]) for x in rows} == {
        (m, "joint", k) for m in ("remove", "reconstruct") for k in (1, 2)
    }
    repair = report["benchmark"]["repair"]
    removed_1 = next(x for x in rows if (x["mode"], x["k"]) == ("remove", 1))
    assert (repair["asr"], repair["cp"]) == (removed_1["asr"], removed_1["cp"]), "repair = joint removal"
    assert f"report -> {out / 'audit.json'}" in r.output


def test_weights_only_audit_needs_no_data(tiny_world, rank_one_model, tmp_path):
    world, _ = tiny_world
    r = runner.invoke(
        app,
        [
            "audit",
            "--base",
            str(world / "base_model"),
            "--finetuned",
            str(rank_one_model),
            "--out",
            str(tmp_path),
            "--quiet",
        ],
    )
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "audit.json").read_text())
    assert report["activations"] is None and report["benchmark"] is None
    assert "drift:" not in r.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--finetuned", "{tmp}/missing"], "model directory not found"),
        (["--test", "{world}/test.json"], "--test and --attack go together"),
        (["--test", "{world}/test.json", "--attack", "nope"], "unknown attack 'nope'"),
        (["--truth", "{world}/train.json"], "--truth scores the drift on --data"),
        (["--ks", "1,0"], "--ks must be comma-separated positive integers"),
        (["--data", "{tmp}/missing.json"], "--data: file not found"),
        (["--layers", "some"], "layer_sets must be one of"),
        (["--finetuned", "{world}"], "error:"),  # a folder that holds no model
    ],
)
def test_bad_input_exits_2_with_one_line(tiny_world, rank_one_model, tmp_path, extra, message):
    world, _ = tiny_world
    extra = [e.format(tmp=tmp_path, world=world) for e in extra]
    args = [
        "audit",
        "--base",
        str(world / "base_model"),
        "--finetuned",
        str(rank_one_model),
        "--out",
        str(tmp_path / "out"),
        "--quiet",
        *extra,
    ]
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert "Traceback" not in r.output
