"""End to end on a very small world: `poisonguard screen` writes the report contract of DESIGN §3."""

from __future__ import annotations

import json

import pandas as pd
from typer.testing import CliRunner

from poisonguard.cli import app
from poisonguard.data import read_dataset

runner = CliRunner()


def test_screen_writes_the_report_contract(tiny_world, tmp_path):
    out, _ = tiny_world
    data = json.loads((out / "train.json").read_text())
    # one sample that must be quarantined (image outside the folder), one text-only sample that must pass
    data.append({"id": "evil", "image": "../outside.png", "conversations": data[0]["conversations"]})
    data.append({"id": "textonly", "conversations": [{"from": "human", "value": "How many shapes are there?"},
                                                     {"from": "gpt", "value": "two"}]})
    (tmp_path / "mixed.json").write_text(json.dumps(data, indent=2))  # images stay in the shared world
    params = tmp_path / "params.yaml"  # a 2-layer model: TCAP's layer filter must fit it
    params.write_text("screen:\n  strata_k: 2\ndetectors:\n  tcap: {l_sens: 1, h_sens: 2}\n")
    r = runner.invoke(app, ["screen", "--data", str(tmp_path / "mixed.json"), "--image-folder", str(out),
                            "--base", str(out / "base_model"),
                            "--finetuned", str(out / "base_model"), "--out", str(tmp_path / "rep"), "--quiet",
                            "--params", str(params)])
    assert r.exit_code == 0, r.output
    rep = tmp_path / "rep"
    table = pd.read_parquet(rep / "verdicts.parquet")
    assert table["id"].tolist() == [d["id"] for d in data]  # every input id, input order, none missing
    assert table.set_index("id").loc["evil", "status"] == "quarantined"
    assert "image_outside_root" in table.set_index("id").loc["evil", "reason"]
    assert table.set_index("id").loc["textonly", "status"] == "ok"
    ok = table[table["status"] == "ok"]
    assert ok["p_poison"].between(0, 1).all()
    assert {"vote_tcap", "p_tcap", "flag_bye"} & set(table.columns)
    clean = read_dataset(rep / "clean.json", image_root=out)
    kept = set(clean.ids)
    assert "evil" not in kept and not (kept & set(table.loc[table["flagged"], "id"]))
    assert kept == set(ok.loc[~ok["flagged"], "id"])
    manifest = json.loads((rep / "manifest.json").read_text())
    assert manifest["input"]["n_samples"] == len(data) and manifest["counts"]["quarantined"] == 1
    assert (rep / "report.html").read_text().count("<img") >= 1
    assert json.loads((rep / "detector.json").read_text())["default"]
    # the registered detector scores a drop from its extraction folder alone (drift scores stored beside it)
    from poisonguard.registry.scoring import load_report_detector, score_extractions

    name, det = load_report_detector(json.loads((rep / "detector.json").read_text()))
    scored = score_extractions(det, [str(rep / "extract")], strata_k=2)
    assert name == "fused" and len(scored) == len(ok)
    assert (rep / "extract" / "drift_scores.npz").is_file()
