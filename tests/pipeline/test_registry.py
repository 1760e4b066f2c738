"""MLflow on sqlite: a screening run with its artifacts, detector versions with aliases, and the registered
models-from-code pyfunc scoring extraction folders of a new data drop."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from poisonguard.registry import (
    CHALLENGER,
    CHAMPION,
    log_screening,
    promote,
    register_detector,
    tracking,
    version_for_alias,
)
from tests.pipeline.reports import Report, detector_bundle, make_report


def test_log_screening_records_params_metrics_artifacts(report: Report, mlflow_uri: str) -> None:
    from mlflow import MlflowClient

    (report.dir / "plots").mkdir()
    Image.new("RGB", (4, 4)).save(report.dir / "plots" / "scores.png")
    run_id = log_screening(report.dir, {"detector": {"n_heads": 8}}, {"auroc": 0.97}, uri=mlflow_uri)

    run = MlflowClient(mlflow_uri).get_run(run_id)
    assert run.data.params["detector.n_heads"] == "8"  # explicit params override the manifest's
    assert run.data.params["gate.max_flag_rate"] == "0.3"  # manifest params, flattened
    assert run.data.metrics == pytest.approx({"auroc": 0.97, "n_samples": 10, "n_ok": 9, "n_quarantined": 1,
                                              "n_flagged": 2, "flag_rate": 0.2222})
    manifest = json.loads(report.manifest.read_text())
    assert run.data.tags["poisonguard.verdicts_sha256"] == manifest["verdicts_sha256"]
    client = MlflowClient(mlflow_uri)
    assert {a.path for a in client.list_artifacts(run_id, "report")} == {
        f"report/{n}" for n in ("verdicts.parquet", "verdicts.csv", "manifest.json", "detector.json",
                                "report.html", "metrics.json")}
    assert [a.path for a in client.list_artifacts(run_id, "plots")] == ["plots/scores.png"]
    artifact_root = Path(mlflow_uri.removeprefix("sqlite:///")).parent / "mlruns"
    assert any(artifact_root.rglob("verdicts.parquet"))  # next to the database, not in the working dir


def test_registry_round_trip_with_aliases(report: Report, mlflow_uri: str) -> None:
    from mlflow import MlflowClient

    name = "detector-round-trip"
    v1 = register_detector(report.dir, name, uri=mlflow_uri)
    assert version_for_alias(name, CHALLENGER, uri=mlflow_uri) == v1
    promote(name, v1, uri=mlflow_uri, reviewer="alice", note="first release")
    v2 = register_detector(report.dir, name, uri=mlflow_uri)
    assert v2 != v1
    assert version_for_alias(name, CHALLENGER, uri=mlflow_uri) == v2  # newest screening is the challenger
    assert version_for_alias(name, CHAMPION, uri=mlflow_uri) == v1  # until someone approves it
    promote(name, v2, uri=mlflow_uri, reviewer="bob")
    assert version_for_alias(name, CHAMPION, uri=mlflow_uri) == v2

    client = MlflowClient(mlflow_uri)
    tags = client.get_model_version(name, v1).tags
    assert tags["poisonguard.champion.reviewer"] == "alice" and tags["poisonguard.detector"] == "spectral"
    assert tags["poisonguard.input_sha256"] == json.loads(report.manifest.read_text())["input"]["sha256"]
    with pytest.raises(Exception, match="(?i)not found|does not exist"):
        promote(name, "99", uri=mlflow_uri)


def test_register_refuses_a_broken_detector_state(report: Report, mlflow_uri: str) -> None:
    from mlflow import MlflowClient

    (report.dir / "detector.json").write_text(json.dumps({"detector": "no-such-detector", "format": 1}))
    with pytest.raises(ValueError, match="unknown detector"):
        register_detector(report.dir, "detector-broken", uri=mlflow_uri)
    assert not MlflowClient(mlflow_uri).search_registered_models("name='detector-broken'")


def _tiny_extractions(root: Path) -> list[Path]:
    """Two drops in `poisonguard screen`'s extraction layout (finetuned/ and base/, 2 shards each) from tiny
    world models on random images."""
    from poisonguard.extract import extract_to_dir
    from tests.fixtures.families import build_tiny
    from poisonguard.train.batching import Example

    models = {"finetuned": build_tiny("world", seed=0), "base": build_tiny("world", seed=1)}
    folders = []
    for drop in range(2):
        rng = np.random.default_rng(drop)
        images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(5)]
        examples = [Example([{"role": "user", "content": [{"type": "image"},
                                                          {"type": "text", "text": "What colour is it?"}]}],
                            [im]) for im in images]
        folder = root / f"drop{drop}"
        for kind, (model, processor) in models.items():
            extract_to_dir(model, processor, examples, [f"d{drop}-{i}" for i in range(5)], folder / kind,
                           shard_size=3, show_progress=False)
        folders.append(folder)
    return folders


def test_champion_pyfunc_scores_extraction_folders(tmp_path: Path, mlflow_uri: str) -> None:
    import mlflow

    from poisonguard.detect import SpectralSignatureDetector
    from poisonguard.registry import features_from_extraction, score_extractions

    folders = _tiny_extractions(tmp_path / "extractions")
    features = features_from_extraction(folders[0], strata_k=2)
    assert features.alloc_base is not None and features.strata is not None  # the screen's feature set
    detector = SpectralSignatureDetector().fit(features)
    report = make_report(tmp_path / "screen", detector=detector_bundle(detector.to_state()))
    name = "detector-pyfunc"
    version = register_detector(report.dir, name, uri=mlflow_uri)
    promote(name, version, uri=mlflow_uri)

    with tracking(mlflow_uri):
        model = mlflow.pyfunc.load_model(f"models:/{name}@{CHAMPION}")
        scored = model.predict(pd.DataFrame({"extraction_dir": [str(f) for f in folders]}))
        local = mlflow.artifacts.download_artifacts(f"models:/{name}@{CHAMPION}", dst_path=str(tmp_path / "m"))

    expected = pd.concat([detector.score(features_from_extraction(f, strata_k=2)).to_frame() for f in folders],
                         ignore_index=True)
    assert list(scored.columns) == ["id", "p_poison", "flagged"]
    assert scored["id"].tolist() == [f"d{d}-{i}" for d in range(2) for i in range(5)]
    np.testing.assert_allclose(scored["p_poison"], expected["p_poison"])
    assert scored["flagged"].tolist() == expected["flagged"].tolist()
    # models-from-code: the model is its source file plus the JSON state, never a pickle
    files = {p.name for p in Path(local).rglob("*") if p.is_file()}
    assert {"detector_model.py", "detector.json", "MLmodel"} <= files
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle"))]
    # a single extraction folder (no screen layout) scores the same samples
    single = score_extractions(detector, [str(folders[1] / "finetuned")])
    np.testing.assert_allclose(single["p_poison"], expected["p_poison"].iloc[5:])


def test_champion_summary_and_challenger_restore(report: Report, mlflow_uri: str) -> None:
    """What the approver compares with (the champion's counts and approver), and how a rejected screening
    gives `challenger` back without taking it from a later screening."""
    from poisonguard.registry import alias_or_none, alias_summary, log_screening, restore_alias, run_links

    name = "restore-aliases"
    assert alias_summary(name, uri=mlflow_uri) is None
    run_id = log_screening(report.dir, uri=mlflow_uri)
    v1 = register_detector(report.dir, name, run_id=run_id, uri=mlflow_uri)
    promote(name, v1, uri=mlflow_uri, reviewer="carol")
    summary = alias_summary(name, uri=mlflow_uri)
    assert summary["version"] == v1 and summary["reviewer"] == "carol" and summary["run_id"] == run_id
    assert (summary["n_flagged"], summary["n_ok"]) == (2, 9)

    v2 = register_detector(report.dir, name, uri=mlflow_uri)
    v3 = register_detector(report.dir, name, uri=mlflow_uri)  # a later screening took `challenger` meanwhile
    assert restore_alias(name, CHALLENGER, v1, expected=v2, uri=mlflow_uri) == v3  # left alone
    assert restore_alias(name, CHALLENGER, v1, expected=v3, uri=mlflow_uri, reason="rejected") == v1
    assert restore_alias(name, CHALLENGER, None, expected=v1, uri=mlflow_uri) is None
    assert alias_or_none(name, CHALLENGER, uri=mlflow_uri) is None
    assert alias_or_none(name, CHAMPION, uri=mlflow_uri) == v1

    links = run_links(run_id, uri=mlflow_uri)  # a sqlite store has no web server: no URLs, only where
    assert links["mlflow_run"] is None and links["report"] is None and run_id in links["where"]
