"""The three tables the release checkpoint validates, built from a loaded report and a proposed release.

- `verdicts`:   the verdict table as read, plus `input_position` (where the row's id sits in the input file
                as it is now, -1 if the id is not an input id). With a unique id column and one row per input
                id, the coverage rule ("every input id has exactly one verdict") becomes plain column checks.
- `release`:    one row per id the release would contain, with the verdict the table gives that id
                (`verdict_status`, `verdict_flagged`; null when it has none). Several rows for one id are
                folded to the most severe one, so a duplicate cannot hide a flag.
- `provenance`: one row pairing each checksum the gate recomputed with the value `manifest.json` recorded.
Only pandas here: the rules themselves live in the GX suites (checkpoint.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from poisonguard.gate.report import ScreeningReport, ids_sha256

OK, QUARANTINED = "ok", "quarantined"
REQUIRED_COLUMNS = ("id", "index", "status", "reason", "p_poison", "flagged")
PROVENANCE_PAIRS = ("input_sha256", "ids_sha256", "n_samples", "format", "verdicts_sha256")


def verdicts_table(report: ScreeningReport) -> pd.DataFrame:
    table = report.verdicts.copy()
    position = {sample_id: i for i, sample_id in enumerate(report.input.ids)}
    ids = table["id"] if "id" in table.columns else pd.Series([None] * len(table), index=table.index)
    table["input_position"] = [position.get(i, -1) if isinstance(i, str) else -1 for i in ids]
    return table


def releasable_ids(report: ScreeningReport) -> list[str]:
    """Input ids (in input order) whose verdict is `ok` and not flagged; ids without a verdict are never
    releasable."""
    worst = _worst_verdict(report.verdicts)
    return [i for i in report.input.ids
            if i in worst.index and worst.at[i, "status"] == OK and worst.at[i, "flagged"] is False]


def release_table(report: ScreeningReport, release_ids: Sequence[str]) -> pd.DataFrame:
    worst = _worst_verdict(report.verdicts)
    position = {sample_id: i for i, sample_id in enumerate(report.input.ids)}
    rows = [{"id": i,
             "input_position": position.get(i, -1),
             "verdict_status": worst.at[i, "status"] if i in worst.index else None,
             "verdict_flagged": worst.at[i, "flagged"] if i in worst.index else None}
            for i in release_ids]
    return pd.DataFrame(rows, columns=["id", "input_position", "verdict_status", "verdict_flagged"]).astype(
        {"id": "object", "input_position": "int64", "verdict_status": "object", "verdict_flagged": "object"})


def provenance_table(report: ScreeningReport) -> pd.DataFrame:
    expected = report.expected
    found = report.input
    recomputed = {
        "input_sha256": found.sha256,
        "ids_sha256": ids_sha256(found.ids) if found.dataset is not None else None,
        "n_samples": len(found.ids) if found.dataset is not None else None,
        "format": found.dataset.format if found.dataset is not None else None,
        "verdicts_sha256": report.verdicts_sha256,
    }
    recorded = {
        "input_sha256": expected.get("sha256"),
        "ids_sha256": expected.get("ids_sha256"),
        "n_samples": expected.get("n_samples"),
        "format": expected.get("format"),
        "verdicts_sha256": report.manifest.get("verdicts_sha256"),
    }
    row: dict[str, object] = {"dataset_path": str(found.path), "input_problem": found.problem}
    for key in PROVENANCE_PAIRS:
        # Strings on both sides: a count recorded as "12" vs 12 is still the same count, and object columns
        # keep None as a real null for GX.
        row[key] = None if recomputed[key] is None else str(recomputed[key])
        row[f"manifest_{key}"] = None if recorded[key] is None else str(recorded[key])
    return pd.DataFrame([row], dtype="object")


def _worst_verdict(verdicts: pd.DataFrame) -> pd.DataFrame:
    """Per id, the most severe of its rows: status `ok` only if every row says ok; flagged True if any row
    says True, else None (not a valid flag) if any row's flag is not a boolean, else False."""
    if not {"id", "status", "flagged"} <= set(verdicts.columns):
        return pd.DataFrame(columns=["status", "flagged"], dtype="object")
    out: dict[str, dict[str, object]] = {}
    for sample_id, status, flagged in verdicts[["id", "status", "flagged"]].itertuples(index=False):
        if not isinstance(sample_id, str):
            continue
        cur = out.setdefault(sample_id, {"status": OK, "flagged": False})
        if not (isinstance(status, str) and status == OK):  # NA-safe: pandas' string dtype holds pd.NA
            cur["status"] = status if isinstance(status, str) else None
        flag = _as_bool(flagged)
        if flag is True or (flag is None and cur["flagged"] is False):
            cur["flagged"] = flag
    return pd.DataFrame.from_dict(out, orient="index", columns=["status", "flagged"], dtype="object")


def _as_bool(value: object) -> bool | None:
    """Python or numpy booleans as bool; anything else (NaN, None, 0/1, "False") as None."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    return None
