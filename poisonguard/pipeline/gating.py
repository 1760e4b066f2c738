"""Stages `gate` and `release`: the Great Expectations checkpoint over the screen's record, and the only
path that writes a cleaned release (re-checked by the gate on exactly what is written)."""

from __future__ import annotations

from pathlib import Path

from poisonguard.atomic import atomic_write_json
from poisonguard.gate import GateConfig, GateResult, run_gate
from poisonguard.gate import release as write_release
from poisonguard.pipeline.layout import Layout


def gate(layout: Layout, cfg: GateConfig, *, log=print) -> GateResult:
    """Run the checkpoint on `layout.report` (raises `GateFailed`) and write `layout.gate/result.json`."""
    result = run_gate(layout.report, config=cfg)
    layout.gate.mkdir(parents=True, exist_ok=True)
    atomic_write_json(layout.gate / "result.json", {"success": True})  # a DVC output: no run-specific paths
    layout.timings.mkdir(parents=True, exist_ok=True)
    atomic_write_json(layout.timings_file("gate"), {"data_docs": str(result.data_docs or "")})
    log("gate: checkpoint passed")
    return result


def release(layout: Layout, out: str | Path, cfg: GateConfig) -> Path:
    """Write the release candidate of `layout.report` into `out`, through the gate; returns the data file."""
    return write_release(layout.report, out, config=cfg)
