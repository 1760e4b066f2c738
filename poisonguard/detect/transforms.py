"""Label-free feature transforms shared by the detectors (pure numpy, fit/apply pairs).

Why each exists (what the early detector probes showed):
- Log-ratio coordinates: shares live on a simplex; log(vis/sys), log(txt/sys) (additive log-ratios) make
  shifts of small shares visible and let a head contribute all three shares, not only α_sys.
- Base-model differencing (done by the caller, fine-tuned minus base, sample by sample) removes the structure
  the base model already had (prompt template, image content), which is what made faithful TCAP pick content
  heads.
- Robust standardisation within prompt strata removes the remaining per-template offsets and scales, so a
  head that splits samples by template no longer shows a "minority mode".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_MAD_TO_SD = 1.4826  # MAD of a normal distribution × this = its standard deviation
_MEAN_AD_TO_SD = 1.2533  # mean absolute deviation × this = SD, the fallback when over half the values tie
SPACES = ("share", "alr")


def allocation_coordinates(alloc: np.ndarray, space: str, full: bool, floor: float) -> np.ndarray:
    """(N, L, H, 3) shares → (N, L, H, C) coordinates.

    share: full → (sys, vis, txt), else (sys,).  alr: full → (log vis/sys, log txt/sys), else logit(sys).
    Shares are clipped at `floor` before logs (a head can put ~0 on a span).
    """
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")
    a = np.asarray(alloc, dtype=np.float64)
    if space == "share":
        return a if full else a[..., :1]
    la = np.log(np.clip(a, floor, None))  # (N, L, H, 3)
    if full:
        return la[..., 1:] - la[..., :1]
    rest = np.log(np.clip(a[..., 1] + a[..., 2], floor, None))
    return (la[..., 0] - rest)[..., None]


@dataclass(frozen=True)
class RobustScaler:
    """Per-stratum median and robust scale of each column, with global values for small or unseen strata."""

    strata: np.ndarray  # (S,) stratum labels with their own statistics
    center: np.ndarray  # (S, F)
    scale: np.ndarray  # (S, F)
    global_center: np.ndarray  # (F,)
    global_scale: np.ndarray  # (F,)

    def transform(self, x: np.ndarray, strata: np.ndarray | None) -> np.ndarray:
        """(N, F) → robust z-scores."""
        x = np.asarray(x, dtype=np.float64)
        center = np.broadcast_to(self.global_center, x.shape).copy()
        scale = np.broadcast_to(self.global_scale, x.shape).copy()
        if strata is not None and self.strata.size:
            pos = np.searchsorted(self.strata, strata)
            pos = np.clip(pos, 0, self.strata.size - 1)
            known = self.strata[pos] == strata
            center[known] = self.center[pos[known]]
            scale[known] = self.scale[pos[known]]
        return (x - center) / scale

    def take(self, columns: np.ndarray) -> RobustScaler:
        return RobustScaler(
            self.strata,
            self.center[:, columns],
            self.scale[:, columns],
            self.global_center[columns],
            self.global_scale[columns],
        )


def fit_robust_scaler(x: np.ndarray, strata: np.ndarray | None, min_stratum_size: int) -> RobustScaler:
    """Median / (1.4826 · MAD) per column, per stratum when the stratum has ≥ `min_stratum_size` samples.

    A zero MAD (over half the values tie) falls back to the mean absolute deviation, then to 1.
    """
    x = np.asarray(x, dtype=np.float64)
    gc, gs = _median_scale(x)
    labels: list[int] = []
    centers, scales = [], []
    if strata is not None:
        values, counts = np.unique(strata, return_counts=True)
        for s, cnt in zip(values, counts):
            if cnt >= min_stratum_size:
                c, sc = _median_scale(x[strata == s])
                labels.append(int(s))
                centers.append(c)
                scales.append(sc)
    f = x.shape[1]
    return RobustScaler(
        np.asarray(labels, dtype=np.int64),
        np.asarray(centers).reshape(len(labels), f),
        np.asarray(scales).reshape(len(labels), f),
        gc,
        gs,
    )


def robust_location_scale(x: np.ndarray) -> tuple[float, float]:
    """Median and robust SD of the finite values of a 1-D array (scale 1 when it cannot be estimated)."""
    v = np.asarray(x, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 0.0, 1.0
    c, s = _median_scale(v[:, None])
    return float(c[0]), float(s[0])


@dataclass(frozen=True)
class MinMax:
    """Per-column min-max normalisation to [0, 1] (TCAP's per-head normalisation); constant columns → 0."""

    low: np.ndarray  # (F,)
    span: np.ndarray  # (F,)

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64) - self.low) / self.span


def fit_minmax(x: np.ndarray) -> MinMax:
    lo, hi = x.min(axis=0), x.max(axis=0)
    span = hi - lo
    return MinMax(lo, np.where(span > 0, span, 1.0))


def _median_scale(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    med = np.median(x, axis=0)
    dev = np.abs(x - med)
    scale = _MAD_TO_SD * np.median(dev, axis=0)
    fallback = _MEAN_AD_TO_SD * dev.mean(axis=0)
    scale = np.where(scale > 0, scale, np.where(fallback > 0, fallback, 1.0))
    return med, scale
