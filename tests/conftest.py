"""Shared test setup: offline, telemetry off, fixed threads, and small fixtures reused across tiers."""

from __future__ import annotations

import os
import tempfile

# Set before any heavy import: nothing in the suite may reach a hub or phone home.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="pg-prefect-"))
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
# The release gate's GX project: a temporary one per test process, never the checkout's gx/ (two test workers
# must not write one project at once).
os.environ.setdefault("PG_GX_ROOT", os.path.join(tempfile.mkdtemp(prefix="pg-gx-"), "gx"))

import pytest  # noqa: E402
import torch  # noqa: E402

from poisonguard.runtime import pin_cpu_kernels  # noqa: E402

# the CPU kernels every command and stage pins, before this process runs its first tensor operation
pin_cpu_kernels()

# one thread per test worker when the suite runs on several (infra/test.sh), two otherwise
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


@pytest.fixture(scope="session")
def world_processor():
    """The embedded world's processor (tokenizer + image processor + chat template)."""
    from poisonguard.world.tokenizer import build_processor

    return build_processor()


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """A very small embedded world (12 train / 6 test, a 2-layer LM, a few steps): fast, real files."""
    from poisonguard.world.build import make_world
    from poisonguard.world.model import WorldModelConfig
    from poisonguard.world.pretrain import PretrainConfig

    out = tmp_path_factory.mktemp("tiny_world")
    summary = make_world(out, seed=3, n_train=12, n_test=6, model_cfg=TINY_MODEL, pretrain_cfg=TINY_PRETRAIN,
                         show_progress=False, log=lambda m: None)
    return out, summary


def _tiny_configs():
    from poisonguard.world.model import WorldModelConfig
    from poisonguard.world.pretrain import PretrainConfig

    return (WorldModelConfig(vision_hidden=32, vision_layers=1, vision_heads=2, vision_mlp=64,
                             lm_hidden=32, lm_layers=2, lm_heads=2, lm_mlp=64),
            PretrainConfig(n_scenes=64, vision_steps=3, vision_batch=16, lm_steps=4, lm_batch=8))


TINY_MODEL, TINY_PRETRAIN = _tiny_configs()
