"""Label-free prompt strata: groups of samples that ask alike, computed from the base model alone."""

from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA


def label_free_strata(base_hidden: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """(N,) int stratum of each sample: k-means on the standardised PCA of the *base* model's (N, D)
    decision-position states.

    The base model has never seen a backdoor, so its decision state groups samples by what they ask and what
    it would answer (question type, answer class) -- the content structure that otherwise makes head
    selection pick content heads, and that the detectors' stratum checks compare against. No labels needed.
    Fewer than 2k samples give a single stratum.
    """
    x = np.asarray(base_hidden, dtype=np.float64)  # (N, D)
    if len(x) < 2 * k:
        return np.zeros(len(x), dtype=np.int64)
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    z = PCA(n_components=min(16, x.shape[1], len(x) - 1), random_state=seed).fit_transform(x)  # (N, ≤16)
    return KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(z).astype(np.int64)
