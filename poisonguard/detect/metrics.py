"""Scoring a detection against ground truth (benchmark only; detectors never see the truth).

Flag counts are reported next to P/R/F1/AUROC on purpose: on clean-label controls every detector in the early
detector probe flagged hundreds of samples at least once while AUROC looked harmless.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.stats import rankdata

if TYPE_CHECKING:
    from poisonguard.detect.base import DetectionResult


def precision_recall_f1(flagged: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    """Precision, recall, F1 of boolean flags; 0 where undefined (no flags, or no positives)."""
    f, t = np.asarray(flagged, dtype=bool), np.asarray(truth, dtype=bool)
    tp = int((f & t).sum())
    precision = tp / f.sum() if f.any() else 0.0
    recall = tp / t.sum() if t.any() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return float(precision), float(recall), float(f1)


def auroc(scores: np.ndarray, truth: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann–Whitney, ties count ½); None when only one class is present."""
    s, t = np.asarray(scores, dtype=np.float64), np.asarray(truth, dtype=bool)
    n_pos, n_neg = int(t.sum()), int((~t).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(s)
    return float((ranks[t].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def evaluate(result: DetectionResult, poison_ids: Iterable[str]) -> dict[str, Any]:
    """P, R, F1 of `flagged`, AUROC of `p_poison`, and flag counts, against the true poisoned ids."""
    truth_set = {str(i) for i in poison_ids}
    truth = np.isin(result.ids, list(truth_set))
    precision, recall, f1 = precision_recall_f1(result.flagged, truth)
    n = len(result.ids)
    n_flagged = int(result.flagged.sum())
    return {
        "n": n,
        "n_poison": int(truth.sum()),
        "n_poison_unmatched": len(truth_set) - int(truth.sum()),
        "n_flagged": n_flagged,
        "flag_rate": n_flagged / n if n else 0.0,
        "true_positives": int((result.flagged & truth).sum()),
        "false_positives": int((result.flagged & ~truth).sum()),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "auroc": auroc(result.p_poison, truth),
    }
