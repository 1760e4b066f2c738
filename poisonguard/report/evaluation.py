"""Score a screening report against ground truth (benchmark tooling: detectors never read poison_ids.json)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from poisonguard.attacks.files import read_poison_ids
from poisonguard.detect.metrics import auroc, precision_recall_f1


def binary_metrics(truth: np.ndarray, flagged: np.ndarray, scores: np.ndarray) -> dict:
    p, r, f1 = precision_recall_f1(flagged, truth)
    return {"precision": p, "recall": r, "f1": f1, "auroc": auroc(np.nan_to_num(scores, nan=0.0), truth),
            "n_flagged": int(np.sum(flagged)), "flag_rate": float(np.mean(flagged)) if len(flagged) else 0.0}


def detector_columns(table: pd.DataFrame, detector: str, default: str) -> tuple[str, str]:
    """(flag column, score column) of a detector in a verdict table: the default detector's verdict is
    `flagged` / `p_poison`, every other detector has `flag_<name>` / `p_<name>`."""
    if detector == default:
        return "flagged", "p_poison"
    flag, p = f"flag_{detector}", f"p_{detector}"
    if flag not in table or p not in table:
        raise KeyError(f"detector {detector!r} is not in this verdict table (default {default!r})")
    return flag, p


def evaluate_report(report_dir: str | Path, truth_path: str | Path) -> dict:
    """P/R/F1/AUROC for the default verdict and every other detector column (`p_<name>`, `flag_<name>`),
    over the samples that were screened (quarantined rows are reported separately)."""
    table = pd.read_parquet(Path(report_dir) / "verdicts.parquet")
    truth = set(read_poison_ids(truth_path))
    ok = table[table["status"] == "ok"]
    y = ok["id"].astype(str).isin(truth).to_numpy()
    out = {"n_screened": int(len(ok)), "n_poison": int(y.sum()),
           "n_quarantined": int((table["status"] != "ok").sum()),
           "n_poison_quarantined": int(table.loc[table["status"] != "ok", "id"].astype(str).isin(truth).sum()),
           "default": binary_metrics(y, ok["flagged"].to_numpy(bool), ok["p_poison"].to_numpy(float))}
    for col in ok.columns:
        if col.startswith("p_") and f"flag_{col[2:]}" in ok:
            name = col[2:]
            out[name] = binary_metrics(y, ok[f"flag_{name}"].to_numpy(bool), ok[col].to_numpy(float))
    return out
