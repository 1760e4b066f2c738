"""evaluate_report scores a verdict table against the poison_ids.json ground truth."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from poisonguard.data.errors import DataError
from poisonguard.report.evaluation import evaluate_report


@pytest.fixture
def report_dir(tmp_path):
    table = pd.DataFrame(
        {
            "id": ["a", "b", "c", "d", "e"],
            "status": ["ok", "ok", "ok", "ok", "quarantined"],
            "flagged": [True, False, False, False, False],
            "p_poison": [0.9, 0.6, 0.1, 0.2, 0.0],
            "flag_spectral": [True, True, False, False, False],
            "p_spectral": [0.8, 0.7, 0.3, 0.1, 0.0],
        }
    )
    table.to_parquet(tmp_path / "verdicts.parquet")
    return tmp_path


def test_scores_the_default_and_every_detector_column(report_dir, tmp_path):
    truth = tmp_path / "poison_ids.json"
    truth.write_text(json.dumps({"poison_ids": ["a", "b", "e"]}))
    out = evaluate_report(report_dir, truth)
    assert (out["n_screened"], out["n_poison"], out["n_quarantined"], out["n_poison_quarantined"]) == (
        4,
        2,
        1,
        1,
    )
    assert (out["default"]["precision"], out["default"]["recall"], out["default"]["auroc"]) == (1.0, 0.5, 1.0)
    assert out["spectral"]["f1"] == 1.0


def test_an_unreadable_truth_file_is_a_data_error(report_dir, tmp_path):
    with pytest.raises(DataError, match="cannot read the poisoned ids"):
        evaluate_report(report_dir, tmp_path / "missing.json")


def test_tpr_at_one_percent_fpr_reads_the_clean_tail():
    import numpy as np

    from poisonguard.report.evaluation import binary_metrics, tpr_at_fpr

    clean = np.arange(1000, dtype=float)  # the clean 99th percentile (method "higher") is 990
    poison = np.array([995.0, 991.0, 500.0, 2000.0])
    scores = np.concatenate([clean, poison])
    truth = np.r_[np.zeros(1000, bool), np.ones(4, bool)]
    assert tpr_at_fpr(scores, truth, 0.01) == 0.75  # 995, 991, 2000 above 990; 500 is inside the clean bulk
    assert tpr_at_fpr(scores, np.zeros_like(truth), 0.01) is None  # no poisoned sample: undefined
    assert binary_metrics(truth, scores > 990, scores)["tpr_at_1pct_fpr"] == 0.75
