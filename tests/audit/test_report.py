"""`audit_models` end to end on the tiny world: a valid JSON report, the plots it lists, the scores file."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from poisonguard.audit import audit_models
from tests.audit.conftest import rank_one_projector_change

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def shifted_model(tiny_world, tmp_path_factory):
    """The tiny world's base with a rank-1 change of the projector's second layer (a stand-in fine-tune)."""
    out, _ = tiny_world
    return rank_one_projector_change(out / "base_model", tmp_path_factory.mktemp("shifted") / "model", seed=0)


def _plots_exist(report: dict, out) -> None:
    for name in report["plots"].values():
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, name


def test_weights_only_audit(tiny_world, shifted_model, tmp_path):
    out, _ = tiny_world
    report = audit_models(out / "base_model", shifted_model, out_dir=tmp_path)
    stored = json.loads((tmp_path / "audit.json").read_text())
    assert "timings" not in stored and stored == {k: v for k, v in report.items() if k != "timings"}
    first, second = report["weights"]["layers"]
    assert first["fro_norm"] == 0.0
    assert second["energy"]["top1"] == pytest.approx(1.0, abs=1e-6)
    assert report["weights"]["parameter_drift"]["language_model"] == 0.0
    assert report["activations"] is None and report["benchmark"] is None
    assert set(report["plots"]) == {"spectra"}
    _plots_exist(report, tmp_path)


def test_full_audit_with_data_benchmark_and_truth(tiny_world, shifted_model, tmp_path):
    out, _ = tiny_world
    train = json.loads((out / "train.json").read_text())
    truth = tmp_path / "poison_ids.json"
    truth.write_text(json.dumps({"poison_ids": [r["id"] for r in train[:3]]}))
    report = audit_models(
        out / "base_model",
        shifted_model,
        out / "train.json",
        test=out / "test.json",
        attack="badnet",
        ks=(64,),
        out_dir=tmp_path / "audit",
        truth=truth,
        max_eval=3,
        repair_k=64,
    )
    audit_dir = tmp_path / "audit"
    text = (audit_dir / "audit.json").read_text()
    assert "NaN" not in text and json.loads(text) == {k: v for k, v in report.items() if k != "timings"}
    assert set(report["plots"]) == {"spectra", "scores", "norm_law", "rank_k"}
    _plots_exist(report, audit_dir)

    act = report["activations"]
    assert act["n_scored"] == len(train)
    assert act["detector"]["n"] == len(train)
    assert set(act["truth"]["auroc"]) >= {"drift_max", "drift_mean", "drift_max_rel", "score_projector"}
    assert act["truth"]["detector"]["n_poison"] == 3
    assert act["projector_only_share"] == pytest.approx(1.0, abs=1e-4), "the tower did not move"
    assert {"+", "-"} == set(act["logit_lens_shared_direction"])
    scores = pd.read_csv(audit_dir / act["scores_file"])
    assert list(scores["id"]) == [r["id"] for r in train]
    assert (scores["drift_max"] >= scores["drift_mean"]).all()

    bench = report["benchmark"]
    assert bench["n_clean"] == 3
    rows = {(r["mode"], r["layers"], r["k"]): r for r in bench["rank_k"]}
    assert len(rows) == 2 * 3  # (remove, reconstruct) × (linear_1, linear_2, joint), one k
    ref = bench["reference"]
    # full-rank edits are the base (removal) and the fine-tune (reconstruction) again
    for key in ("cp", "asr"):
        assert rows[("remove", "joint", 64)][key] == ref["base"][key]
        assert rows[("reconstruct", "joint", 64)][key] == ref["finetuned"][key]
    assert bench["repair"]["cp"] == ref["base"]["cp"]


def test_benchmark_mode_needs_both_test_and_attack(tiny_world, shifted_model, tmp_path):
    out, _ = tiny_world
    with pytest.raises(ValueError, match="both test and attack"):
        audit_models(out / "base_model", shifted_model, test=out / "test.json", out_dir=tmp_path)


def test_text_only_data_skips_the_drift_audit(tiny_world, shifted_model, tmp_path):
    out, _ = tiny_world
    data = tmp_path / "text.json"
    turns = [{"from": "human", "value": "what is it"}, {"from": "gpt", "value": "red"}]
    data.write_text(json.dumps([{"id": f"t{i}", "conversations": turns} for i in range(3)]))
    report = audit_models(out / "base_model", shifted_model, data, out_dir=tmp_path / "audit")
    assert report["activations"]["n_scored"] == 0
    assert "needs 10" in report["activations"]["skipped"]
    assert set(report["plots"]) == {"spectra"}


def test_activation_subsample_is_recorded_and_truth_splits_the_norm_law(tiny_world, shifted_model, tmp_path):
    out, _ = tiny_world
    train = json.loads((out / "train.json").read_text())
    truth = tmp_path / "poison_ids.json"
    truth.write_text(json.dumps({"poison_ids": [r["id"] for r in train]}))  # every sample "poisoned"
    report = audit_models(
        out / "base_model",
        shifted_model,
        out / "train.json",
        truth=truth,
        max_samples=10,
        out_dir=tmp_path / "audit",
    )
    act = report["activations"]
    assert act["subsample"] == {"n": 10, "of": len(train), "rule": "evenly spaced in file order"}
    assert act["n_scored"] == 10 == act["truth"]["n_poison_scored"]
    law = act["truth"]["norm_law"]
    assert law["poisoned"]["n"] == law["all"]["n"] > 0 and law["clean"]["n"] == 0
    assert act["truth"]["image_norm_r"]["clean"]["n"] == 0
    assert len(pd.read_csv(tmp_path / "audit" / act["scores_file"])) == 10


def test_bad_options_raise_audit_input_errors(tiny_world, shifted_model, tmp_path):
    from poisonguard.audit.projector import AuditInputError

    out, _ = tiny_world
    for kwargs, message in (
        ({"ks": (0,)}, "ks must be positive"),
        ({"layer_sets": "x"}, "layer_sets"),
        ({"modes": ("drop",)}, "modes"),
        ({"max_samples": 3}, "max_samples"),
    ):
        with pytest.raises(AuditInputError, match=message):
            audit_models(out / "base_model", shifted_model, out / "train.json", out_dir=tmp_path, **kwargs)
