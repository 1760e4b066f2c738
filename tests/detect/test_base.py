"""Detector._result: the one place every detector's `score` builds its DetectionResult and report."""

from __future__ import annotations

import numpy as np

from poisonguard.detect import FeatureSet, SpectralSignatureDetector


def _features(n: int) -> FeatureSet:
    return FeatureSet(ids=np.array([f"s{i}" for i in range(n)]), hidden=np.zeros((n, 2)))


def test_result_fills_the_common_report_fields_around_the_detectors_own():
    det = SpectralSignatureDetector()
    flagged = np.array([True, False, False, True])
    res = det._result(
        _features(4), np.array([0.9, 0.1, 0.2, 0.8]), flagged, {"vote_x": flagged * 1.0}, rule="r", cut_z=3.5
    )
    assert list(res.report) == ["detector", "rule", "cut_z", "n", "n_flagged", "flag_rate"]
    assert res.report == {
        "detector": "spectral",
        "rule": "r",
        "cut_z": 3.5,
        "n": 4,
        "n_flagged": 2,
        "flag_rate": 0.5,
    }
    assert type(res.report["n_flagged"]) is int and type(res.report["flag_rate"]) is float
    assert res.ids.tolist() == ["s0", "s1", "s2", "s3"] and res.flagged.tolist() == flagged.tolist()
    assert list(res.signals) == ["vote_x"]


def test_result_clips_p_poison_and_takes_any_field_name():
    res = SpectralSignatureDetector()._result(
        _features(3), np.array([-1e-12, 0.5, 1 + 1e-12]), np.zeros(3, bool), {}, features="a field", flagged=1
    )
    assert res.p_poison.tolist() == [0.0, 0.5, 1.0]
    assert res.report["features"] == "a field" and res.report["flagged"] == 1


def test_result_on_no_samples_has_flag_rate_zero():
    res = SpectralSignatureDetector()._result(_features(0), np.zeros(0), np.zeros(0, bool), {})
    assert (res.report["n"], res.report["n_flagged"], res.report["flag_rate"]) == (0, 0, 0.0)
