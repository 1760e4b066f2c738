"""Stage `gate`: the Great Expectations checkpoint over the verdict table and the release it implies.
A failing checkpoint fails the stage, so `dvc repro` stops before `release`."""

import json
import sys

from _common import WORK, log

from poisonguard.gate import GateFailed, gate_config, run_gate

try:
    result = run_gate(WORK / "report", config=gate_config(None))
except GateFailed as exc:
    log(f"gate: {exc}")
    sys.exit(1)
(WORK / "gate").mkdir(parents=True, exist_ok=True)
(WORK / "gate" / "result.json").write_text(json.dumps(
    {"success": True, "data_docs": str(result.data_docs or "")}, indent=2) + "\n")
log("gate: checkpoint passed")
