"""Pipeline tier: real Prefect (one test server per session), GX, MLflow (sqlite) and DVC; no mocks."""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tests.pipeline.reports import Report, make_report


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """One temporary Prefect API server (fresh sqlite DB) for every flow test of the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture(scope="session")
def gx_root(tmp_path_factory) -> str:
    """One GX project for the session: later gate runs also check that re-declaring it never fails."""
    return str(tmp_path_factory.mktemp("gx") / "gx")


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory) -> str:
    """One sqlite tracking store for the session (creating its tables takes seconds); tests use their own
    model names."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def report(tmp_path) -> Report:
    return make_report(tmp_path)


def in_thread(fn: Callable[[], object]) -> threading.Thread:
    """Start `fn` in a daemon thread that sees this thread's context (Prefect's test settings live there)."""
    ctx = contextvars.copy_context()
    thread = threading.Thread(target=ctx.run, args=(fn,), daemon=True)
    thread.start()
    return thread


def resume_when_paused(flow_name: str, run_input: dict, *, timeout_s: float = 120) -> threading.Thread:
    """From another thread: wait for a PAUSED run of `flow_name`, then resume it with `run_input`."""

    def approver() -> None:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import (
            FlowFilter,
            FlowFilterName,
            FlowRunFilter,
            FlowRunFilterState,
            FlowRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType
        from prefect.flow_runs import resume_flow_run

        deadline = time.monotonic() + timeout_s
        with get_client(sync_client=True) as client:
            while time.monotonic() < deadline:
                paused = client.read_flow_runs(
                    flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                    flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                        type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))
                if paused:
                    resume_flow_run(paused[0].id, run_input=run_input)
                    return
                time.sleep(0.5)
        raise TimeoutError(f"no paused run of {flow_name!r} within {timeout_s} s")

    return in_thread(approver)


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> Iterator:
    """A real Prefect server, MLflow server and process worker, with the nightly and screen-and-release
    deployments applied from infra/prefect.yaml by `prefect deploy` (tests/pipeline/servers.py). Every test
    that uses it talks to these servers, not to the in-process test harness."""
    from tests.pipeline.servers import REPO, Stack

    root = tmp_path_factory.mktemp("stack")
    (root / "incoming").mkdir()
    stack = Stack(root)
    try:
        stack.start()
        stack.create_pool()
        stack.deploy(REPO / "infra" / "prefect.yaml", ["nightly", "screen-and-release"], deploy_env(root))
        stack.start_worker()
        yield stack
    finally:
        stack.close()


@pytest.fixture
def mlflow_server(stack):
    """The stack's MLflow server, started the first time a test asks for it."""
    stack.start_mlflow()
    return stack.mlflow_uri


def deploy_env(root) -> dict[str, str]:
    """The PG_* variables infra/README.md tells an operator to export before `prefect deploy`."""
    from tests.pipeline.servers import REPO

    return {"PG_REPO_DIR": str(REPO), "PG_INCOMING_DIR": str(root / "incoming"),
            "PG_BASE_MODEL": str(root / "base_model")}
