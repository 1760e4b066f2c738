"""Release gate: a Great Expectations checkpoint over the verdict table, the release manifest and the input's
provenance, and the only code path that writes a cleaned release (`release`)."""

from poisonguard.gate.checkpoint import GateFailed, GateResult, check_release, run_gate
from poisonguard.gate.config import GateConfig, default_gx_root, gate_config
from poisonguard.gate.release import approval_record, record_decision, release, release_cli
from poisonguard.gate.report import ReportError, ScreeningReport, file_sha256, ids_sha256, load_report

__all__ = [
    "GateConfig",
    "GateFailed",
    "GateResult",
    "ReportError",
    "ScreeningReport",
    "approval_record",
    "check_release",
    "default_gx_root",
    "file_sha256",
    "gate_config",
    "ids_sha256",
    "load_report",
    "record_decision",
    "release",
    "release_cli",
    "run_gate",
]
