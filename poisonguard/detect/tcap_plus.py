"""TCAP+: TCAP's profile-and-vote design with the fixes the early probes found, each switchable so its effect
can be measured, and a guard that keeps it from culling clean data.

Per-head features: fine-tuned minus base-model allocation coordinates (`differencing`: a backdoor appears only
after fine-tuning, template and image content are already in the base model), robust z-scores within prompt
strata (`strata_standardise`), asinh-compressed tails (`compress_tails`) and log-ratio shares as separate 1-D
features (`space`, `full_allocation`). A feature qualifies with K* > 1 by `criterion`, a criterion gain, a
minority weight and a standardised separation; a head votes when any of its qualified features does (one
head, one annotator), and a head that agrees with no other source is pruned. `extra_scores` (e.g. projector
drift) vote by robust z > `extra_z`. Binary Dawid–Skene EM fuses the votes.
The guard (`guard`) flags only a real, consistent minority: enough annotators, agreeing, a prior and flag rate
in range, positive votes concentrated on the flagged samples (`min_lift`). It is decided at `fit` and carries
over to `score`; it cannot tell a consistent clean minority from poison (differencing and strata must).
Why each option exists and where each constant comes from, with the measurements: docs/detectors.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import pandas as pd

from poisonguard.detect.base import (
    DetectionResult,
    Detector,
    check_bool,
    check_choice,
    check_float,
    check_int,
)
from poisonguard.detect.em import dawid_skene_posterior
from poisonguard.detect.features import FeatureSet
from poisonguard.detect.profile import ColumnProfile, mixture_from_state, mixture_state
from poisonguard.detect.separation import target_posterior
from poisonguard.detect.tcap import CRITERIA, MixtureVoteParams
from poisonguard.detect.transforms import (
    SPACES,
    MinMax,
    RobustScaler,
    allocation_coordinates,
    fit_minmax,
    fit_robust_scaler,
    robust_location_scale,
)

_COORD_NAMES = {
    ("share", True): ["sys", "vis", "txt"],
    ("share", False): ["sys"],
    ("alr", True): ["log(vis/sys)", "log(txt/sys)"],
    ("alr", False): ["logit(sys)"],
}


@dataclass(frozen=True)
class TCAPPlusParams(MixtureVoteParams):
    # features
    differencing: bool = True
    space: str = "alr"
    full_allocation: bool = True
    strata_standardise: bool = True
    min_stratum_size: int = 20
    compress_tails: bool = True
    share_floor: float = 1e-6
    # head selection
    l_sens: int | None = None
    h_sens: int | None = None
    k_max: int = 2
    criterion: str = "bic"
    min_criterion_gain: float = 10.0
    min_weight: float = 0.005
    max_weight: float = 0.4
    min_separation: float = 1.5
    prune_lone_heads: bool = True
    # extra annotators: the projector-drift scores (`FeatureSet.extra_scores`), read only when fused
    fuse_projector: bool = False
    extra_z: float = 3.0
    extra_log: bool = True
    # clean-data guard
    guard: bool = True
    min_sources: int = 2
    min_agreement: float = 0.2
    min_prior: float = 0.002
    max_prior: float = 0.35
    min_lift: float = 3.0

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in (
            "differencing",
            "full_allocation",
            "strata_standardise",
            "compress_tails",
            "prune_lone_heads",
            "extra_log",
            "fuse_projector",
            "guard",
        ):
            check_bool(name, getattr(self, name))
        check_choice("space", self.space, SPACES)
        check_int("min_stratum_size", self.min_stratum_size, 2)
        check_float("share_floor", self.share_floor, 0.0, 0.1, open_lo=True)
        for name in ("l_sens", "h_sens"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), 1)
        check_int("k_max", self.k_max, 2)
        check_choice("criterion", self.criterion, CRITERIA)
        check_float("min_criterion_gain", self.min_criterion_gain, 0.0)
        check_float("min_weight", self.min_weight, 0.0, 0.5)
        check_float("max_weight", self.max_weight, 0.0, 0.5)
        if self.min_weight >= self.max_weight:
            raise ValueError(f"min_weight ({self.min_weight}) must be < max_weight ({self.max_weight})")
        check_float("min_separation", self.min_separation, 0.0)
        check_float("extra_z", self.extra_z, 0.0)
        check_int("min_sources", self.min_sources, 1)
        check_float("min_agreement", self.min_agreement, -1.0, 1.0)
        check_float("min_prior", self.min_prior, 0.0, 1.0)
        check_float("max_prior", self.max_prior, 0.0, 1.0)
        if self.min_prior >= self.max_prior:
            raise ValueError(f"min_prior ({self.min_prior}) must be < max_prior ({self.max_prior})")
        check_float("min_lift", self.min_lift, 1.0)  # 1 = votes land on the flagged samples at random


class TCAPPlusDetector(Detector):
    """Base-differenced, stratum-standardised, multi-coordinate TCAP with extra annotators and a guard."""

    name = "tcap_plus"
    Params = TCAPPlusParams
    params: TCAPPlusParams

    # --- fit ------------------------------------------------------------------------------------------------

    def fit(self, features: FeatureSet) -> Self:
        p = self.params
        x, (n_layers, n_heads, n_coords) = self._coordinates(features)  # (N, F), F = L·H·C
        if p.l_sens is not None and p.l_sens > n_layers:
            raise ValueError(f"l_sens={p.l_sens} exceeds the number of layers ({n_layers})")
        notes: list[str] = []
        strata = features.strata if p.strata_standardise else None
        if p.strata_standardise and strata is None:
            notes.append("strata_standardise: FeatureSet has no strata; standardised globally")

        n_feat = x.shape[1]
        grid = (n_layers, n_heads, n_coords)
        head_of = np.arange(n_feat) // n_coords  # flat head index l·H + h of each feature
        cand = np.flatnonzero(np.arange(n_feat) // (n_heads * n_coords) >= n_layers - (p.l_sens or n_layers))
        scaler = fit_robust_scaler(x[:, cand], strata, p.min_stratum_size)
        z = self._squash(scaler.transform(x[:, cand], strata))
        mm = fit_minmax(z)
        zn = mm.transform(z)  # (N, F_cand) in [0, 1]
        prof = p.profile(zn, p.k_max, p.criterion)
        qualified = (
            (prof.params.k > 1)
            & (prof.criterion_gain >= p.min_criterion_gain)
            & (prof.target_weight >= p.min_weight)
            & (prof.target_weight <= p.max_weight)
            & (prof.separation >= p.min_separation)
        )  # (F_cand,)

        extra = self._fit_extras(features)
        ex_votes, ex_mask, _ = self._extra_votes(features, extra)
        q = np.flatnonzero(qualified)
        heads, pruned, sel = self._select_heads(zn, prof, q, head_of[cand], ex_votes, ex_mask)
        feature_head = np.searchsorted(heads, head_of[cand[sel]]) if heads.size else np.zeros(0, np.int64)
        order = np.argsort(
            -np.array([prof.ss[sel][feature_head == i].max() for i in range(heads.size)]), kind="stable"
        )  # heads by best SS, for the report
        head_votes = _head_votes(
            (target_posterior(zn[:, sel], prof.params.take(sel), prof.target[sel]) > p.tau).astype(float),
            feature_head,
            heads.size,
        )

        votes = np.hstack((head_votes, ex_votes))  # (N, A) annotators: heads, then extra scores
        mask = np.hstack((np.ones_like(head_votes), ex_mask))
        report: dict[str, Any] = {
            "shape": list(grid),
            "coordinates": _COORD_NAMES[(p.space, p.full_allocation)],
            "k_star": _to_grid(prof.params.k.astype(float), cand, grid),
            "separation": _to_grid(prof.separation, cand, grid),
            "target_weight": _to_grid(prof.target_weight, cand, grid),
            "qualified": _to_grid(qualified.astype(float), cand, grid),
            "ss": _max_over_coords(_to_grid(prof.ss, cand, grid)),
            "selected_heads": _head_pairs(heads[order], n_heads),
            "pruned_heads": _head_pairs(pruned, n_heads),
            "extra_annotators": {
                nm: {"center": c, "scale": sc, "log": lg, "threshold_z": p.extra_z}
                for nm, c, sc, lg in zip(extra["names"], extra["center"], extra["scale"], extra["log"])
            },
            "tau": p.tau,
            "flag_threshold": 0.5,
            "notes": notes,
        }
        fitted: dict[str, Any] = {
            "columns": cand[sel],
            "feature_head": feature_head,
            "n_selected_heads": int(heads.size),
            "scaler": _scaler_state(scaler.take(sel)),
            "low": mm.low[sel],
            "span": mm.span[sel],
            "mixture": mixture_state(prof.params.take(sel), prof.target[sel]),
            "extra": extra,
            "report": report,
        }
        if votes.shape[1]:
            ds = p.dawid_skene(votes, mask)
            fitted["em"] = {"prior": ds.prior, "sensitivity": ds.sensitivity, "specificity": ds.specificity}
            report["em"] = {
                **fitted["em"],
                "annotators": [f"L{l}H{h}" for l, h in _head_pairs(heads, n_heads)] + list(extra["names"]),
                "n_iter": ds.n_iter,
                "converged": ds.converged,
                "log_likelihood": ds.log_likelihood,
            }
            guard = self._guard(votes, mask, ds.p, ds.prior, heads.size)
        else:
            notes.append("no qualified head and no extra score: nothing can be flagged")
            guard = {"enabled": p.guard, "passed": False, "reasons": ["no annotators"]}
        report["guard"] = guard
        fitted["guard_passed"] = bool(guard["passed"]) or not p.guard
        self._fitted = fitted
        return self

    def _select_heads(
        self,
        zn: np.ndarray,
        prof: ColumnProfile,
        q: np.ndarray,
        head_of: np.ndarray,
        ex_votes: np.ndarray,
        ex_mask: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Qualified features q → kept heads (sorted flat indices), pruned lone heads, kept features.

        `head_of` maps each profiled feature to its flat head index.
        """
        p = self.params
        heads = np.unique(head_of[q])
        votes = (target_posterior(zn[:, q], prof.params.take(q), prof.target[q]) > p.tau).astype(float)
        head_votes = _head_votes(votes, np.searchsorted(heads, head_of[q]), heads.size)
        keep = np.ones(heads.size, dtype=bool)
        if p.prune_lone_heads and heads.size + ex_votes.shape[1] >= 2:
            corr = _vote_correlation(
                np.hstack((head_votes, ex_votes)), np.hstack((np.ones_like(head_votes), ex_mask))
            )
            np.fill_diagonal(corr, np.nan)
            best = np.where(np.isnan(corr), -np.inf, corr).max(axis=1)[: heads.size]
            keep = best >= p.min_agreement  # a trigger moves several heads on the same samples
        if p.h_sens is not None:
            head_ss = np.array([prof.ss[q][head_of[q] == h].max() for h in heads])
            ranked = np.flatnonzero(keep)[np.argsort(-head_ss[keep], kind="stable")]
            keep = np.isin(np.arange(heads.size), ranked[: p.h_sens])
        sel = q[np.isin(head_of[q], heads[keep])]
        return heads[keep], heads[~keep], sel

    # --- score ----------------------------------------------------------------------------------------------

    def score(self, features: FeatureSet) -> DetectionResult:
        st = self._state()
        p = self.params
        x, shape = self._coordinates(features)
        if list(shape) != [int(v) for v in st["report"]["shape"]]:
            raise ValueError(f"features give layers×heads×coords {shape}, fitted on {st['report']['shape']}")
        n = features.n
        cols = np.asarray(st["columns"], dtype=np.int64).reshape(-1)
        fh = np.asarray(st["feature_head"], dtype=np.int64).reshape(-1)
        n_heads_sel = int(st["n_selected_heads"])
        if cols.size:
            strata = features.strata if p.strata_standardise else None
            z = self._squash(_scaler_from_state(st["scaler"], cols.size).transform(x[:, cols], strata))
            zn = MinMax(np.asarray(st["low"]), np.asarray(st["span"])).transform(z)
            params, target = mixture_from_state(st["mixture"], p.k_max)
            fv = (target_posterior(zn, params, target) > p.tau).astype(float)
            head_votes = _head_votes(fv, fh, n_heads_sel)
        else:
            head_votes = np.zeros((n, 0))
        ex_votes, ex_mask, ex_z = self._extra_votes(features, st["extra"])
        votes = np.hstack((head_votes, ex_votes))
        mask = np.hstack((np.ones_like(head_votes), ex_mask))
        if votes.shape[1]:
            em = st["em"]
            p_poison = dawid_skene_posterior(votes, em["prior"], em["sensitivity"], em["specificity"], mask)
        else:
            p_poison = np.zeros(n)
        flagged = (p_poison > 0.5) & bool(st["guard_passed"])
        signals = {"vote_tcap_plus": head_votes.mean(1) if head_votes.shape[1] else np.zeros(n)}
        for j, name in enumerate(_names(st["extra"])):
            signals[f"vote_{name}"] = np.where(ex_mask[:, j] > 0, ex_votes[:, j], np.nan)
            signals[f"score_{name}"] = ex_z[:, j]
        return self._result(features, p_poison, flagged, signals, **st["report"])

    # --- pieces ---------------------------------------------------------------------------------------------

    def _coordinates(self, features: FeatureSet) -> tuple[np.ndarray, tuple[int, int, int]]:
        """(N, L·H·C) per-head coordinates, base-differenced when asked; and (L, H, C)."""
        p = self.params
        features.require("alloc", *(["alloc_base"] if p.differencing else []))
        c = allocation_coordinates(features.alloc, p.space, p.full_allocation, p.share_floor)  # (N, L, H, C)
        if p.differencing:
            c = c - allocation_coordinates(features.alloc_base, p.space, p.full_allocation, p.share_floor)
        n, n_layers, n_heads, n_coords = c.shape
        return c.reshape(n, -1), (n_layers, n_heads, n_coords)

    def _squash(self, z: np.ndarray) -> np.ndarray:
        return np.arcsinh(z) if self.params.compress_tails else z

    def _fit_extras(self, features: FeatureSet) -> dict[str, Any]:
        """Per extra score: whether to take logs, and the robust centre and scale of the fitting data."""
        names = sorted(features.extra_scores) if self.params.fuse_projector else []
        logs, centers, scales = [], [], []
        for name in names:
            s = features.extra_scores[name]
            finite = s[np.isfinite(s)]
            use_log = self.params.extra_log and finite.size > 0 and bool(np.all(finite > 0))
            c, sc = robust_location_scale(np.log(finite) if use_log else finite)
            logs.append(use_log)
            centers.append(c)
            scales.append(sc)
        return {"names": names, "log": logs, "center": centers, "scale": scales}

    def _extra_votes(self, features: FeatureSet, extra: dict[str, Any]) -> tuple[np.ndarray, ...]:
        """Votes, mask and robust z (N, E) of the extra scores under the fitted cuts."""
        names = _names(extra)
        n = features.n
        missing = [nm for nm in names if nm not in features.extra_scores]
        if missing:
            raise ValueError(f"extra_scores {missing} were used at fit and are missing now")
        votes, mask, zs = (
            np.zeros((n, len(names))),
            np.zeros((n, len(names))),
            np.full((n, len(names)), np.nan),
        )
        for j, name in enumerate(names):
            s = features.extra_scores[name]
            ok = np.isfinite(s)
            if bool(extra["log"][j]):
                ok &= s > 0  # fitted on log scores: a non-positive score has no log and abstains
            t = np.log(np.where(ok, s, 1.0)) if bool(extra["log"][j]) else np.where(ok, s, 0.0)
            z = (t - float(extra["center"][j])) / float(extra["scale"][j])
            zs[:, j] = np.where(ok, z, np.nan)
            votes[:, j] = ok & (z > self.params.extra_z)
            mask[:, j] = ok
        return votes, mask, zs

    def _guard(
        self, votes: np.ndarray, mask: np.ndarray, post: np.ndarray, prior: float, n_heads: int
    ) -> dict[str, Any]:
        """Is the EM's poison class a real, consistent minority? (the guard of the module docstring)"""
        p = self.params
        flagged = post > 0.5
        corr = _vote_correlation(votes, mask)
        upper = corr[np.triu_indices(corr.shape[0], 1)]
        agreement = float(np.nanmean(upper)) if np.isfinite(upper).any() else float("nan")
        cast = votes * mask
        concentration = float(cast[flagged].sum() / cast.sum()) if cast.sum() > 0 else 0.0
        flag_rate = float(flagged.mean())
        lift = concentration / flag_rate if flag_rate > 0 else 0.0  # 1.0: votes land on flagged at random
        n_src = votes.shape[1]
        checks = [
            (n_src >= p.min_sources, f"annotators {n_src} < min_sources {p.min_sources}"),
            (agreement >= p.min_agreement, f"agreement {agreement:.3f} < min_agreement {p.min_agreement}"),
            (
                p.min_prior <= prior <= p.max_prior,
                f"prior {prior:.4f} outside [{p.min_prior}, {p.max_prior}]",
            ),
            (
                p.min_prior <= flag_rate <= p.max_prior,
                f"flag rate {flag_rate:.4f} outside [{p.min_prior}, {p.max_prior}]",
            ),
            (
                lift >= p.min_lift,
                f"vote lift {lift:.2f} (share {concentration:.3f} at flag rate {flag_rate:.3f}) < min_lift {p.min_lift}",
            ),
        ]
        reasons = [msg for ok, msg in checks if not ok]
        return {
            "enabled": p.guard,
            "passed": not reasons,
            "thresholds": {
                "min_sources": p.min_sources,
                "min_agreement": p.min_agreement,
                "prior_range": [p.min_prior, p.max_prior],
                "min_lift": p.min_lift,
            },
            "reasons": reasons,
            "n_annotators": int(n_src),
            "n_head_annotators": int(n_heads),
            "agreement": agreement,
            "prior": prior,
            "flag_rate_before_guard": flag_rate,
            "concentration": concentration,
            "lift": lift,
        }


def _head_votes(feature_votes: np.ndarray, feature_head: np.ndarray, n_heads: int) -> np.ndarray:
    """(N, F) feature votes → (N, n_heads) head votes: 1 where any of the head's features votes 1."""
    out = np.zeros((feature_votes.shape[0], n_heads))
    for h in range(n_heads):
        out[:, h] = feature_votes[:, feature_head == h].max(axis=1)
    return out


def _vote_correlation(votes: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(A, A) Pearson correlation of annotators' votes over the samples both voted on (NaN if undefined)."""
    return pd.DataFrame(np.where(mask > 0, votes, np.nan)).corr(min_periods=3).to_numpy(copy=True)


def _to_grid(values: np.ndarray, cand: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Scatter per-candidate-feature values to an (L, H, C) grid, NaN for features not profiled."""
    out = np.full(int(np.prod(shape)), np.nan)
    out[cand] = values
    return out.reshape(shape)


def _max_over_coords(grid: np.ndarray) -> np.ndarray:
    """(L, H, C) → (L, H) maximum over a head's coordinates; NaN where the head was not profiled."""
    filled = np.where(np.isnan(grid), -np.inf, grid).max(axis=2)
    return np.where(np.isfinite(filled), filled, np.nan)


def _head_pairs(flat_heads: np.ndarray, n_heads: int) -> np.ndarray:
    return np.stack((flat_heads // n_heads, flat_heads % n_heads), axis=1).reshape(-1, 2)


def _names(extra: dict[str, Any]) -> list[str]:
    return [str(v) for v in np.asarray(extra["names"]).reshape(-1)]


def _scaler_state(s: RobustScaler) -> dict[str, Any]:
    return {
        "strata": s.strata,
        "center": s.center,
        "scale": s.scale,
        "global_center": s.global_center,
        "global_scale": s.global_scale,
    }


def _scaler_from_state(st: dict[str, Any], n_feat: int) -> RobustScaler:
    strata = np.asarray(st["strata"], dtype=np.int64).reshape(-1)
    shape = (strata.size, n_feat)
    return RobustScaler(
        strata,
        np.asarray(st["center"], dtype=np.float64).reshape(shape),
        np.asarray(st["scale"], dtype=np.float64).reshape(shape),
        np.asarray(st["global_center"], dtype=np.float64).reshape(n_feat),
        np.asarray(st["global_scale"], dtype=np.float64).reshape(n_feat),
    )


@dataclass(frozen=True)
class FusedParams(TCAPPlusParams):
    fuse_projector: bool = True


class FusedDetector(TCAPPlusDetector):
    """TCAP+ whose Dawid–Skene vote also counts the projector-drift scores as annotators."""

    name = "fused"
    Params = FusedParams
    params: FusedParams
