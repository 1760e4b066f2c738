"""`poisonguard approve|reject` refuse unusable answers before asking the Prefect API anything (the round
trips against a real server are in tests/pipeline/test_schedule.py)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from poisonguard.approval import ApprovalError, answer, find_paused_run, release_run_name
from poisonguard.cli import app

runner = CliRunner()


def test_release_run_name() -> None:
    assert release_run_name("drop-a") == "release-drop-a"


def test_an_answer_names_its_reviewer_and_one_run() -> None:
    with pytest.raises(ApprovalError, match="--reviewer"):
        answer(approved=True, reviewer="  ", drop="drop-a")
    with pytest.raises(ApprovalError, match="exactly one of --drop and --flow-run"):
        find_paused_run()
    with pytest.raises(ApprovalError, match="exactly one of --drop and --flow-run"):
        find_paused_run(drop="drop-a", flow_run_id="0")


@pytest.mark.parametrize("verb", ["approve", "reject"])
def test_cli_exits_2_with_one_line(verb: str) -> None:
    done = runner.invoke(app, [verb, "--drop", "drop-a", "--reviewer", " "])
    assert done.exit_code == 2
    assert "name yourself with --reviewer" in done.output
    done = runner.invoke(app, [verb, "--reviewer", "alice"])
    assert done.exit_code == 2 and "exactly one of --drop and --flow-run" in done.output
