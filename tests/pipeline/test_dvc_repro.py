"""`dvc repro` of the real pipeline in a temporary clone, with a tiny world: full run, no-op rerun, and a GMM
parameter change that reruns only the stages after it. Real DVC, real stage scripts, no server."""

from __future__ import annotations

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
    "fit_gmm": {"detectors": ["tcap_plus", "tcap", "bye"], "params": {"tcap": {"l_sens": 1, "h_sens": 2}}},
    "em_vote": {"default": "tcap_plus"},
    "gate": {"max_flag_rate": 0.5},
}


def _run(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> tuple[Path, dict]:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs the git checkout")
    root = tmp_path_factory.mktemp("clone") / "repo"
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(REPO), str(root)], check=True)
    params = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section] = {**(params.get(section) or {}), **values}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "PG_GX_ROOT": str(root / "gx"), "PG_THREADS": "1", "DVC_NO_ANALYTICS": "1"}
    env.pop("PYTHONPATH", None)
    return root, env


def test_dvc_repro_full_then_noop_then_partial(clone):
    root, env = clone
    dvc = [sys.executable, "-m", "dvc"]
    first = _run([*dvc, "repro"], root, env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    for stage in ("world", "poison", "finetune", "extract_attention", "audit_projector", "profile_heads",
                  "fit_gmm", "em_vote", "gate", "release"):
        assert f"Running stage '{stage}'" in first.stdout
    table = pd.read_parquet(root / "work" / "report" / "verdicts.parquet")
    assert len(table) == TINY["world"]["n_train"] and table["id"].is_unique
    assert (root / "work" / "release" / "train.json").is_file()

    second = _run([*dvc, "repro"], root, env)
    assert second.returncode == 0
    assert "Running stage" not in second.stdout  # nothing changed, nothing runs

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["fit_gmm"]["params"]["tcap"]["h_sens"] = 1
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = _run([*dvc, "repro"], root, env)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    ran = {line.split("'")[1] for line in third.stdout.splitlines() if line.startswith("Running stage")}
    assert "fit_gmm" in ran
    assert not ran & {"world", "poison", "finetune", "extract_attention", "audit_projector", "profile_heads"}
