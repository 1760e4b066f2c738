"""Score a screening report against ground truth (benchmark tooling: detectors never read poison_ids.json)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from poisonguard.attacks.files import read_poison_ids
from poisonguard.detect.metrics import auroc, precision_recall_f1


def tpr_at_fpr(scores: np.ndarray, truth: np.ndarray, fpr: float = 0.01) -> float | None:
    """Share of the poisoned samples scored above the clean samples' (1 − fpr) quantile: the recall a cut
    would have if it were allowed `fpr` false flags. A ranking figure, like AUROC, read at the operating point
    that matters for a release (few clean samples lost). None without both classes."""
    truth = np.asarray(truth, bool)
    scores = np.nan_to_num(np.asarray(scores, np.float64), nan=0.0)
    if truth.all() or not truth.any():
        return None
    cut = np.quantile(scores[~truth], 1.0 - fpr, method="higher")  # at most `fpr` of the clean ones above
    return float(np.mean(scores[truth] > cut))


def binary_metrics(truth: np.ndarray, flagged: np.ndarray, scores: np.ndarray) -> dict:
    p, r, f1 = precision_recall_f1(flagged, truth)
    return {"precision": p, "recall": r, "f1": f1, "auroc": auroc(np.nan_to_num(scores, nan=0.0), truth),
            "tpr_at_1pct_fpr": tpr_at_fpr(scores, truth, 0.01),
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
