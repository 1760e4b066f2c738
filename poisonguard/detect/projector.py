"""ProjectorDriftDetector: a label-free, conservative yes/no cut on the projector-drift scores.

Why this cut (research/detector-probe.md B, "its weak point is the yes/no cut"): the drift scores rank
poisoned samples well (AUROC 0.89–0.98 on image attacks), but a 2-GMM split of the scores flagged 1,000–2,500
samples on every clean-label control, and robust z > 3 flagged almost none there but missed half the poison,
because poison in that toy sat as a shifted tail (median z 0.7–3), not a separate mode. So:

1. Each score is put on a log scale (drift norms are positive and right-skewed) and robust-standardised
   against the bulk (median, 1.4826·MAD: the median and MAD stay with the clean bulk while poison is a
   minority). The combined statistic is the mean of those z-scores (the probe's "average of standardised log
   scores": AUROC 0.88–0.97, the steadiest ranking), re-standardised the same way: `score_projector`.
2. `cut="mixture_or_z"`: a 2-component Gaussian mixture on the combined z is accepted only when it
   finds a real, separated upper mode: BIC gain ≥ `min_bic_gain` over one Gaussian, Ashman's D ≥
   `min_separation` (D > 2 is the usual criterion for a clean bimodal split), and an upper-mode weight in
   [`min_weight`, `max_weight`] (poison is a minority) holding at least 5 samples. Then samples past the
   point where the upper mode's posterior reaches ½ are flagged, but never below z = `z_floor`. Without such
   a mode it falls back to rule 3.
   A skewed or heavy-tailed clean bulk gives two overlapping components (small D), so it does not fire.
3. `cut="robust_z"` (default): flag combined z > `z_threshold` (a Gaussian bulk exceeds 3.5 in 0.02% of
   samples). The default because on the embedded world's benchmark the mixture was accepted only where it
   added false flags (BadNet no-relabel control: 596 flags against 372 for rule 3; text prefix: 214 vs 202),
   never on a learned backdoor; on synthetic data with a separated poison mode it does add recall.

Scores: by default `drift_max_rel` (max_t ‖ΔE_t‖ / ‖E0_t‖) alone. On the embedded world's BadNet fine-tune
it ranked at AUROC 0.91 while the probe's mix of (max, mean, max_rel) fell to 0.71, because the raw
magnitudes follow the norm law there (see poisonguard.audit.activations); adding `drift_mean_rel` (0.92
together), meant for global triggers, needs the caller to export it. This default was chosen after seeing
the labels of one run: re-check it on every attack of the benchmark. On that run the cut flagged nothing:
poison sat again as a shifted tail (median combined z 1.7, clean 99th percentile 1.4) next to a bimodal clean
bulk, so no separated upper mode exists; the score is a ranking for fusion there, not a verdict.

Measured failures on that benchmark (default score and cut), which no threshold fixes:
- BadNet no-relabel control: AUROC 0.90 and 372 flags, all triggered images. The projector learns the
  frequent patch whatever its label; drift there is trigger exposure, not the backdoor (the clean fine-tune
  scored on the same triggered data: 0.51, so it is not a pixel artefact of the base model).
- SIG (ASR 0.98): poisoned samples drift *less* (AUROC 0.00; a separated lower mode, D = 7.8). An
  upper-tail rule cannot see it; a two-sided rule would, but it also flags BadNet's clean lower mode (24%).
- Text triggers (clean images): heavy upper tails unrelated to poison, 113–214 flags (2–4%).

The threshold is one number on the combined z, so `score` applies the fitted state to new data unchanged.
p_poison = sigmoid(z − cut) ranks; it is not a calibrated probability. The raw drift scores themselves stay
available as `extra_scores` for the Dawid–Skene fusion, where low recall is what its per-annotator
sensitivity absorbs. Samples without a score (no image) abstain: p_poison 0, never flagged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

import numpy as np
from scipy.special import expit
from scipy.stats import norm
from sklearn.mixture import GaussianMixture

from poisonguard.detect.base import (
    DetectionResult,
    Detector,
    check_bool,
    check_choice,
    check_float,
    check_int,
    to_jsonable,
)
from poisonguard.detect.features import FeatureSet
from poisonguard.detect.transforms import robust_location_scale

CUTS = ("mixture_or_z", "robust_z")
_TINY = 1e-12
_MIN_MODE_SIZE = 5  # fewer samples than this make a degenerate component (an outlier), not a mode


@dataclass(frozen=True)
class ProjectorDriftParams:
    scores: tuple[str, ...] = ("drift_max_rel",)
    log_scores: bool = True
    cut: str = "robust_z"
    z_threshold: float = 3.5
    min_separation: float = 2.0
    min_bic_gain: float = 10.0
    min_weight: float = 0.002
    max_weight: float = 0.3
    z_floor: float = 2.0
    seed: int = 0

    def __post_init__(self) -> None:
        if (
            not isinstance(self.scores, tuple)
            or not self.scores
            or not all(isinstance(s, str) for s in self.scores)
        ):
            raise ValueError(f"scores must be a non-empty tuple of names, got {self.scores!r}")
        if len(set(self.scores)) != len(self.scores):
            raise ValueError(f"scores must be distinct, got {self.scores}")
        check_bool("log_scores", self.log_scores)
        check_choice("cut", self.cut, CUTS)
        check_float("z_threshold", self.z_threshold, 0.0, open_lo=True)
        check_float("min_separation", self.min_separation, 0.0)
        check_float("min_bic_gain", self.min_bic_gain, 0.0)
        check_float("min_weight", self.min_weight, 0.0, 0.5)
        check_float("max_weight", self.max_weight, 0.0, 0.5, open_lo=True)
        if self.min_weight > self.max_weight:
            raise ValueError("min_weight must be <= max_weight")
        check_float("z_floor", self.z_floor, 0.0)
        check_int("seed", self.seed, 0)


def upper_mode_test(z: np.ndarray, params: ProjectorDriftParams) -> dict[str, Any]:
    """Fit 1 and 2 Gaussians to the combined z; say whether a separated minority upper mode exists and where
    its posterior crosses ½ (the cut it implies)."""
    x = np.asarray(z, dtype=np.float64)[:, None]
    gm1 = GaussianMixture(1, random_state=params.seed).fit(x)
    gm2 = GaussianMixture(2, n_init=3, random_state=params.seed).fit(x)
    means, sds = gm2.means_[:, 0], np.sqrt(gm2.covariances_.reshape(-1))
    lo, hi = int(np.argmin(means)), int(np.argmax(means))
    separation = float(abs(means[hi] - means[lo]) / np.sqrt((sds[hi] ** 2 + sds[lo] ** 2) / 2))
    weight = float(gm2.weights_[hi])
    bic_gain = float(gm1.bic(x) - gm2.bic(x))
    grid = np.linspace(means[lo], x.max(), 2001)
    dens = np.stack([w * norm.pdf(grid, m, s) for w, m, s in zip(gm2.weights_, means, sds)])  # (2, G)
    post_hi = dens[hi] / np.maximum(dens.sum(0), _TINY)
    crossing = grid[np.argmax(post_hi >= 0.5)] if np.any(post_hi >= 0.5) else None
    accepted = bool(
        bic_gain >= params.min_bic_gain
        and separation >= params.min_separation
        and params.min_weight <= weight <= params.max_weight
        and weight * x.shape[0] >= _MIN_MODE_SIZE
        and crossing is not None
    )
    return {
        "accepted": accepted,
        "separation": separation,
        "upper_weight": weight,
        "bic_gain": bic_gain,
        "means": means[[lo, hi]].tolist(),
        "sds": sds[[lo, hi]].tolist(),
        "crossing": float(crossing) if crossing is not None else None,
    }


class ProjectorDriftDetector(Detector):
    """Reads `FeatureSet.extra_scores[name]` for each name in `scores` (see poisonguard.audit.activations)."""

    name = "projector"
    Params = ProjectorDriftParams
    params: ProjectorDriftParams

    def _matrix(self, features: FeatureSet) -> np.ndarray:
        missing = [s for s in self.params.scores if s not in features.extra_scores]
        if missing:
            raise ValueError(f"extra_scores {missing} are missing (have {sorted(features.extra_scores)})")
        return np.stack([features.extra_scores[s] for s in self.params.scores], axis=1)  # (N, S)

    @staticmethod
    def _transform(x: np.ndarray, logged: np.ndarray) -> np.ndarray:
        x = x.copy()
        x[:, logged] = np.log(np.maximum(x[:, logged], _TINY))
        return x

    def fit(self, features: FeatureSet) -> Self:
        x = self._matrix(features)
        ok = np.isfinite(x).all(axis=1)
        if ok.sum() < 10:
            raise ValueError(f"need at least 10 samples with every score, got {int(ok.sum())}")
        positive = (x[ok] > 0).all(axis=0)
        logged = positive & self.params.log_scores  # a signed score (drift_proj) stays linear
        t = self._transform(x[ok], logged)
        centers, scales = zip(*(robust_location_scale(t[:, j]) for j in range(t.shape[1])))
        combined = ((t - np.asarray(centers)) / np.asarray(scales)).mean(axis=1)  # (n_ok,)
        c_center, c_scale = robust_location_scale(combined)
        z = (combined - c_center) / c_scale
        mixture = upper_mode_test(z, self.params) if self.params.cut == "mixture_or_z" else None
        if mixture is not None and mixture["accepted"]:
            cut = max(mixture["crossing"], self.params.z_floor)
            rule = f"separated upper mode (D={mixture['separation']:.2f}): combined z > {cut:.3f}"
        else:
            cut = self.params.z_threshold
            rule = f"combined robust z > {cut:.3f}" + (
                "" if mixture is None else " (no separated upper mode)"
            )
        self._fitted = {
            "logged": logged.astype(float),
            "centers": np.asarray(centers),
            "scales": np.asarray(scales),
            "combined_center": c_center,
            "combined_scale": c_scale,
            "cut": float(cut),
            "report": {
                "rule": rule,
                "cut_z": float(cut),
                "scores": list(self.params.scores),
                "logged": [s for s, lg in zip(self.params.scores, logged) if lg],
                "mixture": mixture,
                "n_fit": int(ok.sum()),
            },
        }
        return self

    def combined_z(self, features: FeatureSet) -> np.ndarray:
        """(N,) the combined robust z (`score_projector`); NaN where a score is missing."""
        st = self._state()
        x = self._matrix(features)
        ok = np.isfinite(x).all(axis=1)
        z = np.full(features.n, np.nan)
        t = self._transform(x[ok], np.asarray(st["logged"], dtype=bool))
        combined = ((t - np.asarray(st["centers"])) / np.asarray(st["scales"])).mean(axis=1)
        z[ok] = (combined - st["combined_center"]) / st["combined_scale"]
        return z

    def score(self, features: FeatureSet) -> DetectionResult:
        st = self._state()
        z = self.combined_z(features)
        has = np.isfinite(z)
        flagged = has & (np.nan_to_num(z, nan=-np.inf) > st["cut"])
        p_poison = np.where(has, expit(np.nan_to_num(z) - st["cut"]), 0.0)
        n = features.n
        report: dict[str, Any] = {
            "detector": self.name,
            **to_jsonable(st["report"]),
            "n": n,
            "n_scored": int(has.sum()),
            "n_flagged": int(flagged.sum()),
            "flag_rate": float(flagged.mean()) if n else 0.0,
        }
        signals = {"score_projector": z, "vote_projector": flagged.astype(float)}
        return DetectionResult(features.ids, p_poison, flagged, signals, report)
