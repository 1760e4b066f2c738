"""The fitted detector in the MLflow Model Registry, promoted with aliases (stages are deprecated).

Every screening registers a new version as `challenger`; `champion` moves only after the release gate passed
and a person approved (flows/screen_release.py). Consumers load `models:/poisonguard-detector@champion`.
The model is a models-from-code pyfunc (detector_model.py) whose only artifact is the JSON detector state.
"""

from __future__ import annotations

import json
import warnings
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path

from poisonguard.gate.report import DETECTOR_FILE, MANIFEST_FILE
from poisonguard.registry.scoring import DEFAULT_STRATA_K, load_report_detector
from poisonguard.registry.tracking import EXPERIMENT, ensure_experiment, provenance_tags, tracking

DEFAULT_MODEL_NAME = "poisonguard-detector"
CHALLENGER, CHAMPION = "challenger", "champion"
MODEL_CODE = Path(__file__).with_name("detector_model.py")
_RUNTIME_PACKAGES = ("poisonguard", "mlflow", "numpy", "pandas", "scipy", "scikit-learn", "torch")


def register_detector(report_dir: str | Path, name: str = DEFAULT_MODEL_NAME, *, run_id: str | None = None,
                      uri: str | None = None, experiment: str = EXPERIMENT) -> str:
    """Register REPORT_DIR/detector.json as a new version of `name` with alias `challenger`; return the
    version. Logged into run `run_id` (e.g. the one from `log_screening`) or a new run.

    The state is rebuilt first (`load_report_detector`: the screen's bundle or a single state), so a broken
    or unknown state never gets registered. The screen's `strata_k` (manifest params) goes along as
    model_config, so new data is stratified as the screened data was.
    """
    import mlflow
    from mlflow import MlflowClient

    report_dir = Path(report_dir)
    state_path = report_dir / DETECTOR_FILE
    detector_name, _ = load_report_detector(json.loads(state_path.read_text()))
    manifest = json.loads((report_dir / MANIFEST_FILE).read_text())
    strata_k = (manifest.get("params") or {}).get("strata_k", DEFAULT_STRATA_K)
    with tracking(uri) as resolved:
        exp_id = None if run_id else ensure_experiment(experiment, resolved)
        with mlflow.start_run(run_id=run_id, experiment_id=exp_id), warnings.catch_warnings():
            # No input example on purpose: the input is folders on disk, which MLflow would try to score.
            warnings.filterwarnings("ignore", message=".*input example was not provided.*")
            info = mlflow.pyfunc.log_model(
                name="detector", python_model=str(MODEL_CODE), artifacts={"detector": str(state_path)},
                signature=_signature(), pip_requirements=_requirements(), registered_model_name=name,
                model_config={"strata_k": int(strata_k)},
            )
        version = str(info.registered_model_version)
        client = MlflowClient(resolved)
        for key, value in {**provenance_tags(manifest, report_dir), "poisonguard.detector": detector_name}.items():
            client.set_model_version_tag(name, version, key, value)
        client.set_registered_model_alias(name, CHALLENGER, version)
    return version


def promote(name: str, version: str | int, *, alias: str = CHAMPION, uri: str | None = None,
            reviewer: str | None = None, note: str | None = None) -> None:
    """Point `alias` (default `champion`) at `version`; the reviewer and note are kept as version tags."""
    from mlflow import MlflowClient

    with tracking(uri) as resolved:
        client = MlflowClient(resolved)
        client.get_model_version(name, str(version))  # raises a clear MLflow error for an unknown version
        client.set_registered_model_alias(name, alias, str(version))
        if reviewer is not None:
            client.set_model_version_tag(name, str(version), f"poisonguard.{alias}.reviewer", reviewer)
        if note:
            client.set_model_version_tag(name, str(version), f"poisonguard.{alias}.note", note)


def alias_or_none(name: str, alias: str, *, uri: str | None = None) -> str | None:
    """The version `alias` points at, or None when the model or the alias does not exist (yet)."""
    from mlflow.exceptions import MlflowException

    try:
        return version_for_alias(name, alias, uri=uri)
    except MlflowException:
        return None


def restore_alias(name: str, alias: str, previous: str | None, *, expected: str, uri: str | None = None,
                  reason: str | None = None) -> str | None:
    """Undo a move of `alias` to version `expected`: point it back at `previous` (remove it when None), but
    only while it still points at `expected`, so a later screening that took the alias meanwhile keeps it.
    `reason` is kept as a tag on `expected`. Returns the version the alias points at afterwards."""
    from mlflow import MlflowClient

    with tracking(uri) as resolved:
        client = MlflowClient(resolved)
        if reason:
            client.set_model_version_tag(name, str(expected), f"poisonguard.{alias}.removed", reason)
        current = alias_or_none(name, alias, uri=resolved)
        if current != str(expected):
            return current
        if previous is None:
            client.delete_registered_model_alias(name, alias)
            return None
        client.set_registered_model_alias(name, alias, str(previous))
        return str(previous)


def alias_summary(name: str, alias: str = CHAMPION, *, uri: str | None = None) -> dict | None:
    """What the approver compares a new screening with: the version behind `alias` (default `champion`,
    the last approved screening), its run's counts and flag rate, who approved it and when it was
    registered. None when there is no such alias yet."""
    from mlflow import MlflowClient

    version = alias_or_none(name, alias, uri=uri)
    if version is None:
        return None
    with tracking(uri) as resolved:
        client = MlflowClient(resolved)
        mv = client.get_model_version(name, version)
        metrics = client.get_run(mv.run_id).data.metrics if mv.run_id else {}
    keys = ("n_samples", "n_ok", "n_quarantined", "n_flagged", "flag_rate")
    return {"version": str(version), "run_id": mv.run_id, **{k: metrics.get(k) for k in keys},
            "reviewer": (mv.tags or {}).get(f"poisonguard.{alias}.reviewer"),
            "input_path": (mv.tags or {}).get("poisonguard.input_path"),
            "registered_at_ms": mv.creation_timestamp}


def version_for_alias(name: str, alias: str, *, uri: str | None = None) -> str:
    """The version `alias` points at (MlflowClient.get_model_version_by_alias)."""
    from mlflow import MlflowClient

    with tracking(uri) as resolved:
        return str(MlflowClient(resolved).get_model_version_by_alias(name, alias).version)


def _signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "extraction_dir"),
                       ColSpec("string", "base_extraction_dir", required=False)]),
        outputs=Schema([ColSpec("string", "id"), ColSpec("double", "p_poison"), ColSpec("boolean", "flagged")]),
    )


def _requirements() -> list[str]:
    """Pinned to what is installed: skips MLflow's requirement inference, which would load the model."""
    pins = []
    for package in _RUNTIME_PACKAGES:
        try:
            pins.append(f"{package}=={package_version(package)}")
        except PackageNotFoundError:
            pins.append(package)
    return pins
