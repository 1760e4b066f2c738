"""
# Answering a release approval

A screen-and-release run waits in Prefect's Paused state for a person's `Approval` (approved, reviewer,
note). Prefect's UI shows the form on the run's page; this module is the shell's way to give the same answer,
because Prefect 3.8's CLI has no `flow-run resume`:

```
poisonguard approve --drop drop-a --reviewer alice --note "checked the 12 flagged samples"
poisonguard reject  --drop drop-a --reviewer alice --note "s07 is a false positive; rescreen"
poisonguard approve --flow-run 0193... --reviewer alice            # a run not named after a drop
poisonguard approvals                                              # what is waiting
```

The nightly names each drop's release run `release-<drop>`, so `--drop` finds it; `--flow-run` takes any
run's id. Both talk to the Prefect API of `PREFECT_API_URL` and call `resume_flow_run` with the answer, which
the server validates against the form the run saved when it paused.

It lives in the package, not in flows/, because the `poisonguard` console script must import it from any
working directory and flows/ is not installed; it only talks to the Prefect API (no numeric code here).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

RUN_NAME_PREFIX = "release-"
RELEASE_FLOW = "screen-and-release"


class ApprovalError(RuntimeError):
    """The answer could not be given: no such paused run, several candidates, or the server refused it."""


@dataclass(frozen=True)
class PendingRun:
    """A paused release run: what an approver needs to find and answer it."""

    id: str
    name: str
    paused_at: datetime | None
    expires_at: datetime | None
    ui_url: str | None


def release_run_name(drop: str) -> str:
    """The flow-run name of a drop's release run (the nightly starts it under this name)."""
    return f"{RUN_NAME_PREFIX}{drop}"


def pending_approvals() -> list[PendingRun]:
    """Every paused run of the screen-and-release flow, oldest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[RELEASE_FLOW])),
                                     flow_run_filter=_paused_filter(), sort=FlowRunSort.START_TIME_ASC)
    return [_pending(run) for run in runs]


def answer(*, approved: bool, reviewer: str, note: str = "", drop: str | None = None,
           flow_run_id: str | None = None) -> PendingRun:
    """Resume the paused release run of `drop` (or the run `flow_run_id`) with this answer; return the run.

    Raises ApprovalError when the reviewer is not named, when no paused run (or more than one) matches, or
    when the server refuses the answer (e.g. the approval already timed out).
    """
    from prefect.exceptions import FlowPauseTimeout, NotPausedError
    from prefect.flow_runs import resume_flow_run

    if not reviewer.strip():
        raise ApprovalError("name yourself with --reviewer: the audit record keeps who decided")
    run = find_paused_run(drop=drop, flow_run_id=flow_run_id)
    try:
        resume_flow_run(UUID(run.id), run_input={"approved": approved, "reviewer": reviewer.strip(), "note": note})
    except FlowPauseTimeout as exc:
        raise ApprovalError(f"run {run.name} can no longer be resumed: its approval timed out") from exc
    except NotPausedError as exc:  # answered by someone else since we looked
        raise ApprovalError(f"run {run.name} is no longer waiting for approval") from exc
    except RuntimeError as exc:  # the server rejected the answer (e.g. it does not fit the form)
        raise ApprovalError(f"run {run.name} was not resumed: {exc}") from exc
    return run


def find_paused_run(*, drop: str | None = None, flow_run_id: str | None = None) -> PendingRun:
    """The one paused run named after `drop`, or the run `flow_run_id` if it is paused."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.exceptions import ObjectNotFound

    if (drop is None) == (flow_run_id is None):
        raise ApprovalError("give exactly one of --drop and --flow-run")
    with get_client(sync_client=True) as client:
        if flow_run_id is not None:
            try:
                run = client.read_flow_run(UUID(flow_run_id))
            except (ValueError, ObjectNotFound) as exc:
                raise ApprovalError(f"no flow run with id {flow_run_id}") from exc
            if run.state is None or not run.state.is_paused():
                state = run.state.name if run.state else "no state"
                raise ApprovalError(f"flow run {run.name} ({flow_run_id}) is {state}, not waiting for approval")
            return _pending(run)
        name = release_run_name(drop)
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            name=FlowRunFilterName(any_=[name]), state=_paused_filter().state))
    if not runs:
        waiting = ", ".join(r.name for r in pending_approvals()) or "none"
        raise ApprovalError(f"no paused run named {name!r}; runs waiting for approval: {waiting}")
    if len(runs) > 1:
        ids = ", ".join(str(r.id) for r in runs)
        raise ApprovalError(f"{len(runs)} paused runs are named {name!r}; answer one with --flow-run ({ids})")
    return _pending(runs[0])


def _paused_filter():
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    return FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])))


def _pending(run: Any) -> PendingRun:
    from prefect.settings import PREFECT_UI_URL

    details = run.state.state_details if run.state else None
    ui = PREFECT_UI_URL.value()
    return PendingRun(id=str(run.id), name=run.name, paused_at=run.state.timestamp if run.state else None,
                      expires_at=getattr(details, "pause_timeout", None),
                      ui_url=f"{ui.rstrip('/')}/runs/flow-run/{run.id}" if ui else None)
