"""Per-column (head / feature) mixture profile: GMM over K, K* by an information criterion, TCAP's
target/background split, and the separation statistics used to rank and filter heads.

Shared by TCAP and TCAP+; the columns are min-max normalised first (TCAP's per-head normalisation), which
also fixes the axis on which SS is integrated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from poisonguard.detect.gmm import GMMParams, fit_gmm_1d
from poisonguard.detect.separation import (
    group_weight,
    overlap,
    separation_score,
    standardised_separation,
    target_mask,
)


@dataclass(frozen=True)
class ColumnProfile:
    params: GMMParams  # the K* fit of each column, components sorted by mean
    target: np.ndarray  # (M, Kmax) bool, target (minority) components
    target_weight: np.ndarray  # (M,) weight of the target group
    ss: np.ndarray  # (M,) TCAP separation score (0 when K* = 1 or no proper minority)
    separation: np.ndarray  # (M,) standardised mean separation of target vs background
    criterion_gain: np.ndarray  # (M,) criterion(K = 1) − criterion(K*), ≥ 0

    def take(self, columns: np.ndarray) -> ColumnProfile:
        return ColumnProfile(
            self.params.take(columns),
            self.target[columns],
            self.target_weight[columns],
            self.ss[columns],
            self.separation[columns],
            self.criterion_gain[columns],
        )


def profile_columns(
    xn: np.ndarray,
    *,
    k_max: int,
    criterion: str,
    target_rule: str,
    eps: float,
    grid_lo: float,
    grid_hi: float,
    n_grid: int,
    n_init: int,
    seed: int,
    tol: float,
    max_iter: int,
    reg_covar: float,
    device: str | None = None,
) -> ColumnProfile:
    """Profile every column of min-max normalised features xn (N, M); the GMM fits run on `device` (None:
    the CPU; see `fit_gmm_1d`)."""
    fit = fit_gmm_1d(
        xn, range(1, k_max + 1), n_init=n_init, max_iter=max_iter, tol=tol, reg_covar=reg_covar, seed=seed,
        device=device,
    )
    params = fit.select(criterion)
    crit = fit.criterion(criterion)  # (M, nK)
    target = target_mask(params, target_rule)
    ov = overlap(params, target, grid_lo, grid_hi, n_grid)
    return ColumnProfile(
        params=params,
        target=target,
        target_weight=group_weight(params, target),
        ss=separation_score(params, target, ov, eps),
        separation=standardised_separation(params, target),
        criterion_gain=crit[:, 0] - crit.min(axis=1),
    )


def mixture_state(params: GMMParams, target: np.ndarray) -> dict[str, Any]:
    """The fitted mixtures of the kept columns, as arrays for a detector's JSON state."""
    return {
        "weights": params.weights,
        "means": params.means,
        "variances": params.variances,
        "k": params.k,
        "target": target,
    }


def mixture_from_state(state: dict[str, Any], k_max: int) -> tuple[GMMParams, np.ndarray]:
    """Inverse of `mixture_state` (shapes survive an empty selection)."""
    shape = (-1, k_max)
    params = GMMParams(
        np.asarray(state["weights"], dtype=np.float64).reshape(shape),
        np.asarray(state["means"], dtype=np.float64).reshape(shape),
        np.asarray(state["variances"], dtype=np.float64).reshape(shape),
        np.asarray(state["k"], dtype=np.int64).reshape(-1),
    )
    return params, np.asarray(state["target"], dtype=bool).reshape(shape)
