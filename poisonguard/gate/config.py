"""Where the GX project lives and what the release gate tolerates.

The bound on the flagged fraction is policy, so it sits in params.yaml (`gate.max_flag_rate`) next to the
detector's hyper-parameters; the GX project folder is infrastructure, so it is also overridable from the
environment (`PG_GX_ROOT`) for CI and for deployments that keep Data Docs elsewhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from poisonguard.params import build, section

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MAX_FLAG_RATE = 0.3


@dataclass(frozen=True)
class GateConfig:
    """max_flag_rate: the largest share of screened (status ok) samples that may be flagged; a detector that
    flags more than the plausible poison rate has most likely failed, and its verdicts should not gate a
    release unreviewed. gx_root: the GX project folder (None: `default_gx_root()`)."""

    max_flag_rate: float = DEFAULT_MAX_FLAG_RATE
    gx_root: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.max_flag_rate, bool) or not isinstance(self.max_flag_rate, int | float) \
                or not 0.0 <= self.max_flag_rate <= 1.0:
            raise ValueError(f"gate.max_flag_rate must be a number in [0, 1], got {self.max_flag_rate!r}")


def gate_config(params_path: str | Path | None = None) -> GateConfig:
    """The `gate` section of params.yaml (repo default when `params_path` is None) as a GateConfig."""
    return build(GateConfig, section(params_path, "gate"), "gate")


def default_gx_root() -> Path:
    """`$PG_GX_ROOT`, else `<repo>/gx`."""
    env = os.environ.get("PG_GX_ROOT")
    return Path(env) if env else REPO_ROOT / "gx"


def resolve_gx_root(gate_root: str | Path | None, config: GateConfig) -> Path:
    """Explicit argument > params.yaml `gate.gx_root` > `default_gx_root()`."""
    if gate_root is not None:
        return Path(gate_root)
    if config.gx_root:
        root = Path(config.gx_root)
        return root if root.is_absolute() else REPO_ROOT / root  # params.yaml paths are repo-relative
    return default_gx_root()
