"""`dvc repro` of the real pipeline in temporary clones, with a tiny world: full run, no-op rerun, a second
clone's run that reproduces the first one's dvc.lock byte for byte, `poisonguard screen` giving the same
verdict table as the DVC stages, and a GMM parameter change that reruns only the stages after it. Real DVC,
real stage scripts, no server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]

TINY = {
    "world": {"seed": 1, "n_train": 40, "n_test": 12,
              "model": {"vision_hidden": 32, "vision_layers": 1, "vision_heads": 2, "vision_mlp": 64,
                        "lm_hidden": 32, "lm_layers": 2, "lm_heads": 2, "lm_mlp": 64, "max_positions": 128},
              "pretrain": {"n_scenes": 64, "vision_steps": 3, "vision_batch": 16, "lm_steps": 4, "lm_batch": 8,
                           "eval_every": 0}},
    "poison": {"attack": "badnet", "rate": 0.2, "target": None, "seed": 0, "relabel": True, "attacks": {}},
    "finetune": {"epochs": 1.0, "batch_size": 16},
    "extract_attention": {"batch_size": 16, "shard_size": 16},
    "audit_projector": {"batch_size": 16, "ks": [1, 2]},
    "profile_heads": {"strata_k": 2, "seed": 0},
    "fit_gmm": {"detectors": {"shift": {}, "fused": {}, "tcap_plus": {}, "tcap": {"l_sens": 1, "h_sens": 2},
                              "projector": {}, "bye": {}}},
    "em_vote": {"decide": "shift", "annotators": ["shift", "fused", "projector"]},
    "gate": {"max_flag_rate": 0.5},
}


def _run(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _clone(root: Path) -> tuple[Path, dict]:
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(REPO), str(root)], check=True)
    params = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section] = values
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "commit", "-qam", "tiny params", "--no-verify"], cwd=root, check=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t"})
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "PG_GX_ROOT": str(root.parent / "gx"), "PG_THREADS": "1", "DVC_NO_ANALYTICS": "1"}
    env.pop("PYTHONPATH", None)
    return root, env


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> tuple[Path, dict]:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs the git checkout")
    return _clone(tmp_path_factory.mktemp("clone") / "repo")


DVC = [sys.executable, "-m", "dvc"]


def _stages_run(result: subprocess.CompletedProcess) -> set[str]:
    return {line.split("'")[1] for line in result.stdout.splitlines() if line.startswith("Running stage")}


@pytest.fixture(scope="module")
def first_run(clone) -> str:
    """The full `dvc repro` of the clone; returns its dvc.lock."""
    root, env = clone
    first = _run([*DVC, "repro"], root, env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert _stages_run(first) == {"world", "poison", "finetune", "extract_attention", "audit_projector",
                                  "profile_heads", "fit_gmm", "em_vote", "gate", "release"}
    return (root / "dvc.lock").read_text()


def test_dvc_repro_full_then_noop_then_partial(clone, first_run, tmp_path):
    root, env = clone
    table = pd.read_parquet(root / "work" / "report" / "verdicts.parquet")
    assert len(table) == TINY["world"]["n_train"] and table["id"].is_unique
    assert (root / "work" / "release" / "train.json").is_file()

    second = _run([*DVC, "repro"], root, env)
    assert second.returncode == 0
    assert "Running stage" not in second.stdout  # nothing changed, nothing runs
    assert (root / "dvc.lock").read_text() == first_run
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                            capture_output=True, text=True, check=True)
    assert status.stdout.split() == ["M", "dvc.lock"]  # only the lock of the tiny params' run; no output tracked

    # `poisonguard screen` on the same data and models runs the same stage functions: the same verdicts
    screen = _run([str(Path(sys.executable).with_name("poisonguard")), "screen", "--data", "work/poisoned/train.json",
                   "--base", "work/world/base_model", "--finetuned", "work/finetuned", "--out", str(tmp_path / "screen"),
                   "--params", "params.yaml", "--quiet"], root, env)
    assert screen.returncode == 0, screen.stderr[-3000:]
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "screen" / "verdicts.parquet"), table)
    assert json.loads((tmp_path / "screen" / "detector.json").read_text()) == \
        json.loads((root / "work" / "report" / "detector.json").read_text())

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["fit_gmm"]["detectors"]["tcap"]["h_sens"] = 1
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = _run([*DVC, "repro"], root, env)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    ran = _stages_run(third)
    assert "fit_gmm" in ran
    assert not ran & {"world", "poison", "finetune", "extract_attention", "audit_projector", "profile_heads"}


@pytest.mark.slow
def test_a_second_fresh_clone_reproduces_the_lock(first_run, tmp_path):
    """Outputs hold results only (no timings, no absolute paths): another fresh clone of the same commit
    writes the same dvc.lock byte for byte."""
    other, env = _clone(tmp_path / "other")
    again = _run([*DVC, "repro"], other, env)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert (other / "dvc.lock").read_text() == first_run
