"""
# Nightly screening of incoming data drops

The scheduled deployment (infra/prefect.yaml, 02:00 UTC) behind the platform's intake folder. Each
sub-folder of `incoming_dir` is one customer drop: one dataset file (`*.json` / `*.jsonl`, LLaVA or HF
messages) and its images. For every drop not seen before, the flow

1. runs `poisonguard screen` into `<work_dir>/<drop>/report`, then
2. hands the report to the screen-and-release flow (gate, challenger, approval, release into
   `<work_dir>/<drop>/release`, champion) as a subflow.

A drop counts as seen once its report exists, so a rejected or failed drop is not screened again until
someone removes its report. A drop whose files changed during the last `settle_s` seconds is left for the next
night: it may still be being copied in. One drop's failure does not stop the others; the run fails at the end
if any drop failed. A markdown artifact lists what happened to every drop.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.states import Failed, State

from flows.screen_release import DEFAULT_MODEL, screen_and_release
from flows.shell import poisonguard_cli, run_command

ARTIFACT_KEY = "nightly-summary"
DATASET_SUFFIXES = (".json", ".jsonl")
PREFERRED_NAMES = ("train.json", "train.jsonl")


@task(retries=0)
def find_new_drops(incoming_dir: str, work_dir: str, settle_s: float) -> dict[str, list[dict[str, str]]]:
    """Sort the sub-folders of `incoming_dir` into `new` (to screen) and `skipped` (with why)."""
    new, skipped = [], []
    now = time.time()
    for folder in sorted(p for p in Path(incoming_dir).iterdir() if p.is_dir() and not p.name.startswith(".")):
        name = folder.name
        dataset = _dataset_file(folder)
        if dataset is None:
            skipped.append({"drop": name, "why": "no single dataset file (*.json / *.jsonl) at its top level"})
        elif (Path(work_dir) / name / "report" / "manifest.json").exists():
            skipped.append({"drop": name, "why": "already screened"})
        elif now - _newest_mtime(folder) < settle_s:
            skipped.append({"drop": name, "why": f"changed in the last {settle_s:g} s; still arriving?"})
        else:
            new.append({"drop": name, "dataset": str(dataset)})
    return {"new": new, "skipped": skipped}


@task(retries=1, retry_delay_seconds=60)
def screen_drop(dataset: str, base_model: str, report_dir: str, repo_dir: str, screen_args: list[str]) -> str:
    """`poisonguard screen` for one drop. One retry, for a lost worker or a full GPU; a bad input exits 2
    the same way twice."""
    run_command([*poisonguard_cli(), "screen", "--data", dataset, "--base", base_model, "--out", report_dir,
                 *screen_args], cwd=repo_dir, logger=get_run_logger())
    return report_dir


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
) -> dict[str, Any] | State:
    """Screen and release every new drop in `incoming_dir` (paths relative to `repo_dir`)."""
    logger = get_run_logger()
    repo = Path(repo_dir).resolve()
    incoming, work = repo / incoming_dir, repo / work_dir
    drops = find_new_drops(str(incoming), str(work), settle_s)
    outcomes: list[dict[str, str]] = [{**s, "outcome": "skipped"} for s in drops["skipped"]]
    for drop in drops["new"]:
        report = work / drop["drop"] / "report"
        screened = screen_drop(drop["dataset"], base_model, str(report), str(repo), list(screen_args or []),
                               return_state=True)  # a state, not a raise: one bad drop must not stop the rest
        if not screened.is_completed():
            outcomes.append({"drop": drop["drop"], "outcome": "failed", "why": f"screen: {screened.message}"})
            continue
        state = screen_and_release(
            repo_dir=str(repo), report_dir=str(report), release_dir=str(work / drop["drop"] / "release"),
            approval_timeout_s=approval_timeout_s, skip_repro=True, track=track, model_name=model_name,
            tracking_uri=tracking_uri, return_state=True)
        outcomes.append({"drop": drop["drop"], "outcome": state.type.value.lower(), "why": state.message or ""})
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
    rows = [f"| {o['drop']} | {o['outcome']} | {o.get('why', '')} |" for o in outcomes]
    return "\n".join([f"# Nightly screening of `{incoming}`", "", "| drop | outcome | note |", "|---|---|---|",
                      *rows] if rows else [f"# Nightly screening of `{incoming}`", "", "No drops."])


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Screen every new drop of an incoming folder once.")
    parser.add_argument("--incoming-dir", required=True)
    parser.add_argument("--base-model", required=True)
    parser.add_argument("--work-dir", default="work/nightly")
    cli = parser.parse_args()
    nightly_screen(incoming_dir=cli.incoming_dir, base_model=cli.base_model, work_dir=cli.work_dir)
