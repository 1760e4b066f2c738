"""Decision shift: how far fine-tuning moved each sample's decision-position hidden state, with a guarded cut.

A backdoor is a behaviour the base model does not have: on a poisoned sample the fine-tuned model's decision
state (the final normed hidden state at the last prompt token, the LM head's input) moves to the attacker's
target answer, while on clean data both models agree up to the fine-tune's general drift. So per sample
shift_i = log ‖h_ft,i − h_base,i‖₂ is large and alike on the poisoned minority, whatever the trigger, as long
as the model learned it; screening with the base model as the fine-tuned one gives shift 0 everywhere.

The cut is label-free: 1-D GMMs with K = 1..`k_max` on the shifts; for K = 2, 3, … the upper component is
poison if it is a real mode (`min_bic_gain`), a minority (`min_weight`, `max_weight`), separated from the rest
(`min_separation`), coherent (`max_spread`: its samples' states bunch up, as they all give one answer) and
spread over the prompt strata as a trigger is (`max_stratum_lift`). The first K that passes decides; otherwise
nothing is flagged and p_poison only ranks. Out of reach: a clean minority the fine-tune moved to one answer,
an unlearned trigger, a payload appended after an unchanged first answer token.
The measurements behind each constant, and the benchmark cells that chose and checked them: docs/detectors.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

import numpy as np

from poisonguard.detect.base import DetectionResult, Detector, check_float, check_int
from poisonguard.detect.features import FeatureSet
from poisonguard.detect.gmm import fit_gmm_1d
from poisonguard.detect.profile import mixture_from_state, mixture_state
from poisonguard.detect.separation import standardised_separation, target_posterior

# Shift norms below this are "no movement" (the base-model control gives exact zeros); log of 0 is avoided.
_FLOOR = 1e-8
# The chosen candidate's statistics that the report carries, so a reviewer can judge the cut.
_CANDIDATE_STATS = ("bic_gain", "weight", "separation", "spread", "stratum_lift")


@dataclass(frozen=True)
class ShiftParams:
    k_max: int = 3
    min_bic_gain: float = 10.0
    min_weight: float = 0.002
    max_weight: float = 0.4
    min_separation: float = 3.0
    max_spread: float = 0.65
    max_stratum_lift: float = 3.0
    n_init: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("k_max", self.k_max, 2, 5)
        check_float("min_bic_gain", self.min_bic_gain, 0.0)
        check_float("min_weight", self.min_weight, 0.0, 0.5)
        check_float("max_weight", self.max_weight, self.min_weight, 0.5)
        check_float("min_separation", self.min_separation, 0.0)
        check_float("max_spread", self.max_spread, 0.0, 1.0, open_lo=True)
        check_float("max_stratum_lift", self.max_stratum_lift, 1.0)
        check_int("n_init", self.n_init, 1)
        check_int("seed", self.seed, 0)


def decision_shift(hidden: np.ndarray, hidden_base: np.ndarray) -> np.ndarray:
    """(N,) log ‖h_ft − h_base‖ of (N, D) decision states, floored at log(_FLOOR)."""
    d = np.asarray(hidden, dtype=np.float64) - np.asarray(hidden_base, dtype=np.float64)  # (N, D)
    return np.log(np.maximum(np.linalg.norm(d, axis=1), _FLOOR))


def spread(hidden: np.ndarray) -> float:
    """RMS distance of (n, D) states to their centroid."""
    h = np.asarray(hidden, dtype=np.float64)
    return float(np.sqrt(((h - h.mean(axis=0)) ** 2).sum(axis=1).mean())) if len(h) else 0.0


class DecisionShiftDetector(Detector):
    name = "shift"
    Params = ShiftParams
    params: ShiftParams

    def fit(self, features: FeatureSet) -> Self:
        features.require("hidden", "hidden_base")
        x = decision_shift(features.hidden, features.hidden_base)  # (N,)
        p = self.params
        # candidates by K (a dict, not a list: the JSON state turns lists into arrays)
        fitted: dict[str, Any] = {"accepted": False, "mixture": None, "k": 0, "candidates": {}}
        ks = tuple(range(1, min(p.k_max, x.size) + 1))
        if len(ks) > 1 and np.ptp(x) > 1e-9:
            fit = fit_gmm_1d(x[:, None], ks=ks, n_init=p.n_init, seed=p.seed)
            total = spread(features.hidden)
            for k in ks[1:]:
                cand = _candidate(fit, k, x, features.hidden, total, features.strata, p)
                fitted["candidates"][str(k)] = cand
                if cand["passed"]:
                    break
            chosen = cand if cand["passed"] else fitted["candidates"][str(ks[1])]
            fitted.update(mixture=chosen["mixture"], k=chosen["k"], accepted=bool(chosen["passed"]))
        fitted["reason"] = _reason(fitted)
        self._fitted = fitted
        return self

    def score(self, features: FeatureSet) -> DetectionResult:
        st = self._state()
        features.require("hidden", "hidden_base")
        x = decision_shift(features.hidden, features.hidden_base)  # (N,)
        p_poison = np.zeros(x.size) if st["mixture"] is None else _top_posterior(x, st["mixture"])
        flagged = bool(st["accepted"]) & (p_poison >= 0.5)
        chosen = st["candidates"].get(str(int(st["k"])))
        stats = {} if chosen is None else {key: chosen[key] for key in _CANDIDATE_STATS}
        return self._result(features, p_poison, flagged, {"score_shift": x, "p_shift": p_poison},
                            accepted=bool(st["accepted"]), reason=st["reason"], k=int(st["k"]), **stats)


def _top_posterior(x: np.ndarray, mix: dict) -> np.ndarray:
    """(N,) posterior of the upper component of a stored mixture (`profile.mixture_state`); 0 below the lowest
    mean (a wide upper component's Gaussian can regain mass far in the lower tail)."""
    params, top = mixture_from_state(mix, np.size(mix["weights"]))
    return np.where(x > params.means[0, 0], target_posterior(x[:, None], params, top)[:, 0], 0.0)


def stratum_lift(members: np.ndarray, strata: np.ndarray | None) -> float:
    """max over strata of (share of the members in the stratum) / (share of all samples in it); 1.0 without
    strata or members."""
    if strata is None or not members.any():
        return 1.0
    _, codes = np.unique(strata, return_inverse=True)
    everyone = np.bincount(codes) / codes.size  # (S,)
    chosen = np.bincount(codes[members], minlength=everyone.size) / members.sum()  # (S,)
    return float((chosen / everyone).max())


def _candidate(fit, k: int, x: np.ndarray, hidden: np.ndarray, total_spread: float, strata: np.ndarray | None,
               p: ShiftParams) -> dict:
    """The upper component of the K = k fit, its statistics and whether it passes every check."""
    params = fit.at(k)  # (1, Kmax), padded beyond k; components sorted by mean
    top = np.arange(params.k_max)[None, :] == k - 1  # the upper component
    mix = mixture_state(params, top)
    members = _top_posterior(x, mix) >= 0.5  # (N,)
    cand = {"k": k, "mixture": mix, "bic_gain": float(fit.bic[0, 0] - fit.bic[0, fit.ks.index(k)]),
            "weight": float(params.weights[0, k - 1]),
            "separation": float(standardised_separation(params, top)[0]),
            "spread": spread(hidden[members]) / total_spread if members.sum() > 1 and total_spread > 0 else 1.0,
            "stratum_lift": stratum_lift(members, strata), "n_members": int(members.sum())}
    cand["failed"] = [why for ok, why in (
        (cand["bic_gain"] >= p.min_bic_gain, f"BIC gain {cand['bic_gain']:.1f} < {p.min_bic_gain:g} (one mode)"),
        (p.min_weight <= cand["weight"] <= p.max_weight,
         f"upper-mode weight {cand['weight']:.3f} outside [{p.min_weight:g}, {p.max_weight:g}]"),
        (cand["separation"] >= p.min_separation, f"separation {cand['separation']:.2f} < {p.min_separation:g}"),
        (cand["spread"] <= p.max_spread,
         f"spread {cand['spread']:.2f} > {p.max_spread:g} (the samples do not converge to one answer)"),
        (cand["stratum_lift"] <= p.max_stratum_lift,
         f"stratum lift {cand['stratum_lift']:.1f} > {p.max_stratum_lift:g} (one kind of question, not a trigger)"),
    ) if not ok]
    cand["passed"] = not cand["failed"]
    return cand


def _reason(f: dict) -> str:
    """Why the upper mode was (not) taken as poison, in words for the report."""
    if f["mixture"] is None:
        return "no shift: the fine-tuned and base decision states are identical"
    if not f["accepted"]:
        return "nothing flagged: " + " / ".join(f"K={c['k']}: " + "; ".join(c["failed"]) for c in f["candidates"].values())
    c = f["candidates"][str(f["k"])]
    return (f"a separated minority moved by fine-tuning to one answer (K={c['k']}): weight {c['weight']:.3f}, "
            f"separation {c['separation']:.2f}, spread {c['spread']:.2f}, stratum lift {c['stratum_lift']:.1f}, "
            f"BIC gain {c['bic_gain']:.0f}")
