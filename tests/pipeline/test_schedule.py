"""The orchestration stack as an operator runs it: a real Prefect server, a process worker and an MLflow
server (tests/pipeline/servers.py), deployments applied from infra/prefect.yaml with `prefect deploy`.

- the server's scheduler creates the nightly's runs from the deployment's schedule and the worker runs them
  (no manual trigger);
- each drop gets its own paused release run, answered with `poisonguard approve|reject` as the READMEs say,
  independently of the other drops, and every decision is written to release.json;
- the approver's links point at the MLflow server and download the real report.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from poisonguard.gate import file_sha256
from tests.pipeline.reports import Report, make_report
from tests.pipeline.servers import Stack, prefect_file_copy

TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "CRASHED")


@pytest.fixture
def client(stack: Stack) -> Iterator:
    """A sync Prefect client (and this process's settings) pointed at the stack's server."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: stack.api_url}), get_client(sync_client=True) as c:
        yield c


def test_scheduler_creates_and_worker_runs_the_nightly(stack: Stack, client, tmp_path: Path) -> None:
    """infra/prefect.yaml with the nightly's cron swapped for a 10 s interval: the server's scheduler service
    creates the runs (auto_scheduled, created by the schedule) and the worker completes one."""
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    from tests.pipeline.conftest import deploy_env

    cron = client.read_deployment_by_name("nightly-screen/nightly")
    assert [s.schedule.cron for s in cron.schedules] == ["0 2 * * *"]  # as the fixture deployed it
    copy = prefect_file_copy(tmp_path / "prefect.yaml", schedules={"nightly": [{"interval": 10}]})
    started = time.monotonic()
    stack.deploy(copy, ["nightly"], deploy_env(stack.root))
    deployment = client.read_deployment_by_name("nightly-screen/nightly")
    assert [s.schedule.interval for s in deployment.schedules] == [timedelta(seconds=10)]
    only_nightly = DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
    try:
        done = _wait(lambda: [r for r in client.read_flow_runs(
            deployment_filter=only_nightly,
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=[StateType.COMPLETED])))) if r.auto_scheduled],
            timeout_s=150, what="a completed scheduled nightly run", stack=stack)
    finally:  # stop the schedule: later tests run the nightly by hand
        for schedule in deployment.schedules:
            client.update_deployment_schedule(deployment.id, schedule.id, active=False)
        for run in client.read_flow_runs(deployment_filter=only_nightly, flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])))):
            client.delete_flow_run(run.id)
    run = done[0]
    assert run.created_by is not None and run.created_by.type == "SCHEDULE"
    print(f"first scheduled nightly completed {time.monotonic() - started:.0f} s after `prefect deploy`")
    server_log = stack.log_tail("prefect-server", chars=10**7)
    assert "bulk DML" not in server_log and "schedule_deployments" not in server_log


@pytest.mark.slow  # 1-2 min on top of the stack: three flow-run processes and two CLI calls
def test_each_drop_waits_for_its_own_approval(stack: Stack, mlflow_server: str, client,
                                              tmp_path: Path) -> None:
    """The nightly starts `release-drop-a` and `release-drop-b` and ends; both pause; drop-b is approved
    first with `poisonguard approve` and released while drop-a still waits; then drop-a is approved."""
    from prefect.deployments import run_deployment

    from poisonguard.registry import CHAMPION, alias_or_none

    incoming, work = tmp_path / "incoming", tmp_path / "work"
    reports = {drop: _screened_drop(incoming, work, drop) for drop in ("drop-a", "drop-b")}
    nightly = run_deployment("nightly-screen/nightly", timeout=240, poll_interval=1, parameters={
        "incoming_dir": str(incoming), "work_dir": str(work), "settle_s": 0, "approval_timeout_s": 900,
        "model_name": "two-drops"})
    assert nightly.state.is_completed(), nightly.state.message  # it does not wait for the approvals
    runs = {drop: _wait_paused(client, f"release-{drop}", stack) for drop in reports}
    summary = _artifact(client, "nightly-summary", nightly.id)
    assert f"| drop-a | awaiting approval | [release run release-drop-a]({stack.api_url[:-4]}/runs/flow-run/" in summary

    description = _pause_description(client, runs["drop-b"])
    print(f"pause description of release-drop-b:\n{description}")
    assert "**Release approval for drop `drop-b`.**" in description
    assert "**Answer within 15 min" in description and "nothing is released" in description
    assert "poisonguard approve --drop drop-b --reviewer NAME" in description
    assert "champion: none yet" in description
    report_url = _served(description, "report/report.html", stack)
    assert f"[download]({report_url})" in description
    with urllib.request.urlopen(report_url, timeout=10) as response:  # served by the MLflow server
        assert response.read() == (reports["drop-b"].dir / "report.html").read_bytes()
    docs_url = _served(description, "gate/verdicts.html", stack)
    with urllib.request.urlopen(docs_url, timeout=10) as response:  # this drop's Data Docs page
        assert b"poisonguard_verdicts" in response.read()

    artifact = _artifact(client, "screening-report", runs["drop-b"])  # the same links in the run's artifact
    assert "# Screening of drop `drop-b`" in artifact and f"[download]({report_url})" in artifact

    done = stack.cli("approve", "--drop", "drop-b", "--reviewer", "alice", "--note", "checked s03, s07")
    assert done.returncode == 0, done.stderr
    assert "approved release-drop-b" in done.stdout
    b = _wait_terminal(client, runs["drop-b"], stack)
    assert b.state.is_completed(), b.state.message
    assert client.read_flow_run(runs["drop-a"]).state.is_paused()  # drop-a still waits, drop-b is out

    done = stack.cli("approve", "--drop", "drop-a", "--reviewer", "bob")
    assert done.returncode == 0, done.stderr
    assert _wait_terminal(client, runs["drop-a"], stack).state.is_completed()

    records = {d: json.loads((work / d / "release" / "release.json").read_text()) for d in reports}
    for drop, reviewer, note in (("drop-a", "bob", ""), ("drop-b", "alice", "checked s03, s07")):
        approval = records[drop]["approval"]
        assert records[drop]["released"] is True and (work / drop / "release" / "train.json").is_file()
        assert (approval["decision"], approval["reviewer"], approval["note"]) == ("approved", reviewer, note)
        assert approval["flow_run_id"] == str(runs[drop]) and approval["flow_run_name"] == f"release-{drop}"
        assert approval["report"]["report_html_sha256"] == file_sha256(reports[drop].dir / "report.html")
        assert approval["links"]["mlflow_run"].startswith(f"{stack.mlflow_uri}/#/experiments/")
    versions = {records[d]["approval"]["detector_version"] for d in reports}
    assert versions == {"1", "2"}
    assert alias_or_none("two-drops", CHAMPION, uri=stack.mlflow_uri) == records["drop-a"]["approval"][
        "detector_version"]  # the later approval holds the champion


@pytest.mark.slow  # about 1 min on top of the stack
def test_rejection_is_a_clean_recorded_end(stack: Stack, mlflow_server: str, client,
                                           tmp_path: Path) -> None:
    """`poisonguard reject` on a release run: Completed (Rejected), no ERROR log, no data, a release.json with
    the decision, and `challenger` taken off the rejected version (it had no predecessor)."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId, LogFilterLevel
    from prefect.deployments import run_deployment

    from poisonguard.registry import CHALLENGER, CHAMPION, alias_or_none

    report = make_report(tmp_path / "drop-c")
    release_dir = tmp_path / "drop-c" / "release"
    run_deployment("screen-and-release/screen-and-release", timeout=0, flow_run_name="release-drop-c",
                   parameters={"report_dir": str(report.dir), "release_dir": str(release_dir), "skip_repro": True,
                               "drop": "drop-c", "model_name": "rejected-drop", "approval_timeout_s": 900})
    run_id = _wait_paused(client, "release-drop-c", stack)

    waiting = stack.cli("approvals")
    assert waiting.returncode == 0 and f"release-drop-c\t{run_id}\tpaused " in waiting.stdout
    wrong = stack.cli("approve", "--drop", "drop-x", "--reviewer", "bob")
    assert wrong.returncode == 2 and "no paused run named 'release-drop-x'" in wrong.stderr
    assert "release-drop-c" in wrong.stderr  # it lists what is waiting
    done = stack.cli("reject", "--drop", "drop-c", "--reviewer", "bob", "--note", "s07 looks odd")
    assert done.returncode == 0, done.stderr

    run = _wait_terminal(client, run_id, stack)
    assert run.state.type.value == "COMPLETED" and run.state.name == "Rejected"
    assert run.state.message == "release rejected by bob: s07 looks odd"
    errors = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id]),
                                                   level=LogFilterLevel(ge_=40)))
    assert [log.message for log in errors] == []
    assert sorted(p.name for p in release_dir.iterdir()) == ["release.json"]
    record = json.loads((release_dir / "release.json").read_text())
    approval = record["approval"]
    assert record["released"] is False
    assert (approval["decision"], approval["reviewer"], approval["note"]) == ("rejected", "bob", "s07 looks odd")
    assert approval["flow_run_id"] == str(run_id) and approval["detector_version"] == "1"
    assert approval["report"]["verdicts_sha256"] == file_sha256(report.verdicts)
    assert alias_or_none("rejected-drop", CHALLENGER, uri=stack.mlflow_uri) is None
    assert alias_or_none("rejected-drop", CHAMPION, uri=stack.mlflow_uri) is None


# --- helpers ------------------------------------------------------------------------------------------------


def _screened_drop(incoming: Path, work: Path, drop: str) -> Report:
    """An incoming drop whose report a screen already wrote (no model needed): the nightly only starts its
    release run."""
    (incoming / drop).mkdir(parents=True)
    (incoming / drop / "train.json").write_text("[]")
    return make_report(work / drop)  # work/<drop>/report, where the nightly looks for it


def _wait(probe, *, timeout_s: float, what: str, stack: Stack, every_s: float = 1.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(every_s)
    raise TimeoutError(f"no {what} within {timeout_s} s; worker log:\n{stack.log_tail('worker')}")


def _wait_paused(client, name: str, stack: Stack, timeout_s: float = 240):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    def probe():
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))
        failed = [r for r in runs if r.state and r.state.type.value in TERMINAL]
        if failed:
            raise AssertionError(f"{name} ended {failed[0].state.name}: {failed[0].state.message}")
        paused = [r for r in runs if r.state and r.state.is_paused()]
        return paused[0].id if paused else None

    return _wait(probe, timeout_s=timeout_s, what=f"paused run {name}", stack=stack)


def _wait_terminal(client, run_id, stack: Stack, timeout_s: float = 180):
    def probe():
        run = client.read_flow_run(run_id)
        return run if run.state and run.state.type.value in TERMINAL else None

    return _wait(probe, timeout_s=timeout_s, what=f"end of run {run_id}", stack=stack)


def _pause_description(client, run_id) -> str:
    """The description the approver sees above the form (saved with the run's input schema)."""
    run = client.read_flow_run(run_id)
    key = run.state.state_details.run_input_keyset["description"]
    return json.loads(client.read_flow_run_input(run_id, key))


def _served(description: str, artifact: str, stack: Stack) -> str:
    """`artifact` is linked in the MLflow UI from the description; return its download URL on the server."""
    found = re.search(rf"\({re.escape(stack.mlflow_uri)}/#/experiments/\d+/runs/(\w+)/artifactPath/"
                      rf"{re.escape(artifact)}\)", description)
    assert found, description
    return f"{stack.mlflow_uri}/get-artifact?path={artifact}&run_uuid={found.group(1)}"


def _artifact(client, key: str, flow_run_id) -> str:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    found = client.read_artifacts(artifact_filter=ArtifactFilter(
        key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    assert len(found) == 1
    return found[0].data
