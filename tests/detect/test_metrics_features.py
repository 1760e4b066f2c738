"""Evaluation metrics against sklearn, and FeatureSet validation."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

from poisonguard.detect import DetectionResult, FeatureSet, evaluate
from poisonguard.detect.metrics import auroc, precision_recall_f1


def test_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    truth = rng.random(500) < 0.2
    score = truth + rng.normal(0, 0.8, 500)
    score[:40] = np.round(score[:40])  # ties
    flagged = score > 0.7
    p, r, f = precision_recall_f1(flagged, truth)
    assert (p, r, f) == pytest.approx(
        (precision_score(truth, flagged), recall_score(truth, flagged), f1_score(truth, flagged))
    )
    assert auroc(score, truth) == pytest.approx(roc_auc_score(truth, score))


def test_evaluate_counts_flags_and_handles_clean_controls():
    ids = np.array(["a", "b", "c", "d"])
    res = DetectionResult(ids, np.array([0.9, 0.8, 0.1, 0.2]), np.array([True, True, False, False]), {}, {})
    m = evaluate(res, ["a", "c", "zz"])
    assert m["n_flagged"] == 2 and m["flag_rate"] == 0.5
    assert (m["true_positives"], m["false_positives"], m["n_poison"], m["n_poison_unmatched"]) == (1, 1, 2, 1)
    assert m["precision"] == m["recall"] == 0.5 and m["auroc"] == 0.5  # pairs: (.9>.8, .9>.2) of 4
    control = evaluate(res, [])  # no poison: AUROC undefined, flag count still reported
    assert control["auroc"] is None and control["n_flagged"] == 2 and control["f1"] == 0.0


def _alloc(n: int = 4) -> np.ndarray:
    a = np.random.default_rng(0).random((n, 2, 3, 3))
    return a / a.sum(-1, keepdims=True)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"ids": ["a", "a", "b", "c"]}, "unique"),
        ({"alloc": _alloc()[:, :, :, :2]}, "alloc"),
        ({"alloc": _alloc() * 2}, "sum to 1"),
        ({"alloc_base": _alloc(3)}, "alloc_base"),
        ({"strata": np.array([0.5, 1, 2, 3])}, "strata"),
        ({"hidden": np.full((4, 2), np.nan)}, "hidden"),
        ({"vis_entropy": np.full((4, 2), np.inf)}, "vis_entropy"),
        ({"extra_scores": {"drift": np.ones(3)}}, "drift"),
    ],
)
def test_feature_set_validation(kwargs, match):
    base = {"ids": ["a", "b", "c", "d"], "alloc": _alloc()}
    with pytest.raises(ValueError, match=match):
        FeatureSet(**{**base, **kwargs})


def test_feature_set_subset_slices_every_field():
    fs = FeatureSet(
        ids=["a", "b", "c", "d"],
        alloc=_alloc(),
        alloc_base=_alloc(),
        strata=np.array([0, 1, 0, 1]),
        vis_entropy=np.array([[1.0, np.nan]] * 4),
        hidden=np.eye(4),
        extra_scores={"drift": [1.0, 2.0, np.nan, 4.0]},
    )
    sub = fs.subset(np.array([3, 1]))
    assert sub.ids.tolist() == ["d", "b"] and sub.strata.tolist() == [1, 1]
    np.testing.assert_array_equal(sub.alloc, fs.alloc[[3, 1]])
    assert sub.extra_scores["drift"].tolist() == [4.0, 2.0]
    assert sub.hidden.shape == (2, 4)
