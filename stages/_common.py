"""Shared plumbing for stage scripts: repo-relative paths, params, thread count, one-line logging."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "work"
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from poisonguard.params import load_params  # noqa: E402

torch.set_num_threads(int(os.environ.get("PG_THREADS", "2")))


def params(section: str) -> dict:
    return dict(load_params(ROOT / "params.yaml").get(section) or {})


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
