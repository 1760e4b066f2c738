"""MLflow tracking on a sqlite backend: where runs go, and logging one screening.

MLflow 3 disabled the file store, so the default here is `sqlite:///<repo>/mlflow.db` with artifacts in
`<repo>/mlruns` (both git-ignored). `MLFLOW_TRACKING_URI` points everything at a shared server instead
(`infra/mlflow-server.sh`). The artifact folder of a sqlite store is fixed per experiment at creation, next to
the database file, so it does not depend on the directory a flow or test happens to run in.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from poisonguard.gate.report import DETECTOR_FILE, MANIFEST_FILE, REPORT_HTML, VERDICTS_FILE

REPO_ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT = "poisonguard-screening"
REPORT_FILES = (VERDICTS_FILE, "verdicts.csv", MANIFEST_FILE, DETECTOR_FILE, REPORT_HTML, "metrics.json")
PLOT_SUFFIXES = (".png", ".svg", ".jpg", ".jpeg", ".pdf")
_MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value


def tracking_uri(uri: str | None = None) -> str:
    """`uri` > `$MLFLOW_TRACKING_URI` > `sqlite:///<repo>/mlflow.db`."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{REPO_ROOT / 'mlflow.db'}"


@contextmanager
def tracking(uri: str | None = None) -> Iterator[str]:
    """Point MLflow's fluent API (a process-wide setting) at `tracking_uri(uri)`; restore it on exit."""
    import mlflow

    # set_tracking_uri also exports MLFLOW_TRACKING_URI (for subprocesses), and that variable is where an
    # earlier setting lives too; None unsets it again.
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    resolved = tracking_uri(uri)
    mlflow.set_tracking_uri(resolved)
    try:
        yield resolved
    finally:
        mlflow.set_tracking_uri(previous)


def ensure_experiment(name: str, uri: str) -> str:
    """The experiment's id, creating it with its artifacts next to a sqlite database file."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    return client.create_experiment(name, artifact_location=_artifact_location(uri))


def log_screening(report_dir: str | Path, params: Mapping[str, Any] | None = None,
                  metrics: Mapping[str, float] | None = None, *, experiment: str = EXPERIMENT,
                  uri: str | None = None, run_name: str | None = None) -> str:
    """Log one screening as an MLflow run; return its run id.

    Params: the manifest's `params` flattened (`detector.n_heads`), overridden by `params`. Metrics: counts
    from the verdict table, then `metrics.json` of the report, then `metrics`. Artifacts: the report files
    under `report/`, image plots found in the report folder (and its `plots/`) under `plots/`. Tags carry the
    input and verdict checksums so a run can be matched to a report and a release.
    """
    import mlflow
    import pandas as pd

    report_dir = Path(report_dir)
    manifest = json.loads((report_dir / MANIFEST_FILE).read_text())
    all_params = {**flatten(manifest.get("params") or {}), **flatten(dict(params or {}))}
    all_metrics = {**verdict_counts(pd.read_parquet(report_dir / VERDICTS_FILE)),
                   **_numeric(_read_json(report_dir / "metrics.json")), **_numeric(dict(metrics or {}))}
    with tracking(uri) as resolved:
        exp_id = ensure_experiment(experiment, resolved)
        with mlflow.start_run(experiment_id=exp_id, run_name=run_name) as run:
            mlflow.set_tags(provenance_tags(manifest, report_dir))
            if all_params:
                mlflow.log_params({k: _param_value(v) for k, v in all_params.items()})
            if all_metrics:
                mlflow.log_metrics(all_metrics)
            for name in REPORT_FILES:
                if (report_dir / name).is_file():
                    mlflow.log_artifact(str(report_dir / name), artifact_path="report")
            for plot in _plots(report_dir):
                mlflow.log_artifact(str(plot), artifact_path="plots")
            return run.info.run_id


def run_links(run_id: str, *, uri: str | None = None,
              artifacts: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """URLs of a screening's MLflow run that work from a browser: `mlflow_run` (the run page) and, for each
    `name: artifact path` of `artifacts` (default the HTML report), `name` (the run page opened on that
    artifact; the MLflow UI renders HTML) and `name_download` (the file served by the tracking server's
    `/get-artifact`, which needs `mlflow server --serve-artifacts` or an artifact store the server reads).
    A sqlite store has no web server: every URL is then None; `where` always says where the run is."""
    from urllib.parse import quote

    from mlflow import MlflowClient

    artifacts = dict(artifacts or {"report": f"report/{REPORT_HTML}"})
    resolved = tracking_uri(uri)
    links: dict[str, str | None] = {"where": f"MLflow run {run_id} in {resolved}", "mlflow_run": None}
    links.update({key: None for name in artifacts for key in (name, f"{name}_download")})
    if not resolved.startswith(("http://", "https://")):
        return links
    base = resolved.rstrip("/")
    experiment = MlflowClient(resolved).get_run(run_id).info.experiment_id
    page = f"{base}/#/experiments/{experiment}/runs/{run_id}"
    links["mlflow_run"] = page
    for name, path in artifacts.items():
        links[name] = f"{page}/artifactPath/{path}"
        links[f"{name}_download"] = f"{base}/get-artifact?path={quote(path)}&run_uuid={run_id}"
    return links


def log_files(run_id: str, files: Mapping[str, str | Path], *, artifact_path: str,
              uri: str | None = None) -> dict[str, str]:
    """Log each `name: local file` into run `run_id` as `<artifact_path>/<name>`; return name -> artifact
    path. Used for the release gate's Data Docs pages, which otherwise exist only on the worker's disk."""
    import shutil
    import tempfile

    from mlflow import MlflowClient

    logged = {}
    with tracking(uri) as resolved, tempfile.TemporaryDirectory() as tmp:
        client = MlflowClient(resolved)
        for name, path in files.items():
            local = Path(tmp) / name
            shutil.copyfile(path, local)
            client.log_artifact(run_id, str(local), artifact_path=artifact_path)
            logged[name] = f"{artifact_path}/{name}"
    return logged


def provenance_tags(manifest: Mapping[str, Any], report_dir: Path) -> dict[str, str]:
    spec = manifest.get("input") or {}
    return {
        "poisonguard.report_dir": str(report_dir.resolve()),
        "poisonguard.input_path": str(spec.get("path", "")),
        "poisonguard.input_sha256": str(spec.get("sha256", "")),
        "poisonguard.verdicts_sha256": str(manifest.get("verdicts_sha256", "")),
    }


def verdict_counts(table) -> dict[str, float]:
    """Sample counts and the flag rate among screened samples, from a verdict table."""
    n_ok = int((table["status"] == "ok").sum())
    n_flagged = int(table["flagged"].fillna(False).astype(bool).sum())
    return {"n_samples": float(len(table)), "n_ok": float(n_ok),
            "n_quarantined": float((table["status"] == "quarantined").sum()),
            "n_flagged": float(n_flagged), "flag_rate": n_flagged / n_ok if n_ok else 0.0}


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values (logged as JSON)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= _MAX_PARAM_CHARS else text[: _MAX_PARAM_CHARS - 3] + "..."


def _numeric(values: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a (flattened) mapping; MLflow metrics are floats only."""
    out = {}
    for key, value in flatten(values).items():
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            out[key] = float(value)
    return out


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return data if isinstance(data, dict) else {}


def _plots(report_dir: Path) -> list[Path]:
    found = [p for folder in (report_dir, report_dir / "plots") if folder.is_dir()
             for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in PLOT_SUFFIXES]
    return found


def _artifact_location(uri: str) -> str | None:
    """`<db folder>/mlruns` for a sqlite URI; None (the server's default) otherwise."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    db = Path(uri[len(prefix):])
    return (db.parent / "mlruns").resolve().as_uri()

