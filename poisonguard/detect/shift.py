"""Decision shift: how far fine-tuning moved each sample's decision-position hidden state, with a guarded cut.

Why: a backdoor is a behaviour the base model does not have. On a poisoned sample the fine-tuned model's
decision state (the final normed hidden state at the last prompt token, the input of the LM head) moves to the
attacker's target answer, while the base model's still encodes the answer the content calls for; on clean
data both models agree up to the fine-tune's general drift. So per sample

    shift_i = log ‖h_ft,i − h_base,i‖₂

is large and alike on the poisoned minority (all of them moved to one target), whatever the trigger is (a
patch, a blended image, a frequency pattern, a word): the trigger only has to be *learned*. It is base-model
differencing of the decision state, where TCAP+ differences attention shares. Two controls follow from the
construction: a trigger the model did not learn (no relabel, or too weak a trigger) moves nothing special,
and screening with the base model in place of the fine-tuned one gives shift 0 for every sample.

The cut is label-free, as in TCAP+'s head profile: 1-D GMMs with K = 1 and 2 on the shifts, and the upper
component counts as poison only if it is a real, separated minority -- BIC gain of K = 2 over K = 1
≥ `min_bic_gain`, weight in [`min_weight`, `max_weight`], and standardised separation
|μ₂ − μ₁| / sqrt((σ₁² + σ₂²) / 2) ≥ `min_separation`. Otherwise nothing is flagged (p_poison still ranks).
`min_separation` = 3 was set after the 2026-11-29 seed-0 10 % benchmark (poisoned minorities 6.5–9.4; the
clean set and the no-relabel control 1.4, where the BIC already rejects the clean set); seeds 1–2 and 5 %
check it. It is a selection on measured results, not a constant fitted inside the detector.

What it cannot tell apart: a clean minority the fine-tune genuinely changed (a new task in 10 % of the data)
looks like poison, as for every detector built on differencing; the report names the separation so a
reviewer can judge. A model that did not learn the trigger gives no shift to find (README, WaNet).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

import numpy as np

from poisonguard.detect.base import DetectionResult, Detector, check_float, check_int
from poisonguard.detect.features import FeatureSet
from poisonguard.detect.gmm import GMMParams, fit_gmm_1d
from poisonguard.detect.separation import standardised_separation, target_posterior

# Shift norms below this are "no movement" (the base-model control gives exact zeros); log of 0 is avoided.
_FLOOR = 1e-8


@dataclass(frozen=True)
class ShiftParams:
    min_bic_gain: float = 10.0
    min_weight: float = 0.002
    max_weight: float = 0.4
    min_separation: float = 3.0
    n_init: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        check_float("min_bic_gain", self.min_bic_gain, 0.0)
        check_float("min_weight", self.min_weight, 0.0, 0.5)
        check_float("max_weight", self.max_weight, self.min_weight, 0.5)
        check_float("min_separation", self.min_separation, 0.0)
        check_int("n_init", self.n_init, 1)
        check_int("seed", self.seed, 0)


def decision_shift(hidden: np.ndarray, hidden_base: np.ndarray) -> np.ndarray:
    """(N,) log ‖h_ft − h_base‖ of (N, D) decision states, floored at log(_FLOOR)."""
    d = np.asarray(hidden, dtype=np.float64) - np.asarray(hidden_base, dtype=np.float64)  # (N, D)
    return np.log(np.maximum(np.linalg.norm(d, axis=1), _FLOOR))


class DecisionShiftDetector(Detector):
    name = "shift"
    Params = ShiftParams
    params: ShiftParams

    def fit(self, features: FeatureSet) -> Self:
        features.require("hidden", "hidden_base")
        x = decision_shift(features.hidden, features.hidden_base)  # (N,)
        p = self.params
        fitted: dict[str, Any] = {"accepted": False, "mixture": None, "bic_gain": 0.0, "weight": 0.0,
                                  "separation": 0.0}
        if x.size >= 2 and np.ptp(x) > 1e-9:
            fit = fit_gmm_1d(x[:, None], ks=(1, 2), n_init=p.n_init, seed=p.seed)
            two = fit.at(2)
            top = np.zeros((1, 2), dtype=bool)
            top[0, 1] = True  # components are sorted by mean: the upper one is the candidate poison mode
            gain = float(fit.bic[0, 0] - fit.bic[0, 1])
            weight = float(two.weights[0, 1])
            sep = float(standardised_separation(two, top)[0])
            fitted.update(mixture={"weights": two.weights[0], "means": two.means[0], "variances": two.variances[0]},
                          bic_gain=gain, weight=weight, separation=sep,
                          accepted=bool(gain >= p.min_bic_gain and p.min_weight <= weight <= p.max_weight
                                        and sep >= p.min_separation))
        fitted["reason"] = _reason(fitted, p)
        self._fitted = fitted
        return self

    def score(self, features: FeatureSet) -> DetectionResult:
        st = self._state()
        features.require("hidden", "hidden_base")
        x = decision_shift(features.hidden, features.hidden_base)  # (N,)
        mix = st["mixture"]
        if mix is None:
            p_poison = np.zeros(x.size)
        else:
            params = GMMParams(np.asarray(mix["weights"], dtype=np.float64)[None, :],
                               np.asarray(mix["means"], dtype=np.float64)[None, :],
                               np.asarray(mix["variances"], dtype=np.float64)[None, :], np.array([2]))
            top = np.array([[False, True]])
            # posterior of the upper component; below the lower mean it is forced to 0 (a narrow upper
            # component's Gaussian can regain mass far in the lower tail)
            p_poison = np.where(x > params.means[0, 0], target_posterior(x[:, None], params, top)[:, 0], 0.0)
        flagged = bool(st["accepted"]) & (p_poison >= 0.5)
        report = {"detector": self.name, "accepted": bool(st["accepted"]), "reason": st["reason"],
                  "bic_gain": st["bic_gain"], "weight": st["weight"], "separation": st["separation"],
                  "n": int(x.size), "n_flagged": int(flagged.sum()),
                  "flag_rate": float(flagged.mean()) if x.size else 0.0}
        return DetectionResult(features.ids, np.clip(p_poison, 0.0, 1.0), flagged,
                               {"score_shift": x, "p_shift": p_poison}, report)


def _reason(f: dict, p: ShiftParams) -> str:
    """Why the upper mode was (not) taken as poison, in words for the report."""
    if f["mixture"] is None:
        return "no shift: the fine-tuned and base decision states are identical"
    failed = [why for ok, why in (
        (f["bic_gain"] >= p.min_bic_gain, f"BIC gain {f['bic_gain']:.1f} < {p.min_bic_gain:g} (one mode)"),
        (p.min_weight <= f["weight"] <= p.max_weight,
         f"upper-mode weight {f['weight']:.3f} outside [{p.min_weight:g}, {p.max_weight:g}]"),
        (f["separation"] >= p.min_separation, f"separation {f['separation']:.2f} < {p.min_separation:g}"),
    ) if not ok]
    if failed:
        return "nothing flagged: " + "; ".join(failed)
    return (f"a separated minority moved by fine-tuning: weight {f['weight']:.3f}, separation "
            f"{f['separation']:.2f}, BIC gain {f['bic_gain']:.0f}")
