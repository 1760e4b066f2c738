"""Prefect flows on a real (temporary) Prefect server: approval round trips, the nightly deployment on its
schedule, and the benchmark wrapper."""

from __future__ import annotations

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


def test_unanswered_approval_expires_cleanly(prefect_server, report: Report, tmp_path: Path, gx_root: str,
                                            mlflow_uri: str) -> None:
    from flows.screen_release import screen_and_release
    from poisonguard.registry import CHALLENGER, alias_or_none

    state = screen_and_release(repo_dir=str(REPO), report_dir=str(report.dir), release_dir=str(tmp_path / "rel"),
                               skip_repro=True, gate_root=gx_root, tracking_uri=mlflow_uri,
                               model_name="flow-expired", approval_timeout_s=3, poll_interval_s=1,
                               drop="drop-e", return_state=True)

    assert state.is_failed()  # the server's words: "The flow was expired and never resumed."
    said = [m for m in _error_logs(state.state_details.flow_run_id) if "nobody answered" in m]
    assert len(said) == 1 and "nobody answered the approval of drop-e within 3 s" in said[0]
    assert "prefect deployment run screen-and-release/screen-and-release" in said[0]
    record = json.loads((tmp_path / "rel" / "release.json").read_text())
    assert record["released"] is False and record["approval"]["decision"] == "expired"
    assert alias_or_none("flow-expired", CHALLENGER, uri=mlflow_uri) is None


def _error_logs(flow_run_id) -> list[str]:
    """The run's WARNING-and-above log messages, after sending the ones still queued in this process."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId, LogFilterLevel
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
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


def test_nightly_sorts_drops(tmp_path: Path) -> None:
    """Which drops the nightly screens, which it only hands to a release run, and which it skips. (Its
    schedule and its release runs are tested on real servers in test_schedule.py.)"""
    import os

    from flows.nightly import STARTED_FILE, find_new_drops

    incoming, work = tmp_path / "incoming", tmp_path / "work"
    for drop in ("new", "screened", "started", "no-data", "arriving"):
        (incoming / drop).mkdir(parents=True)
        if drop != "no-data":
            (incoming / drop / "train.json").write_text("[]")
            os.utime(incoming / drop / "train.json", (1, 1))
    os.utime(incoming / "arriving" / "train.json")  # just now
    (work / "screened" / "report").mkdir(parents=True)
    (work / "screened" / "report" / "manifest.json").write_text("{}")
    (work / "started").mkdir(parents=True)
    (work / "started" / STARTED_FILE).write_text(json.dumps({"flow_run_name": "release-started", "url": "u"}))

    found = find_new_drops.fn(str(incoming), str(work), settle_s=60)
    assert [d["drop"] for d in found["new"]] == ["new", "screened"]  # "screened" only gets its release run
    why = {d["drop"]: d["why"] for d in found["skipped"]}
    assert why == {"arriving": "changed in the last 60 s; still arriving?",
                   "no-data": "no single dataset file (*.json / *.jsonl) at its top level",
                   "started": "already screened; release run release-started"}


def test_nightly_without_deployments_releases_inline(prefect_server, tmp_path: Path, gx_root: str,
                                                    mlflow_uri: str) -> None:
    """`release_deployment=""` (a local run, no deployments): the drop's release runs as a subflow named
    `release-<drop>`, and the nightly reports its outcome."""
    from flows.nightly import nightly_screen

    incoming, work = tmp_path / "incoming", tmp_path / "work"
    (incoming / "drop-i").mkdir(parents=True)
    (incoming / "drop-i" / "train.json").write_text("[]")
    make_report(work / "drop-i")  # already screened: only the release is left
    resume_when_paused("screen-and-release", {"approved": True, "reviewer": "dora"})
    state = nightly_screen(incoming_dir=str(incoming), base_model=str(tmp_path / "base"), work_dir=str(work),
                           settle_s=0, release_deployment="", gate_root=gx_root, tracking_uri=mlflow_uri,
                           model_name="nightly-inline", approval_timeout_s=120, return_state=True)

    assert state.is_completed(), state.message
    assert state.result()["drops"] == [{"drop": "drop-i", "outcome": "completed", "why": ""}]
    record = json.loads((work / "drop-i" / "release" / "release.json").read_text())
    assert record["approval"]["reviewer"] == "dora" and record["approval"]["flow_run_name"] == "release-drop-i"


def test_flow_refuses_dvc_outputs_and_world_rebuilds(prefect_server, tmp_path: Path, gx_root: str) -> None:
    """A flow never releases into a DVC stage's output, and never rebuilds the `world` stage (the base model
    scheduled screenings read) as a side effect of `dvc repro gate`."""
    import subprocess
    import sys

    from flows.screen_release import screen_and_release

    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=repo, check=True)
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "world": {"cmd": "mkdir -p work/world && echo rebuilt > work/world/base_model", "outs": ["work/world"]},
        "gate": {"cmd": "echo gated", "deps": ["work/world"]},
        "release": {"cmd": "mkdir -p work/release", "outs": ["work/release"]},
    }}))

    state = screen_and_release(repo_dir=str(repo), release_dir="work/release/x", gate_root=gx_root, track=False,
                               return_state=True)
    assert state.is_failed() and "DVC output `work/release`" in state.message
    state = screen_and_release(repo_dir=str(repo), gate_root=gx_root, track=False, return_state=True)
    assert state.is_failed() and "would rebuild world" in state.message
    assert not (repo / "work" / "world").exists()


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
