"""
# Nightly screening of incoming data drops

The scheduled deployment (infra/prefect.yaml, 02:00 UTC) behind the platform's intake folder. Each
sub-folder of `incoming_dir` is one customer drop: one dataset file (`*.json` / `*.jsonl`, LLaVA or HF
messages) and its images. For every drop not seen before, the flow

1. runs `poisonguard screen --quiet` into `<work_dir>/<drop>/report` (one drop after another: a screening
   uses the whole machine), then
2. starts the drop's own release run, named `release-<drop>`, from the screen-and-release deployment (gate,
   challenger, approval, release into `<work_dir>/<drop>/release`, champion) and does not wait for it.

So each drop waits for its own approval in its own run (`poisonguard approvals` lists them; `poisonguard
approve --drop <drop>` answers one), and a pending approval never holds the next drop or the next night.
With `release_deployment=""` the release runs inline as subflows instead, one after another (a local run
without deployments; each approval then holds the later drops).

A drop counts as seen once its release run was started (`<work_dir>/<drop>/release-run.json`). A drop whose
report exists but whose release run never started (e.g. the API was down) is not screened again: only its
release run is started. A drop whose files changed during the last `settle_s` seconds is left for the next
night: it may still be being copied in. One drop's failure does not stop the others; the run fails at the end
if any drop failed. A markdown artifact lists what happened to every drop, with links to the release runs.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.states import Failed, State

from flows.screen_release import DEFAULT_MODEL, screen_and_release
from flows.shell import poisonguard_cli, run_command
from poisonguard.approval import release_run_name

ARTIFACT_KEY = "nightly-summary"
DATASET_SUFFIXES = (".json", ".jsonl")
PREFERRED_NAMES = ("train.json", "train.jsonl")
RELEASE_DEPLOYMENT = "screen-and-release/screen-and-release"
STARTED_FILE = "release-run.json"


@task(retries=0)
def find_new_drops(incoming_dir: str, work_dir: str, settle_s: float) -> dict[str, list[dict[str, str]]]:
    """Sort the sub-folders of `incoming_dir` into `new` (to screen and/or release) and `skipped` (with why)."""
    new, skipped = [], []
    now = time.time()
    for folder in sorted(p for p in Path(incoming_dir).iterdir() if p.is_dir() and not p.name.startswith(".")):
        name = folder.name
        dataset = _dataset_file(folder)
        started = Path(work_dir) / name / STARTED_FILE
        if dataset is None:
            skipped.append({"drop": name, "why": "no single dataset file (*.json / *.jsonl) at its top level"})
        elif started.exists():
            run = json.loads(started.read_text())
            skipped.append({"drop": name, "why": f"already screened; release run {run.get('flow_run_name')}",
                            "url": run.get("url") or ""})
        elif now - _newest_mtime(folder) < settle_s:
            skipped.append({"drop": name, "why": f"changed in the last {settle_s:g} s; still arriving?"})
        else:
            new.append({"drop": name, "dataset": str(dataset)})
    return {"new": new, "skipped": skipped}


@task(retries=1, retry_delay_seconds=60)
def screen_drop(dataset: str, base_model: str, report_dir: str, repo_dir: str, screen_args: list[str]) -> str:
    """`poisonguard screen --quiet` for one drop. One retry, for a lost worker or a full GPU; a bad input
    exits 2 the same way twice."""
    run_command([*poisonguard_cli(), "screen", "--data", dataset, "--base", base_model, "--out", report_dir,
                 "--quiet", *screen_args], cwd=repo_dir, logger=get_run_logger())
    return report_dir


@task(retries=1, retry_delay_seconds=10)
def start_release_run(deployment: str, drop: str, parameters: dict[str, Any], marker: str) -> dict[str, str]:
    """Create the drop's release run (`release-<drop>`) from `deployment` and return at once; record it in
    `marker` so later nights skip the drop. The idempotency key (this nightly run and the drop) makes a retry
    of this task reuse the run it may already have created, while a later night starts a new one."""
    from prefect import runtime
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_UI_URL

    name = release_run_name(drop)
    run = run_deployment(deployment, parameters=parameters, flow_run_name=name, timeout=0,
                         idempotency_key=f"{runtime.flow_run.get_id()}:{name}")
    ui = PREFECT_UI_URL.value()
    started = {"flow_run_id": str(run.id), "flow_run_name": name, "deployment": deployment,
               "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
               "url": f"{ui.rstrip('/')}/runs/flow-run/{run.id}" if ui else ""}
    Path(marker).write_text(json.dumps(started, indent=2))
    return started


@flow(name="nightly-screen")
def nightly_screen(
    incoming_dir: str,
    base_model: str,
    work_dir: str = "work/nightly",
    repo_dir: str = ".",
    settle_s: float = 300,
    approval_timeout_s: int = 24 * 3600,
    screen_args: list[str] | None = None,
    track: bool = True,
    model_name: str = DEFAULT_MODEL,
    tracking_uri: str | None = None,
    gate_root: str | None = None,
    release_deployment: str = RELEASE_DEPLOYMENT,
) -> dict[str, Any] | State:
    """Screen every new drop in `incoming_dir` and start its release run (paths relative to `repo_dir`)."""
    logger = get_run_logger()
    repo = Path(repo_dir).resolve()
    incoming, work = repo / incoming_dir, repo / work_dir
    drops = find_new_drops(str(incoming), str(work), settle_s)
    outcomes: list[dict[str, str]] = [{**s, "outcome": "skipped"} for s in drops["skipped"]]
    for drop in drops["new"]:
        name = drop["drop"]
        report = work / name / "report"
        if not (report / "manifest.json").exists():
            # a state, not a raise: one bad drop must not stop the rest
            screened = screen_drop(drop["dataset"], base_model, str(report), str(repo), list(screen_args or []),
                                   return_state=True)
            if not screened.is_completed():
                outcomes.append({"drop": name, "outcome": "failed", "why": f"screen: {screened.message}"})
                continue
        parameters = {"repo_dir": str(repo), "report_dir": str(report),
                      "release_dir": str(work / name / "release"), "approval_timeout_s": approval_timeout_s,
                      "skip_repro": True, "track": track, "model_name": model_name,
                      "tracking_uri": tracking_uri, "gate_root": gate_root, "drop": name}
        if release_deployment:
            started = start_release_run(release_deployment, name, parameters, str(work / name / STARTED_FILE),
                                        return_state=True)
            if started.is_completed():
                run = started.result()
                logger.info("%s: release run %s waits for approval: %s", name, run["flow_run_name"],
                            run["url"] or run["flow_run_id"])
                outcomes.append({"drop": name, "outcome": "awaiting approval",
                                 "why": f"release run {run['flow_run_name']}", "url": run["url"]})
            else:
                outcomes.append({"drop": name, "outcome": "failed", "why": f"release run: {started.message}"})
            continue
        state = screen_and_release.with_options(flow_run_name=release_run_name(name))(
            **parameters, return_state=True)
        outcomes.append({"drop": name, "outcome": state.name.lower(), "why": state.message or ""})
    create_markdown_artifact(markdown=_summary(incoming, outcomes), key=ARTIFACT_KEY,
                             description="what the nightly screening did with each drop")
    failed = [o["drop"] for o in outcomes if o["outcome"] in ("failed", "crashed")]
    logger.info("nightly screening: %d drop(s) looked at, %d failed", len(outcomes), len(failed))
    if failed:
        return Failed(message=f"{len(failed)} drop(s) failed: {', '.join(failed)}")
    return {"drops": outcomes}


def _dataset_file(folder: Path) -> Path | None:
    candidates = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in DATASET_SUFFIXES)
    preferred = [p for p in candidates if p.name in PREFERRED_NAMES]
    if len(preferred) == 1:
        return preferred[0]
    return candidates[0] if len(candidates) == 1 else None


def _newest_mtime(folder: Path) -> float:
    return max((p.stat().st_mtime for p in folder.rglob("*")), default=folder.stat().st_mtime)


def _summary(incoming: Path, outcomes: list[dict[str, str]]) -> str:
    rows = [f"| {o['drop']} | {o['outcome']} | {_linked(o.get('why', ''), o.get('url'))} |" for o in outcomes]
    return "\n".join([f"# Nightly screening of `{incoming}`", "", "| drop | outcome | note |", "|---|---|---|",
                      *rows] if rows else [f"# Nightly screening of `{incoming}`", "", "No drops."])


def _linked(text: str, url: str | None) -> str:
    return f"[{text}]({url})" if url else text


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Screen every new drop of an incoming folder once.")
    parser.add_argument("--incoming-dir", required=True)
    parser.add_argument("--base-model", required=True)
    parser.add_argument("--work-dir", default="work/nightly")
    parser.add_argument("--release-deployment", default=RELEASE_DEPLOYMENT,
                        help='deployment of the release runs; "" releases inline, one drop after another')
    cli = parser.parse_args()
    nightly_screen(incoming_dir=cli.incoming_dir, base_model=cli.base_model, work_dir=cli.work_dir,
                   release_deployment=cli.release_deployment)
