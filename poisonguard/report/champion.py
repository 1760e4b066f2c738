"""The previous approved screening, read back from its report folder, for the next report's comparison.

A report folder already holds what the comparison needs: manifest.json (counts, the default detector, when),
verdicts.parquet (which samples were flagged) and the input file the manifest names (their answers). Nothing
new has to be stored at approval time; the approver's flow passes the champion's folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from poisonguard.data.dataset import read_dataset
from poisonguard.data.errors import DataError
from poisonguard.data.limits import Limits
from poisonguard.data.loading import CheckedDataset
from poisonguard.report.html import screen_summary


def summary_from_report_dir(report_dir: str | Path, *, name: str | None = None,
                            detector_version: str | None = None) -> dict:
    """`screen_summary` of an earlier screening's folder. The flagged answers need the input file the manifest
    names; when it is gone or unreadable they are left empty and `note` says why (the counts still compare)."""
    report_dir = Path(report_dir)
    manifest = json.loads((report_dir / "manifest.json").read_text(encoding="utf-8"))
    table = pd.read_parquet(report_dir / "verdicts.parquet")
    default = manifest.get("default_detector", "?")
    inp = manifest.get("input", {})
    checked, note = None, None
    try:
        ds = read_dataset(inp["path"], image_root=inp.get("image_root"))
        if set(ds.ids) >= set(table["id"].astype(str)):
            checked = CheckedDataset(ds, {}, Limits())
        else:
            note = f"{inp['path']} no longer holds the screened samples: answers not compared"
    except (KeyError, OSError, DataError) as exc:
        note = f"input file not readable ({exc}): answers not compared"
    out = screen_summary(table, default, checked, detector_version=detector_version, name=name or report_dir.name)
    out["created"] = manifest.get("created", out["created"])
    if note:
        out["note"] = note
    return out
