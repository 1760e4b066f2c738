"""
# Screen and release

Prefect outside, DVC inside (DESIGN.md §8). One run takes a screened data drop to a decided release:

1. **`dvc repro`** up to the `gate` stage, in one task: DVC locks its workspace, so its stages are never
   fanned out as Prefect tasks, and DVC's own DAG decides what is stale. It refuses to rebuild the `world`
   stage (the base model scheduled screenings read) unless `rebuild_world=True`. Skipped with
   `skip_repro=True` for a report `poisonguard screen` wrote (the nightly does that).
2. **Release gate**: the GX checkpoint over the verdict table, the implied release and the input's checksums
   (`poisonguard.gate`). A failure ends the run here, with the failed expectations in the error.
3. **Challenger**: the screening is logged to MLflow (report, verdicts, this run's Data Docs pages) and the
   fitted detector registered with alias `challenger`.
4. **Approval**: a markdown artifact and the pause description give the approver the counts, links that
   work from a browser (the report and Data Docs pages served by the MLflow server, the MLflow run), the
   comparison with the current `champion`, the deadline and what happens after it. The run pauses with an
   `Approval` form; answer it in the UI or with `poisonguard approve|reject` (poisonguard/approval.py).
5. **Release**, only if approved: `poisonguard.gate.release`, which runs the checkpoint again on exactly the
   ids it is about to write, then writes the cleaned dataset, its images and release.json (with the audit
   record) atomically into `release_dir`, which must not be a DVC stage output.
6. **Champion**: the alias moves to the version registered in step 3.

A rejection is an expected end: the run ends Completed, named `Rejected`, with the reviewer's note as its
message, nothing released, `challenger` back where it was, and a release.json that records the decision. An
unanswered approval ends the run Failed after `approval_timeout_s`, with the same clean-up and record.

```
python flows/screen_release.py --repo-dir . --report-dir work/report --release-dir work/flow-release
```
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, runtime, task
from prefect.artifacts import create_markdown_artifact
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.states import Completed, Failed, State

from flows.shell import dvc_cli, run_command

ARTIFACT_KEY = "screening-report"
DEFAULT_MODEL = "poisonguard-detector"
DEFAULT_RELEASE_DIR = "work/flow-release"
PROTECTED_STAGES = ("world",)  # their outputs (the base model) are read by scheduled screenings
_TOP_FLAGGED = 20


class Approval(RunInput):
    """The approver's answer. `reviewer` is required for an approval: a release names who let it out."""

    approved: bool
    reviewer: str
    note: str = ""


# --- tasks --------------------------------------------------------------------------------------------------


@task(retries=1, retry_delay_seconds=30, log_prints=True)
def dvc_repro(repo_dir: str, targets: list[str], rebuild_world: bool = False) -> None:
    """`dvc repro TARGETS` in the repo. Refuses (before running anything) when that would rebuild a
    protected stage, unless `rebuild_world`. One retry: the usual transient failure is another DVC process
    holding the workspace lock."""
    logger = get_run_logger()
    if not rebuild_world:
        lines = run_command([*dvc_cli(), "status", "--json", "--with-deps", *targets], cwd=repo_dir)
        stale = json.loads("\n".join(lines) or "{}")
        hit = [stage for stage in stale if stage.split(":")[-1] in PROTECTED_STAGES]
        if hit:
            raise RuntimeError(
                f"`dvc repro {' '.join(targets)}` would rebuild {', '.join(hit)} (its outputs changed or are "
                "missing), replacing the base model that scheduled screenings read. Rebuild it on purpose "
                "(`dvc repro world` when no screening runs, or rebuild_world=True) and run again.")
    run_command([*dvc_cli(), "repro", *targets], cwd=repo_dir, logger=logger)


@task(retries=0)
def check_gate(report_dir: str, repo_dir: str, gate_root: str | None) -> dict[str, Any]:
    """Run the release checkpoint; raises GateFailed. No retries: the result is deterministic."""
    from poisonguard.gate import run_gate

    result = run_gate(report_dir, gate_root=gate_root, config=_gate_config(repo_dir))
    return {**result.summary, "data_docs": result.data_docs, "data_docs_pages": result.validation_pages}


@task(retries=2, retry_delay_seconds=10)
def register_challenger(report_dir: str, model_name: str, tracking_uri: str | None, run_name: str,
                        gate_pages: dict[str, str]) -> dict[str, Any]:
    """Log the screening (with this gate's Data Docs pages) and register its detector as `challenger`.
    Returns the new version, the versions `challenger` and `champion` pointed at before, the champion's
    summary for the comparison, and the run's browser links. Retried: a shared sqlite or HTTP tracking
    store can be briefly busy."""
    from poisonguard.registry import (
        CHALLENGER,
        alias_or_none,
        alias_summary,
        log_screening,
        register_detector,
        run_links,
    )
    from poisonguard.registry.tracking import log_files

    previous = alias_or_none(model_name, CHALLENGER, uri=tracking_uri)
    champion = alias_summary(model_name, uri=tracking_uri)
    run_id = log_screening(report_dir, uri=tracking_uri, run_name=run_name)
    pages = {f"{table}.html": _local_path(url) for table, url in gate_pages.items()}
    logged = log_files(run_id, {k: v for k, v in pages.items() if v is not None}, artifact_path="gate",
                       uri=tracking_uri)
    version = register_detector(report_dir, model_name, run_id=run_id, uri=tracking_uri)
    artifacts = {"report": "report/report.html",
                 **{f"gate_{Path(name).stem}": path for name, path in logged.items()}}
    if champion is not None and champion.get("run_id"):
        champion["links"] = run_links(champion["run_id"], uri=tracking_uri, artifacts={})
    return {"version": version, "previous_challenger": previous, "champion": champion, "run_id": run_id,
            "links": run_links(run_id, uri=tracking_uri, artifacts=artifacts)}


@task(retries=0)
def publish_report(report_dir: str, gate: dict[str, Any], tracked: dict[str, Any] | None, drop: str,
                   deadline: str) -> str:
    """A markdown artifact for the approver; returns its key."""
    create_markdown_artifact(markdown=_report_markdown(Path(report_dir), gate, tracked, drop, deadline),
                             key=ARTIFACT_KEY,
                             description=f"screening of drop {drop}: what the approver decides on")
    return ARTIFACT_KEY


@task(retries=0)
def release_data(report_dir: str, release_dir: str, repo_dir: str, gate_root: str | None,
                 approval: dict[str, Any]) -> str:
    """Write the cleaned release with its audit record (re-checks the gate on what it writes); returns the
    dataset path."""
    from poisonguard.gate import release

    return str(release(report_dir, release_dir, gate_root=gate_root, config=_gate_config(repo_dir),
                       approval=approval))


@task(retries=0)
def record_no_release(report_dir: str, release_dir: str, approval: dict[str, Any]) -> str:
    """release.json for a rejected or expired decision (no data); returns its path."""
    from poisonguard.gate import record_decision

    return str(record_decision(report_dir, release_dir, approval))


@task(retries=2, retry_delay_seconds=10)
def withdraw_challenger(model_name: str, version: str, previous: str | None, reason: str,
                        tracking_uri: str | None) -> str | None:
    """Put `challenger` back where it was before this run registered `version` (if nothing moved it
    since); returns where it points now."""
    from poisonguard.registry import CHALLENGER, restore_alias

    return restore_alias(model_name, CHALLENGER, previous, expected=version, uri=tracking_uri, reason=reason)


@task(retries=2, retry_delay_seconds=10)
def promote_champion(model_name: str, version: str, reviewer: str, note: str, tracking_uri: str | None) -> None:
    from poisonguard.registry import promote

    promote(model_name, version, uri=tracking_uri, reviewer=reviewer, note=note)


# --- the flow -----------------------------------------------------------------------------------------------


@flow(name="screen-and-release")
def screen_and_release(
    repo_dir: str = ".",
    report_dir: str = "work/report",
    release_dir: str = DEFAULT_RELEASE_DIR,
    approval_timeout_s: int = 24 * 3600,
    skip_repro: bool = False,
    dvc_targets: list[str] | None = None,
    gate_root: str | None = None,
    track: bool = True,
    model_name: str = DEFAULT_MODEL,
    tracking_uri: str | None = None,
    poll_interval_s: int = 10,
    drop: str | None = None,
    rebuild_world: bool = False,
) -> dict[str, Any] | State:
    """Screen (dvc repro), gate, wait for approval, release, promote. Relative paths are taken from
    `repo_dir`. `skip_repro` starts at the gate with an existing report (e.g. one `poisonguard screen`
    wrote); `track=False` leaves MLflow out; `drop` names the data in what the approver sees (default: the
    folder of the screened dataset)."""
    logger = get_run_logger()
    repo = Path(repo_dir).resolve()
    report = _under(repo, report_dir)
    out = _under(repo, release_dir)
    clash = _dvc_output_containing(repo, out)
    if clash is not None:
        return Failed(message=f"release_dir {out} is (inside) the DVC output `{clash}` of {repo / 'dvc.yaml'}; "
                              "a flow releases into its own folder (default work/flow-release)")

    if not skip_repro:
        dvc_repro(str(repo), dvc_targets or ["gate"], rebuild_world)
    gate = check_gate(str(report), str(repo), gate_root)
    drop = drop or Path(gate["input"]).parent.name
    run_name = runtime.flow_run.get_name() or drop
    tracked = (register_challenger(str(report), model_name, tracking_uri, run_name, gate["data_docs_pages"])
               if track else None)
    version = tracked["version"] if tracked else None
    deadline = (datetime.now(UTC) + timedelta(seconds=approval_timeout_s)).strftime("%Y-%m-%d %H:%M UTC")
    artifact = publish_report(str(report), gate, tracked, drop, deadline)

    def decision(kind: str, reviewer: str, note: str) -> dict[str, Any]:
        from poisonguard.gate import approval_record

        links = {"flow_run": runtime.flow_run.get_flow_run_ui_url()}
        if tracked:
            links.update({k: v for k, v in tracked["links"].items() if k in ("mlflow_run", "report")})
        return approval_record(kind, reviewer=reviewer, note=note, report_dir=report,
                               flow_run_id=runtime.flow_run.get_id(), flow_run_name=runtime.flow_run.get_name(),
                               detector_version=version, links=links)

    def withdraw(reason: str) -> None:
        if tracked is not None:
            withdraw_challenger(model_name, version, tracked["previous_challenger"], reason, tracking_uri)

    try:
        answer = pause_flow_run(
            wait_for_input=Approval.with_initial_data(
                description=_approval_description(report, out, gate, artifact, tracked, drop,
                                                  approval_timeout_s, deadline),
                approved=False, reviewer="", note=""),
            timeout=approval_timeout_s, poll_interval=poll_interval_s)
    except FlowPauseTimeout:
        # The server fails a run whose pause expired whatever it proposes next ("The flow was ... and never
        # resumed."), so the consequence goes into the log and the audit record, not the state's message.
        withdraw(f"approval expired after {approval_timeout_s} s")
        waited = _duration(approval_timeout_s)
        record_no_release(str(report), str(out), decision("expired", "", f"no answer within {waited}"))
        logger.warning("nobody answered the approval of %s within %s; nothing was released and `challenger` "
                       "went back. %s", drop, waited, _rerun_hint(report, out, drop))
        return Failed(name="Expired",
                      message=f"approval of {drop} expired after {waited}; nothing was released")

    reviewer = answer.reviewer.strip()
    if not answer.approved:
        who = reviewer or "the approver"
        withdraw(f"rejected by {who}: {answer.note or 'no note given'}")
        record = record_no_release(str(report), str(out), decision("rejected", reviewer, answer.note))
        logger.info("release of %s rejected by %s: %s; nothing was released (decision recorded in %s)",
                    drop, who, answer.note or "(no note)", record)
        return Completed(name="Rejected",
                         message=f"release rejected by {who}: {answer.note or 'no note given'}")
    if not reviewer:
        withdraw("approved without a reviewer's name")
        return Failed(message="an approval must name its reviewer; nothing was released")

    approval = decision("approved", reviewer, answer.note)
    released = release_data(str(report), str(out), str(repo), gate_root, approval)
    if version is not None:
        promote_champion(model_name, version, reviewer, answer.note, tracking_uri)
    logger.info("released %s (approved by %s)", released, reviewer)
    return {"release": released, "model_version": version, "reviewer": reviewer, "gate": gate, "drop": drop,
            "decision": "approved"}


# --- helpers ------------------------------------------------------------------------------------------------


def _under(root: Path, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else root / p


def _gate_config(repo_dir: str):
    from poisonguard.gate import GateConfig, gate_config

    params = Path(repo_dir) / "params.yaml"
    return gate_config(params) if params.is_file() else GateConfig()


def _dvc_output_containing(repo: Path, path: Path) -> str | None:
    """The output of a stage in `repo`'s dvc.yaml that `path` is, lies inside, or contains; else None.
    A flow writing there would make `dvc status` stale and be overwritten by the next `dvc repro`."""
    dvc_yaml = repo / "dvc.yaml"
    if not dvc_yaml.is_file():
        return None
    stages = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages") or {}
    target = path.resolve()
    for stage in stages.values():
        for out in (stage or {}).get("outs") or []:
            name = next(iter(out)) if isinstance(out, dict) else str(out)
            tracked = (repo / name).resolve()
            if target == tracked or target.is_relative_to(tracked) or tracked.is_relative_to(target):
                return name
    return None


def _local_path(url: str | None) -> str | None:
    if not url:
        return None
    from urllib.parse import unquote, urlparse

    parsed = urlparse(url)
    return unquote(parsed.path) if parsed.scheme == "file" else None


def _duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    return f"{seconds / 60:g} min" if seconds >= 60 and seconds % 60 == 0 else f"{seconds:g} s"


def _rerun_hint(report: Path, out: Path, drop: str) -> str:
    return ("To decide later, start a new run on the same report: `prefect deployment run "
            f"screen-and-release/screen-and-release -p report_dir={report} -p release_dir={out} "
            f"-p skip_repro=true -p drop={drop}` (under its own name with `--flow-run-name release-{drop}`).")


def _link(label: str, url: str | None, fallback: str | None = None) -> str:
    if url:
        return f"[{label}]({url})"
    return f"{label}: `{fallback}`" if fallback else f"{label}: not available"


def _links_lines(report: Path, gate: dict[str, Any], tracked: dict[str, Any] | None) -> list[str]:
    """Where the approver reads the evidence: URLs served by the MLflow server when it is an HTTP server,
    else paths on the worker (say so: they only open on that machine)."""
    links = (tracked or {}).get("links") or {}
    pages = gate.get("data_docs_pages") or {}
    served = bool(links.get("mlflow_run"))
    lines = [
        "- Report: " + (f"[report.html]({links['report']}) (in MLflow; [download]({links['report_download']}))"
                        if served else f"`{report / 'report.html'}` (on the worker; no MLflow server)"),
        "- MLflow run: " + (f"[{tracked['run_id']}]({links['mlflow_run']})" if served
                            else (links.get("where") or "not tracked")),
    ]
    docs = []
    for table in ("verdicts", "release", "provenance"):
        url = links.get(f"gate_{table}") if served else pages.get(table)
        if url:
            docs.append(f"[{table}]({url})")
    where = "" if served else " (files on the worker)"
    lines.append(f"- Data Docs of this drop's gate{where}: " + (" · ".join(docs) if docs else "not built"))
    return lines


def _comparison_lines(gate: dict[str, Any], tracked: dict[str, Any] | None) -> list[str]:
    this = (f"this drop: {gate['n_flagged']} flagged of {gate['n_ok']} screened "
            f"({gate['flag_rate']:.1%}), {gate['n_quarantined']} quarantined, {gate['n_input']} samples")
    if tracked is None:
        return [f"- {this}; not tracked in MLflow, so no champion to compare with"]
    champion = tracked.get("champion")
    this += f", detector version {tracked['version']}"
    if champion is None:
        return [f"- {this}", "- champion: none yet (this would be the first approved screening)"]

    def num(key: str) -> str:
        value = champion.get(key)
        return "?" if value is None else f"{value:.0f}"

    rate = champion.get("flag_rate")
    link = ((champion.get("links") or {}).get("mlflow_run"))
    name = f"[version {champion['version']}]({link})" if link else f"version {champion['version']}"
    return [f"- {this}",
            (f"- champion (last approved screening): {name}, approved by {champion.get('reviewer') or '?'}: "
             f"{num('n_flagged')} flagged of {num('n_ok')} screened "
             f"({'?' if rate is None else f'{rate:.1%}'}), {num('n_quarantined')} quarantined, "
             f"{num('n_samples')} samples")]


def _report_markdown(report: Path, gate: dict[str, Any], tracked: dict[str, Any] | None, drop: str,
                     deadline: str) -> str:
    import pandas as pd

    table = pd.read_parquet(report / "verdicts.parquet")
    flagged = table[table["flagged"] == True].sort_values("p_poison", ascending=False)
    quarantined = table[table["status"] == "quarantined"]
    version = tracked["version"] if tracked else None
    lines = [
        f"# Screening of drop `{drop}`",
        "",
        f"Waiting for a release approval until {deadline}.",
        "",
        *_links_lines(report, gate, tracked),
        f"- Input: `{gate['input']}`",
        f"- Detector version: {version or 'not registered'} (alias `challenger`)",
        f"- Report folder (worker): `{report}`",
        "",
        "| samples | screened | quarantined | flagged | flag rate | bound | to release |",
        "|---|---|---|---|---|---|---|",
        (f"| {gate['n_input']} | {gate['n_ok']} | {gate['n_quarantined']} | {gate['n_flagged']} "
         f"| {gate['flag_rate']:.3f} | {gate['max_flag_rate']:.3f} | {gate['n_release']} |"),
        "",
        "## Compared with the champion",
        "",
        *_comparison_lines(gate, tracked),
        "",
        f"## Most suspicious flagged samples (top {_TOP_FLAGGED})",
        "",
        "| id | p_poison |",
        "|---|---|",
        *[f"| {r.id} | {r.p_poison:.3f} |" for r in flagged.head(_TOP_FLAGGED).itertuples()],
        "",
        "## Quarantine reasons",
        "",
        *[f"- {reason or '(none given)'}: {count}"
          for reason, count in quarantined["reason"].value_counts().items()],
    ]
    return "\n".join(lines)


def _approval_description(report: Path, out: Path, gate: dict[str, Any], artifact: str,
                          tracked: dict[str, Any] | None, drop: str, timeout_s: int, deadline: str) -> str:
    from poisonguard.approval import release_run_name

    version = tracked["version"] if tracked else None
    run_name = runtime.flow_run.get_name()
    named = run_name == release_run_name(drop)
    target = f"--drop {drop}" if named else f"--flow-run {runtime.flow_run.get_id()}"
    effect = (f"Approving releases the data and makes detector version {version} the `champion`; rejecting "
              f"releases nothing and takes `challenger` off version {version}." if version else
              "Approving releases the data; rejecting releases nothing.")
    return "\n".join([
        (f"**Release approval for drop `{drop}`.** {gate['n_release']} of {gate['n_input']} samples of "
         f"`{gate['input']}` would be released to `{out}`; {gate['n_flagged']} flagged and "
         f"{gate['n_quarantined']} quarantined samples are withheld. The release gate passed."),
        "",
        *_links_lines(report, gate, tracked),
        f"- The artifact `{artifact}` of this run has the table and the most suspicious samples.",
        "",
        *_comparison_lines(gate, tracked),
        "",
        effect,
        "",
        (f"**Answer within {_duration(timeout_s)} (by {deadline}).** If nobody answers by then, the run ends "
         f"Failed, nothing is released, `challenger` goes back, and a new run is needed to decide."),
        "",
        (f"Answer with this form (name yourself as reviewer), or from a shell: `poisonguard approve {target} "
         f"--reviewer NAME --note \"...\"` (or `poisonguard reject ...`)."),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the screen-and-release flow once.")
    parser.add_argument("--repo-dir", default=".")
    parser.add_argument("--report-dir", default="work/report")
    parser.add_argument("--release-dir", default=DEFAULT_RELEASE_DIR)
    parser.add_argument("--approval-timeout-s", type=int, default=24 * 3600)
    parser.add_argument("--skip-repro", action="store_true")
    parser.add_argument("--drop", help="name of the data in what the approver sees")
    args = parser.parse_args()
    screen_and_release(repo_dir=args.repo_dir, report_dir=args.report_dir, release_dir=args.release_dir,
                       approval_timeout_s=args.approval_timeout_s, skip_repro=args.skip_repro, drop=args.drop)


if __name__ == "__main__":
    main()
