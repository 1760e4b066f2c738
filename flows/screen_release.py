"""
# Screen and release

Prefect outside, DVC inside (DESIGN.md §8). One run takes a data drop from screening to an approved release:

1. **`dvc repro`** up to the `gate` stage, in one task: DVC locks its workspace, so its stages are never
   fanned out as Prefect tasks, and DVC's own DAG decides what is stale.
2. **Release gate**: the GX checkpoint over the verdict table, the implied release and the input's checksums
   (`poisonguard.gate`). A failure ends the run here, with the failed expectations in the error.
3. **Challenger**: the screening is logged to MLflow and the fitted detector registered with alias
   `challenger`.
4. **Approval**: a markdown artifact summarises the report, and the run pauses with an `Approval` form
   whose description links the HTML report, the artifact and the Data Docs. Resume it from the UI, the CLI,
   or `resume_flow_run(id, run_input={...})`.
5. **Release**, only if approved: `poisonguard.gate.release`, which runs the checkpoint again on exactly the
   ids it is about to write, then writes the cleaned dataset, its images and release.json atomically.
6. **Champion**: the alias moves to the version registered in step 3.

A rejection ends the run Cancelled with the reviewer's note; nothing is released and `champion` stays.

```
python flows/screen_release.py --repo-dir . --report-dir work/report --release-dir work/release
```
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.states import Cancelled, Failed, State

from flows.shell import dvc_cli, run_command

ARTIFACT_KEY = "screening-report"
DEFAULT_MODEL = "poisonguard-detector"
_TOP_FLAGGED = 20


class Approval(RunInput):
    """The approver's answer. `reviewer` is required for an approval: a release names who let it out."""

    approved: bool
    reviewer: str
    note: str = ""


# --- tasks --------------------------------------------------------------------------------------------------


@task(retries=1, retry_delay_seconds=30, log_prints=True)
def dvc_repro(repo_dir: str, targets: list[str]) -> None:
    """`dvc repro TARGETS` in the repo. One retry: the usual transient failure is another DVC process
    holding the workspace lock."""
    run_command([*dvc_cli(), "repro", *targets], cwd=repo_dir, logger=get_run_logger())


@task(retries=0)
def check_gate(report_dir: str, repo_dir: str, gate_root: str | None) -> dict[str, Any]:
    """Run the release checkpoint; raises GateFailed. No retries: the result is deterministic."""
    from poisonguard.gate import run_gate

    result = run_gate(report_dir, gate_root=gate_root, config=_gate_config(repo_dir))
    return {**result.summary, "data_docs": result.data_docs}


@task(retries=2, retry_delay_seconds=10)
def register_challenger(report_dir: str, model_name: str, tracking_uri: str | None) -> str:
    """Log the screening and register its detector as `challenger`; return the model version. Retried: a
    shared sqlite or HTTP tracking store can be briefly busy."""
    from poisonguard.registry import log_screening, register_detector

    run_id = log_screening(report_dir, uri=tracking_uri, run_name=Path(report_dir).name)
    return register_detector(report_dir, model_name, run_id=run_id, uri=tracking_uri)


@task(retries=0)
def publish_report(report_dir: str, gate: dict[str, Any], version: str | None) -> str:
    """A markdown artifact for the approver; returns its key."""
    create_markdown_artifact(markdown=_report_markdown(Path(report_dir), gate, version), key=ARTIFACT_KEY,
                             description="poisonguard screening summary for the release approval")
    return ARTIFACT_KEY


@task(retries=0)
def release_data(report_dir: str, release_dir: str, repo_dir: str, gate_root: str | None) -> str:
    """Write the cleaned release (re-checks the gate on what it writes); returns the dataset path."""
    from poisonguard.gate import release

    return str(release(report_dir, release_dir, gate_root=gate_root, config=_gate_config(repo_dir)))


@task(retries=2, retry_delay_seconds=10)
def promote_champion(model_name: str, version: str, reviewer: str, note: str, tracking_uri: str | None) -> None:
    from poisonguard.registry import promote

    promote(model_name, version, uri=tracking_uri, reviewer=reviewer, note=note)


# --- the flow -----------------------------------------------------------------------------------------------


@flow(name="screen-and-release")
def screen_and_release(
    repo_dir: str = ".",
    report_dir: str = "work/report",
    release_dir: str = "work/release",
    approval_timeout_s: int = 24 * 3600,
    skip_repro: bool = False,
    dvc_targets: list[str] | None = None,
    gate_root: str | None = None,
    track: bool = True,
    model_name: str = DEFAULT_MODEL,
    tracking_uri: str | None = None,
    poll_interval_s: int = 10,
) -> dict[str, Any] | State:
    """Screen (dvc repro), gate, wait for approval, release, promote. Relative paths are taken from
    `repo_dir`. `skip_repro` starts at the gate with an existing report (e.g. one `poisonguard screen`
    wrote); `track=False` leaves MLflow out."""
    logger = get_run_logger()
    repo = Path(repo_dir).resolve()
    report = _under(repo, report_dir)
    out = _under(repo, release_dir)

    if not skip_repro:
        dvc_repro(str(repo), dvc_targets or ["gate"])
    gate = check_gate(str(report), str(repo), gate_root)
    version = register_challenger(str(report), model_name, tracking_uri) if track else None
    artifact = publish_report(str(report), gate, version)

    answer = pause_flow_run(
        wait_for_input=Approval.with_initial_data(
            description=_approval_description(report, out, gate, artifact, version),
            approved=False, reviewer="", note=""),
        timeout=approval_timeout_s, poll_interval=poll_interval_s)
    if not answer.approved:
        who = answer.reviewer or "the approver"
        logger.warning("release rejected by %s: %s", who, answer.note or "(no note)")
        return Cancelled(message=f"release rejected by {who}: {answer.note or 'no note given'}")
    if not answer.reviewer.strip():
        return Failed(message="an approval must name its reviewer; nothing was released")

    released = release_data(str(report), str(out), str(repo), gate_root)
    if version is not None:
        promote_champion(model_name, version, answer.reviewer, answer.note, tracking_uri)
    logger.info("released %s (approved by %s)", released, answer.reviewer)
    return {"release": released, "model_version": version, "reviewer": answer.reviewer, "gate": gate}


# --- helpers ------------------------------------------------------------------------------------------------


def _under(root: Path, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else root / p


def _gate_config(repo_dir: str):
    from poisonguard.gate import GateConfig, gate_config

    params = Path(repo_dir) / "params.yaml"
    return gate_config(params) if params.is_file() else GateConfig()


def _report_markdown(report: Path, gate: dict[str, Any], version: str | None) -> str:
    import pandas as pd

    table = pd.read_parquet(report / "verdicts.parquet")
    flagged = table[table["flagged"] == True].sort_values("p_poison", ascending=False)
    quarantined = table[table["status"] == "quarantined"]
    lines = [
        f"# Screening report: {report.name}",
        "",
        f"- HTML report: `{report / 'report.html'}`",
        f"- Data Docs (release gate): {gate.get('data_docs') or 'not built'}",
        f"- Input: `{gate['input']}`",
        f"- Detector version: {version or 'not registered'} (alias `challenger`)",
        "",
        "| samples | screened | quarantined | flagged | flag rate | bound | to release |",
        "|---|---|---|---|---|---|---|",
        (f"| {gate['n_input']} | {gate['n_ok']} | {gate['n_quarantined']} | {gate['n_flagged']} "
         f"| {gate['flag_rate']:.3f} | {gate['max_flag_rate']:.3f} | {gate['n_release']} |"),
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
                          version: str | None) -> str:
    return (
        f"**Release approval.** {gate['n_release']} of {gate['n_input']} samples of `{gate['input']}` would be "
        f"released to `{out}`; {gate['n_flagged']} flagged and {gate['n_quarantined']} quarantined samples "
        f"are withheld. The release gate passed.\n\n"
        f"Review the report `{report / 'report.html'}`, the artifact `{artifact}` of this run, and the Data "
        f"Docs {gate.get('data_docs') or ''}. Approving releases the data"
        + (f" and makes detector version {version} the `champion`." if version else ".")
        + " Name yourself as reviewer."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the screen-and-release flow once.")
    parser.add_argument("--repo-dir", default=".")
    parser.add_argument("--report-dir", default="work/report")
    parser.add_argument("--release-dir", default="work/release")
    parser.add_argument("--approval-timeout-s", type=int, default=24 * 3600)
    parser.add_argument("--skip-repro", action="store_true")
    args = parser.parse_args()
    screen_and_release(repo_dir=args.repo_dir, report_dir=args.report_dir, release_dir=args.release_dir,
                       approval_timeout_s=args.approval_timeout_s, skip_repro=args.skip_repro)


if __name__ == "__main__":
    main()
