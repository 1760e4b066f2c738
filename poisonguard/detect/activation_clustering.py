"""Activation clustering (Chen et al., 2018, arXiv 1811.03728), in the form of the Adversarial Robustness
Toolbox (ART), on decision-position hidden states.

Reduce to `n_components` dimensions (PCA, or FastICA as in the paper), split into two clusters by k-means and
apply ART's size analysis: the smaller cluster is poison only if its share is below `size_threshold`
(ART's default 0.35); otherwise nothing is flagged. The paper clusters per label; there are no labels here,
so all samples are clustered together, and a clean dataset with a natural small mode (a rare question type, a
kind of image) will be flagged: the size test is its only guard.

p_poison = soft membership of the smaller cluster, softmax(−d²/(2s²)) over the two centres with s² the mean
within-cluster variance per dimension: a ranking, not a calibrated probability.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

import numpy as np
from scipy.special import expit
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA, FastICA

from poisonguard.detect.base import DetectionResult, Detector, check_choice, check_float, check_int
from poisonguard.detect.features import FeatureSet

REDUCTIONS = ("pca", "ica")


@dataclass(frozen=True)
class ActivationClusteringParams:
    reduce: str = "pca"
    n_components: int = 10
    size_threshold: float = 0.35
    n_init: int = 10  # k-means restarts
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice("reduce", self.reduce, REDUCTIONS)
        check_int("n_components", self.n_components, 1)
        check_float("size_threshold", self.size_threshold, 0.0, 0.5, open_lo=True)
        check_int("n_init", self.n_init, 1)
        check_int("seed", self.seed, 0)


class ActivationClusteringDetector(Detector):
    name = "activation_clustering"
    Params = ActivationClusteringParams
    params: ActivationClusteringParams

    def fit(self, features: FeatureSet) -> Self:
        p = self.params
        features.require("hidden")
        h = features.hidden.astype(np.float64)
        k = min(p.n_components, h.shape[1], h.shape[0] - 1)
        if p.reduce == "pca":
            red = PCA(n_components=k, random_state=p.seed).fit(h)
        else:
            red = FastICA(n_components=k, random_state=p.seed, whiten="unit-variance", max_iter=1000).fit(h)
        z = (h - red.mean_) @ red.components_.T  # (N, k), what `transform` computes for both reducers
        km = KMeans(n_clusters=2, n_init=p.n_init, random_state=p.seed).fit(z)
        sizes = np.bincount(km.labels_, minlength=2)
        small = int(np.argmin(sizes))
        share = float(sizes[small] / sizes.sum())
        resid = z - km.cluster_centers_[km.labels_]
        s2 = max(float((resid**2).mean()), 1e-12)
        active = share < p.size_threshold
        report: dict[str, Any] = {
            "reduce": p.reduce,
            "n_components": k,
            "cluster_sizes": sizes,
            "smaller_share": share,
            "size_threshold": p.size_threshold,
            "flags_smaller_cluster": active,
        }
        if not active:
            report["note"] = f"smaller cluster holds {share:.1%} >= size_threshold: nothing flagged"
        self._fitted = {
            "mean": red.mean_,
            "components": red.components_,
            "centers": km.cluster_centers_,
            "small": small,
            "s2": s2,
            "active": active,
            "report": report,
        }
        return self

    def score(self, features: FeatureSet) -> DetectionResult:
        st = self._state()
        features.require("hidden")
        comps = np.asarray(st["components"], dtype=np.float64)
        if features.hidden.shape[1] != comps.shape[1]:
            raise ValueError(f"hidden has width {features.hidden.shape[1]}, fitted on {comps.shape[1]}")
        z = (features.hidden.astype(np.float64) - np.asarray(st["mean"])) @ comps.T
        centers = np.asarray(st["centers"], dtype=np.float64)
        d2 = ((z[:, None, :] - centers[None, :, :]) ** 2).sum(-1)  # (N, 2)
        small = int(st["small"])
        margin = d2[:, 1 - small] - d2[:, small]  # > 0: nearer the smaller cluster
        p_poison = expit(margin / (2.0 * float(st["s2"])))
        flagged = (margin > 0) & bool(st["active"])
        signals = {"score_activation_clustering": margin, "vote_activation_clustering": flagged.astype(float)}
        return self._result(features, p_poison, flagged, signals, **st["report"])
