"""TCAP, as published: the faithful baseline (Liu, Fang, Cong, arXiv 2601.21692).

Feature α_sys per head, min-max normalised per head; 1-D GMM with K = 1..5 chosen by AIC; K* = 1 → SS 0;
target group by mixture weight; SS = 1/(overlap + ε); candidate heads = the last `l_sens` layers; the top
`h_sens` heads by SS vote "target posterior > τ"; binary Dawid–Skene EM; flag p > 0.5. Every constant the
paper does not publish (l_sens, h_sens, τ, ε, the target rule, the SS grid, restarts, seed) is a parameter.

Known limits, kept on purpose because this is the reference (measured in the early detector probe): on the toy
LLaVA AIC picked K* = 5 in 136 of 144 fits, SS then ranks arbitrary minorities, content heads (prompt
template, image class) outvote the trigger heads, and image-trigger F1 was 0.04–0.36; there is no guard, so it
flags samples on clean data too (hundreds of 1,500 on the synthetic clean controls here). Use TCAPPlusDetector
for decisions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

import numpy as np

from poisonguard.detect.base import (
    DetectionResult,
    Detector,
    check_choice,
    check_float,
    check_int,
)
from poisonguard.detect.em import DawidSkene, dawid_skene, dawid_skene_posterior
from poisonguard.detect.features import FeatureSet
from poisonguard.detect.gmm import GMMParams
from poisonguard.detect.profile import ColumnProfile, mixture_from_state, mixture_state, profile_columns
from poisonguard.detect.separation import TARGET_RULES, target_posterior
from poisonguard.detect.transforms import MinMax, fit_minmax

CRITERIA = ("aic", "bic")


@dataclass(frozen=True)
class MixtureVoteParams:
    """Settings shared by the mixture-and-vote detectors (TCAP, TCAP+)."""

    tau: float = 0.5  # vote = target posterior > tau (unpublished)
    eps: float = 1e-6  # SS = 1 / (overlap + eps) (unpublished)
    target_rule: str = "cumulative"  # how the minority group is formed (unpublished; see separation.py)
    n_grid: int = 4001  # SS integration grid on the min-max normalised axis
    grid_lo: float = -0.5
    grid_hi: float = 1.5
    n_init: int = 2  # GMM restarts: equal-mass segments, then k-means++ seeds
    seed: int = 0
    gmm_tol: float = 1e-5
    gmm_max_iter: int = 300
    reg_covar: float = 1e-6
    em_max_iter: int = 100
    em_tol: float = 1e-6
    em_smoothing: float = 1.0  # Laplace pseudo-count of the Dawid–Skene confusion matrices

    def __post_init__(self) -> None:
        check_float("tau", self.tau, 0.0, 1.0)
        check_float("eps", self.eps, 0.0, open_lo=True)
        check_choice("target_rule", self.target_rule, TARGET_RULES)
        check_int("n_grid", self.n_grid, 2)
        check_float("grid_lo", self.grid_lo, hi=0.0)
        check_float("grid_hi", self.grid_hi, 1.0)
        check_int("n_init", self.n_init, 1)
        check_int("seed", self.seed, 0)
        check_float("gmm_tol", self.gmm_tol, 0.0)
        check_int("gmm_max_iter", self.gmm_max_iter, 1)
        check_float("reg_covar", self.reg_covar, 0.0)
        check_int("em_max_iter", self.em_max_iter, 1)
        check_float("em_tol", self.em_tol, 0.0)
        check_float("em_smoothing", self.em_smoothing, 0.0)

    def profile(self, xn: np.ndarray, k_max: int, criterion: str) -> ColumnProfile:
        return profile_columns(
            xn,
            k_max=k_max,
            criterion=criterion,
            target_rule=self.target_rule,
            eps=self.eps,
            grid_lo=self.grid_lo,
            grid_hi=self.grid_hi,
            n_grid=self.n_grid,
            n_init=self.n_init,
            seed=self.seed,
            tol=self.gmm_tol,
            max_iter=self.gmm_max_iter,
            reg_covar=self.reg_covar,
        )

    def dawid_skene(self, votes: np.ndarray, mask: np.ndarray | None = None) -> DawidSkene:
        return dawid_skene(
            votes, mask, max_iter=self.em_max_iter, tol=self.em_tol, smoothing=self.em_smoothing
        )


@dataclass(frozen=True)
class TCAPParams(MixtureVoteParams):
    l_sens: int = 4  # candidate heads: the last l_sens layers (unpublished; 8–16 of 32 layers suggested)
    h_sens: int = 6  # voters: the top h_sens candidate heads by SS (unpublished)
    k_max: int = 5  # K = 1..k_max
    criterion: str = "aic"  # as published; "bic" is offered for comparison

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("l_sens", self.l_sens, 1)
        check_int("h_sens", self.h_sens, 1)
        check_int("k_max", self.k_max, 1)
        check_choice("criterion", self.criterion, CRITERIA)


class TCAPDetector(Detector):
    """Faithful TCAP on `alloc` (fine-tuned model only)."""

    name = "tcap"
    Params = TCAPParams
    params: TCAPParams

    def fit(self, features: FeatureSet) -> Self:
        features.require("alloc")
        p = self.params
        n, n_layers, n_heads, _ = features.alloc.shape
        if p.l_sens > n_layers:
            raise ValueError(f"l_sens={p.l_sens} exceeds the number of layers ({n_layers})")
        x = features.alloc[..., 0].reshape(n, n_layers * n_heads).astype(np.float64)  # (N, L·H) α_sys
        scaler = fit_minmax(x)
        prof = p.profile(scaler.transform(x), p.k_max, p.criterion)

        layer = np.arange(n_layers * n_heads) // n_heads
        candidate = (layer >= n_layers - p.l_sens) & (prof.ss > 0)
        ranked = np.flatnonzero(candidate)[np.argsort(-prof.ss[candidate], kind="stable")]
        chosen = ranked[: p.h_sens]  # flat head indices, best SS first
        sel = prof.take(chosen)

        report: dict[str, Any] = {
            "shape": [n_layers, n_heads],
            "candidate_layers": list(range(n_layers - p.l_sens, n_layers)),
            "selected_heads": np.stack((chosen // n_heads, chosen % n_heads), axis=1).reshape(-1, 2),
            "k_star": prof.params.k.reshape(n_layers, n_heads),
            "ss": prof.ss.reshape(n_layers, n_heads),
            "target_weight": prof.target_weight.reshape(n_layers, n_heads),
            "tau": p.tau,
            "flag_threshold": 0.5,
        }
        fitted: dict[str, Any] = {
            "columns": chosen,
            "low": scaler.low[chosen],
            "span": scaler.span[chosen],
            "mixture": mixture_state(sel.params, sel.target),
            "report": report,
        }
        if chosen.size:
            votes = self._votes(
                x[:, chosen], MinMax(scaler.low[chosen], scaler.span[chosen]), sel.params, sel.target
            )
            ds = p.dawid_skene(votes)
            fitted["em"] = {"prior": ds.prior, "sensitivity": ds.sensitivity, "specificity": ds.specificity}
            report["em"] = {
                **fitted["em"],
                "n_iter": ds.n_iter,
                "converged": ds.converged,
                "log_likelihood": ds.log_likelihood,
            }
        else:
            report["note"] = f"no head with K* > 1 in the last {p.l_sens} layers: nothing can be flagged"
        self._fitted = fitted
        return self

    def score(self, features: FeatureSet) -> DetectionResult:
        st = self._state()
        features.require("alloc")
        n_layers, n_heads = (int(v) for v in st["report"]["shape"])
        if features.alloc.shape[1:3] != (n_layers, n_heads):
            raise ValueError(
                f"alloc has {features.alloc.shape[1:3]} layers×heads, fitted on {(n_layers, n_heads)}"
            )
        n = features.n
        cols = np.asarray(st["columns"], dtype=np.int64).reshape(-1)
        if cols.size == 0:
            p_poison, vote_frac = np.zeros(n), np.zeros(n)
        else:
            x = features.alloc[..., 0].reshape(n, -1)[:, cols].astype(np.float64)
            params, target = mixture_from_state(st["mixture"], self.params.k_max)
            votes = self._votes(x, MinMax(np.asarray(st["low"]), np.asarray(st["span"])), params, target)
            em = st["em"]
            p_poison = dawid_skene_posterior(votes, em["prior"], em["sensitivity"], em["specificity"])
            vote_frac = votes.mean(axis=1)
        flagged = p_poison > 0.5
        return self._result(features, p_poison, flagged, {"vote_tcap": vote_frac}, **st["report"])

    def _votes(self, x: np.ndarray, scaler: MinMax, params: GMMParams, target: np.ndarray) -> np.ndarray:
        """(N, h) hard votes: posterior mass on the head's target group > τ."""
        return (target_posterior(scaler.transform(x), params, target) > self.params.tau).astype(np.float64)
