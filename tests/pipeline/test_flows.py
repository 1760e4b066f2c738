"""Prefect flows on a real (temporary) Prefect server: approval round trips, the nightly deployment on its
schedule, and the benchmark wrapper."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import yaml

from tests.pipeline.conftest import resume_when_paused
from tests.pipeline.reports import FLAGGED, Report, make_report

REPO = Path(__file__).resolve().parents[2]


def _run_flow(report: Report, tmp_path: Path, gx_root: str, mlflow_uri: str, model_name: str):
    from flows.screen_release import screen_and_release

    return screen_and_release(repo_dir=str(REPO), report_dir=str(report.dir), release_dir=str(tmp_path / "rel"),
                              skip_repro=True, gate_root=gx_root, tracking_uri=mlflow_uri,
                              model_name=model_name, approval_timeout_s=120, poll_interval_s=1,
                              return_state=True)


def _artifact(key: str, flow_run_id) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    assert len(found) == 1
    return found[0].data


def test_approved_run_releases_and_promotes(prefect_server, report: Report, tmp_path: Path, gx_root: str,
                                            mlflow_uri: str) -> None:
    from poisonguard.registry import CHALLENGER, CHAMPION, version_for_alias

    approver = resume_when_paused("screen-and-release", {"approved": True, "reviewer": "alice", "note": "ok"})
    state = _run_flow(report, tmp_path, gx_root, mlflow_uri, "flow-approved")
    approver.join(timeout=10)

    assert state.is_completed(), state.message
    result = state.result()
    assert result["reviewer"] == "alice" and Path(result["release"]) == tmp_path / "rel" / "train.json"
    released = json.loads(Path(result["release"]).read_text())
    assert [r["id"] for r in released] == [i for i in report.ids if i not in FLAGGED and i != "s05"]
    version = result["model_version"]
    assert version_for_alias("flow-approved", CHALLENGER, uri=mlflow_uri) == version
    assert version_for_alias("flow-approved", CHAMPION, uri=mlflow_uri) == version
    markdown = _artifact("screening-report", state.state_details.flow_run_id)
    assert "| s03 |" in markdown and "| s07 |" in markdown and str(report.dir / "report.html") in markdown


def test_rejected_run_ends_cleanly_records_and_restores_challenger(prefect_server, report: Report,
                                                                   tmp_path: Path, gx_root: str,
                                                                   mlflow_uri: str) -> None:
    from poisonguard.registry import CHALLENGER, CHAMPION, alias_or_none, promote, register_detector

    # An earlier, approved screening holds both aliases; the rejected one must leave them there.
    register_detector(report.dir, "flow-rejected", uri=mlflow_uri)
    promote("flow-rejected", "1", uri=mlflow_uri, reviewer="carol")
    resume_when_paused("screen-and-release", {"approved": False, "reviewer": "bob", "note": "s07 looks odd"})
    state = _run_flow(report, tmp_path, gx_root, mlflow_uri, "flow-rejected")

    assert state.is_completed() and state.name == "Rejected"
    assert state.message == "release rejected by bob: s07 looks odd"
    assert sorted(p.name for p in (tmp_path / "rel").iterdir()) == ["release.json"]  # a record, no data
    record = json.loads((tmp_path / "rel" / "release.json").read_text())
    assert record["released"] is False
    assert {k: record["approval"][k] for k in ("decision", "reviewer", "note", "detector_version")} == {
        "decision": "rejected", "reviewer": "bob", "note": "s07 looks odd", "detector_version": "2"}
    assert record["approval"]["flow_run_id"] == str(state.state_details.flow_run_id)
    assert alias_or_none("flow-rejected", CHALLENGER, uri=mlflow_uri) == "1"
    assert alias_or_none("flow-rejected", CHAMPION, uri=mlflow_uri) == "1"
    assert _error_logs(state.state_details.flow_run_id) == []


def _error_logs(flow_run_id) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId, LogFilterLevel

    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]),
                                                     level=LogFilterLevel(ge_=30)))
    return [log.message for log in logs]


def test_failed_gate_stops_before_approval(prefect_server, report: Report, tmp_path: Path, gx_root: str,
                                           mlflow_uri: str) -> None:
    table = report.read_verdicts()
    table.loc[table["id"] == "s03", "flagged"] = False
    report.write_verdicts(table, update_manifest=False)  # edited after screening
    state = _run_flow(report, tmp_path, gx_root, mlflow_uri, "flow-gate-failed")  # would hang if it paused
    assert state.is_failed() and "release gate failed" in state.message
    assert not (tmp_path / "rel").exists()


def test_nightly_deployment_runs_on_schedule(prefect_server, tmp_path: Path) -> None:
    """The prefect.yaml deployment, applied with its cron, and one due run executed by a Runner."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.flows import load_flow_from_entrypoint
    from prefect.runner import Runner
    from prefect.schedules import Cron

    spec = next(d for d in yaml.safe_load((REPO / "infra" / "prefect.yaml").read_text())["deployments"]
                if d["name"] == "nightly")
    incoming, work = tmp_path / "incoming", tmp_path / "work"
    (incoming / "drop-a").mkdir(parents=True)  # a drop screened on an earlier night ...
    (incoming / "drop-a" / "train.json").write_text("[]")
    (work / "drop-a" / "report").mkdir(parents=True)
    (work / "drop-a" / "report" / "manifest.json").write_text("{}")
    (incoming / "drop-b").mkdir()  # ... and a folder without a dataset

    flow = load_flow_from_entrypoint(str(REPO / spec["entrypoint"]))
    deployment = flow.to_deployment(
        name=spec["name"], schedules=[Cron(s["cron"], timezone=s["timezone"]) for s in spec["schedules"]],
        parameters={**spec["parameters"], "incoming_dir": str(incoming), "base_model": str(tmp_path / "model"),
                    "work_dir": str(work), "track": False})
    deployment_id = deployment.apply()
    with get_client(sync_client=True) as client:
        stored = client.read_deployment(deployment_id)
    assert [s.schedule.cron for s in stored.schedules] == ["0 2 * * *"]
    assert stored.schedules[0].schedule.timezone == "UTC"

    run = run_deployment(f"nightly-screen/{spec['name']}", timeout=0)  # scheduled now, not waited for

    async def execute_due_runs() -> None:
        runner = Runner(query_seconds=1)
        await runner.add_deployment(deployment)
        await runner.start(run_once=True)

    asyncio.run(execute_due_runs())
    with get_client(sync_client=True) as client:
        finished = client.read_flow_run(run.id)
    assert finished.state.is_completed(), finished.state.message
    summary = _artifact("nightly-summary", run.id)
    assert "| drop-a | skipped | already screened |" in summary
    assert "| drop-b | skipped | no single dataset file" in summary


def test_benchmark_flow_surfaces_cli_failure(prefect_server, tmp_path: Path) -> None:
    from flows.benchmark import benchmark

    state = benchmark(args=["--no-such-option"], repo_dir=str(REPO), return_state=True)
    assert state.is_failed()
    assert "bench --no-such-option` exited with code 2" in state.message


def test_full_run_reproduces_the_dvc_pipeline_first(prefect_server, tmp_path: Path, gx_root: str) -> None:
    """skip_repro=False: the flow's `dvc repro gate` builds the report (a stand-in `screen` stage copying a
    prepared one) and gates it inside DVC, then the flow gates, pauses and releases."""
    import subprocess
    import sys

    from flows.screen_release import screen_and_release

    prepared = make_report(tmp_path / "prepared")
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=repo, check=True)
    (repo / "params.yaml").write_text("gate:\n  max_flag_rate: 0.25\n")
    gate_cmd = (f"from poisonguard.gate import gate_config, run_gate; "
                f"run_gate('work/report', gate_root='{gx_root}', config=gate_config('params.yaml'))")
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "screen": {"cmd": f"{sys.executable} -c \"import shutil; shutil.copytree('{prepared.dir}', 'work/report')\"",
                   "outs": ["work/report"]},
        "gate": {"cmd": f'{sys.executable} -c "{gate_cmd}"', "deps": ["work/report"],
                 "params": ["gate.max_flag_rate"]},
    }}))

    resume_when_paused("screen-and-release", {"approved": True, "reviewer": "carol"})
    state = screen_and_release(repo_dir=str(repo), gate_root=gx_root, track=False, approval_timeout_s=120,
                               poll_interval_s=1, return_state=True)

    assert state.is_completed(), state.message
    assert state.result()["gate"]["max_flag_rate"] == 0.25  # the repo's params.yaml drives the gate
    assert (repo / "work" / "flow-release" / "train.json").is_file()
    assert set(yaml.safe_load((repo / "dvc.lock").read_text())["stages"]) == {"screen", "gate"}


@pytest.mark.slow
def test_prefect_yaml_deploys_with_the_cli(prefect_server, tmp_path: Path) -> None:
    """`prefect deploy --prefect-file infra/prefect.yaml --all` against the test server, as infra/README.md
    tells an operator to do it (about 30-60 s: every `prefect` command starts a new interpreter)."""
    import os
    import subprocess
    import sys

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PG_REPO_DIR": str(REPO),
           "PG_INCOMING_DIR": str(tmp_path / "incoming"), "PG_BASE_MODEL": str(tmp_path / "base")}
    prefect = [str(Path(sys.executable).with_name("prefect"))]
    subprocess.run([*prefect, "work-pool", "create", "poisonguard-local", "--type", "process"], cwd=REPO,
                   env=env, check=True, capture_output=True)
    done = subprocess.run([*prefect, "--no-prompt", "deploy", "--prefect-file", "infra/prefect.yaml", "--all"],
                          check=False, cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr

    with get_client(sync_client=True) as client:
        deployments = {d.name: d for d in client.read_deployments()}
    nightly = deployments["nightly"]
    assert {"screen-and-release", "extract", "benchmark"} <= set(deployments)
    assert [s.schedule.cron for s in nightly.schedules] == ["0 2 * * *"]
    assert nightly.parameters["incoming_dir"] == str(tmp_path / "incoming")  # filled from the environment
    assert nightly.work_pool_name == "poisonguard-local" and nightly.entrypoint == "flows/nightly.py:nightly_screen"
    assert nightly.pull_steps[0]["prefect.deployments.steps.set_working_directory"]["directory"] == str(REPO)
