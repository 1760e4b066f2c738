"""The screen's record: one verdict row per input sample, the release candidate, and their manifest.

    verdicts.parquet / verdicts.csv   id, index, status (ok | quarantined), reason, p_poison, flagged, then
                                      every detector's signals (`score_*`, `p_*`, `flag_<name>`) and `p_vote`
    clean.<ext>                       the input minus flagged and quarantined samples, in the input's format
    detector.json                     {"default": the deciding detector, "detectors": {name: JSON state}}
    manifest.json                     checksums and counts that the release gate verifies

No row is ever missing: a quarantined sample has its reason and no score; a sample is released only if it was
screened and not flagged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from poisonguard.atomic import atomic_path, atomic_write_bytes, atomic_write_json
from poisonguard.data.loading import CheckedDataset
from poisonguard.data.writer import write_dataset
from poisonguard.detect.base import DetectionResult
from poisonguard.gate.report import file_sha256, ids_sha256


@dataclass
class ScreenResult:
    table: pd.DataFrame
    default: str | None  # the detector (or "vote") whose verdict decided; None when nothing was screened
    flagged_ids: list[str]
    keep_ids: list[str]


def verdict_table(checked: CheckedDataset, results: dict[str, DetectionResult], default: str | None,
                  extra_columns: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> pd.DataFrame:
    """One row per input sample, in input order. `results[default]` decides `p_poison` and `flagged`;
    `extra_columns[name] = (ids, values)` adds per-sample columns (e.g. the vote's posterior)."""
    decider = results.get(default) if default is not None else None  # absent only when nothing was screened
    pos = {sid: i for i, sid in enumerate(decider.ids)} if decider is not None else {}
    columns: dict[str, tuple[dict, np.ndarray]] = {}
    for name, res in results.items():
        idx = {sid: i for i, sid in enumerate(res.ids)}
        for col, values in res.signals.items():
            columns[col] = (idx, np.asarray(values))
        if name != default:
            columns[f"flag_{name}"] = (idx, np.asarray(res.flagged))
            columns[f"p_{name}"] = (idx, np.asarray(res.p_poison))
    for col, (ids, values) in (extra_columns or {}).items():
        columns[col] = ({sid: i for i, sid in enumerate(ids)}, np.asarray(values))
    rows = []
    for s in checked.dataset.samples:
        reasons = checked.reasons.get(s.id) or []
        row = {"id": s.id, "index": s.index}
        if reasons:
            row.update(status="quarantined", reason="; ".join(f"{r.code}: {r.message}" for r in reasons),
                       p_poison=np.nan, flagged=False)
        else:
            i = pos[s.id]
            row.update(status="ok", reason="", p_poison=float(decider.p_poison[i]), flagged=bool(decider.flagged[i]))
        for col, (idx, values) in columns.items():
            j = idx.get(s.id)
            row[col] = values[j].item() if j is not None else np.nan
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.astype({"id": "string", "status": "string", "reason": "string", "flagged": bool})


def write_report_dir(checked: CheckedDataset, results: dict[str, DetectionResult], default: str | None,
                     detector_state: dict, out_dir: Path, *, params: dict | None = None,
                     extra_columns: dict | None = None) -> ScreenResult:
    """Write the verdict table, the release candidate, detector.json and manifest.json into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = verdict_table(checked, results, default, extra_columns)
    parquet = out_dir / "verdicts.parquet"
    with atomic_path(parquet, ".parquet") as tmp:
        table.to_parquet(tmp, index=False)
    atomic_write_bytes(out_dir / "verdicts.csv", table.to_csv(index=False).encode())
    keep = table.loc[(table["status"] == "ok") & (~table["flagged"]), "id"].astype(str).tolist()
    ds = checked.dataset
    write_dataset(ds, out_dir / ("clean" + ds.path.suffix), keep_ids=keep)
    atomic_write_json(out_dir / "detector.json", detector_state, indent=1)
    counts = {"ok": int((table["status"] == "ok").sum()), "quarantined": int((table["status"] != "ok").sum()),
              "flagged": int(table["flagged"].sum()), "released": len(keep)}
    manifest = {
        # paths relative to the report folder: the same inputs give the same manifest in any checkout
        "input": {"path": _relative(ds.path, out_dir), "sha256": file_sha256(ds.path), "format": ds.format,
                  "image_root": _relative(ds.image_root, out_dir), "n_samples": len(ds.samples),
                  "ids_sha256": ids_sha256(ds.ids)},
        "verdicts_sha256": file_sha256(parquet),
        "default_detector": default,
        "counts": counts,
        "params": params or {},
    }
    atomic_write_json(out_dir / "manifest.json", manifest)
    flagged = table.loc[table["flagged"], "id"].astype(str).tolist()
    return ScreenResult(table=table, default=default, flagged_ids=flagged, keep_ids=keep)


def _relative(path: str | Path, start: Path) -> str:
    return os.path.relpath(Path(path).resolve(), Path(start).resolve())
