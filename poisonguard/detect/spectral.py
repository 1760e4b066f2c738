"""Spectral signatures (Tran, Li, Madry, NeurIPS 2018, arXiv 1811.00636) on decision-position hidden states.

Score = squared projection of the centred representation on the top right singular vector: a poisoned
minority shifted along one direction dominates that vector. The paper runs it per label and removes the top
1.5·ε (ε = the *known* poison rate); there are no labels or known rate here, so it runs on all samples and
the cut is label-free:
- default: robust z of the signed projection (median / 1.4826·MAD) with |z| > `z_threshold`. Median and MAD
  come from the clean bulk as long as poison is a minority, so the rule stays quiet on clean data (a Gaussian
  bulk exceeds 3.5 in 0.05% of samples), unlike a cut on the squared score, whose skew flags ~10%.
- `contamination`: flag that fraction of the fitting data with the largest |z| (a stated budget, e.g. the
  paper's 1.5·ε when an analyst has a rate estimate). Default None.
p_poison = sigmoid(|z| − cut), a monotone squashing for ranking, not a calibrated probability.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

import numpy as np
from scipy.linalg import eigh
from scipy.special import expit

from poisonguard.detect.base import DetectionResult, Detector, check_float
from poisonguard.detect.features import FeatureSet
from poisonguard.detect.transforms import robust_location_scale

_ROW_CHUNK = 8192


@dataclass(frozen=True)
class SpectralParams:
    z_threshold: float = 3.5
    contamination: float | None = None

    def __post_init__(self) -> None:
        check_float("z_threshold", self.z_threshold, 0.0, open_lo=True)
        if self.contamination is not None:
            check_float("contamination", self.contamination, 0.0, 0.5, open_lo=True)


def spectral_direction(hidden: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and top right singular vector (D,) of the centred hidden states (N, D).

    From the D×D scatter matrix, accumulated in row chunks (N can be large; D is a model width). The sign is
    fixed so that the largest-magnitude entry is positive, for reproducible states.
    """
    h = np.asarray(hidden)
    mean = h.mean(axis=0, dtype=np.float64)
    scatter = np.zeros((h.shape[1], h.shape[1]))
    for s in range(0, h.shape[0], _ROW_CHUNK):
        c = h[s : s + _ROW_CHUNK].astype(np.float64) - mean
        scatter += c.T @ c
    d = scatter.shape[0]
    _, vec = eigh(scatter, subset_by_index=[d - 1, d - 1])
    v = vec[:, 0]
    return mean, v * np.sign(v[np.argmax(np.abs(v))])


def projection(hidden: np.ndarray, mean: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(N,) signed projection ⟨h − mean, v⟩."""
    return (np.asarray(hidden, dtype=np.float64) - mean) @ v


class SpectralSignatureDetector(Detector):
    name = "spectral"
    Params = SpectralParams
    params: SpectralParams

    def fit(self, features: FeatureSet) -> Self:
        features.require("hidden")
        mean, v = spectral_direction(features.hidden)
        proj = projection(features.hidden, mean, v)
        center, scale = robust_location_scale(proj)
        z = np.abs(proj - center) / scale
        c = self.params.contamination
        cut = self.params.z_threshold if c is None else float(np.quantile(z, 1.0 - c))
        rule = f"|robust z| > {cut:.3f}" + ("" if c is None else f" (top {c:.3%} of the fitting data)")
        self._fitted = {
            "mean": mean,
            "direction": v,
            "center": center,
            "scale": scale,
            "cut": cut,
            "report": {"rule": rule, "cut_z": cut, "center": center, "scale": scale},
        }
        return self

    def score(self, features: FeatureSet) -> DetectionResult:
        st = self._state()
        features.require("hidden")
        mean, v = np.asarray(st["mean"]), np.asarray(st["direction"])
        if features.hidden.shape[1] != v.size:
            raise ValueError(f"hidden has width {features.hidden.shape[1]}, fitted on {v.size}")
        proj = projection(features.hidden, mean, v)
        z = np.abs(proj - st["center"]) / st["scale"]
        p_poison = expit(z - st["cut"])
        flagged = z > st["cut"]
        signals = {"score_spectral": proj**2, "vote_spectral": flagged.astype(float)}
        return self._result(features, p_poison, flagged, signals, **st["report"])
