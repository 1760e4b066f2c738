"""Shared plumbing of the DVC stage scripts: the workspace's paths, its layout, the params file, threads.

Each script runs exactly one pipeline stage function (`poisonguard.pipeline.*`) with the config of its own
params.yaml section, writing where `Layout.dvc(WORK)` says; `poisonguard screen` runs the same functions in
one process. Only `poisonguard.runtime` is imported here (every stage pins its CPU kernels): a stage's DVC
deps are the code its imports reach.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)  # paths below are repo-relative, so none of the cached outputs records where the clone lives
WORK = Path("work")
PARAMS = Path("params.yaml")

import torch  # noqa: E402

from poisonguard.runtime import pin_cpu_kernels  # noqa: E402

pin_cpu_kernels()  # before the first tensor operation: one recipe gives the same bytes on every run of a host
torch.set_num_threads(int(os.environ.get("PG_THREADS", "2")))

DATA = WORK / "poisoned" / "train.json"  # the demo drop; point this at a customer's file in production
BASE = WORK / "world" / "base_model"
FINETUNED = WORK / "finetuned"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
