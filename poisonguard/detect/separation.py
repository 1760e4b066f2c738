"""TCAP's target/background split of a head's mixture, its separation score, and per-sample target mass.

TCAP splits the K* components of a head by mixture weight into a minority "target" group G_t (the suspected
backdoor mode) and a majority "background" group G_b. The paper does not publish the split rule; "cumulative"
(the default, the early probes' choice) takes components in ascending weight while the running weight stays
below 1/2, "smallest" takes the single lightest component. Because the split goes by weight and not by
direction, both of TCAP's anomalies (system share up or down) can be the target.

SS = 1 / (∫ min(f_T, f_B) dx + ε) with f_T, f_B the *weighted* (not renormalised) sub-mixture densities, so
two identical groups give overlap = the smaller group's weight. Heads with K* = 1 (or no proper minority) get
SS 0.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from poisonguard.detect.gmm import GMMParams, posterior

TARGET_RULES = ("cumulative", "smallest")
# Bound on elements of one (columns, grid, K) tensor: 2**23 float64 = 64 MiB.
_MAX_ELEMENTS = 2**23


def target_mask(params: GMMParams, rule: str = "cumulative") -> np.ndarray:
    """(M, Kmax) bool: the target (minority) components of each column's mixture.

    Empty for K* = 1, and for "cumulative" also when the lightest component already weighs ≥ 1/2.
    """
    if rule not in TARGET_RULES:
        raise ValueError(f"rule must be one of {TARGET_RULES}, got {rule!r}")
    valid = params.valid
    w = np.where(valid, params.weights, np.inf)  # padded slots sort last and never join
    order = np.argsort(w, axis=1, kind="stable")  # (M, Kmax) ascending weight
    w_sorted = np.take_along_axis(w, order, axis=1)
    if rule == "cumulative":
        in_sorted = np.cumsum(w_sorted, axis=1) < 0.5
    else:
        in_sorted = np.zeros_like(valid)
        in_sorted[:, 0] = True
    in_sorted &= np.take_along_axis(valid, order, axis=1)
    mask = np.zeros_like(valid)
    np.put_along_axis(mask, order, in_sorted, axis=1)
    mask[params.k < 2] = False
    return mask


def group_weight(params: GMMParams, target: np.ndarray) -> np.ndarray:
    """(M,) total mixture weight of the target group."""
    return np.where(target, params.weights, 0.0).sum(axis=1)


def overlap(
    params: GMMParams,
    target: np.ndarray,
    lo: float | np.ndarray = -0.5,
    hi: float | np.ndarray = 1.5,
    n_grid: int = 4001,
) -> np.ndarray:
    """(M,) ∫ min(f_T, f_B) dx by the trapezoid rule on `n_grid` points over [lo, hi] (scalars or (M,)).

    The default range is TCAP's min-max normalised axis [0, 1] padded by half its width on each side.
    """
    m, k_max = params.weights.shape
    lo_a = np.broadcast_to(np.asarray(lo, dtype=np.float64), (m,)).copy()
    hi_a = np.broadcast_to(np.asarray(hi, dtype=np.float64), (m,)).copy()
    if n_grid < 2 or np.any(hi_a <= lo_a):
        raise ValueError("need n_grid >= 2 and hi > lo")
    t = torch.linspace(0.0, 1.0, n_grid, dtype=torch.float64)  # (G,)
    background = params.valid & ~target
    out = np.empty(m)
    chunk = max(1, _MAX_ELEMENTS // (n_grid * k_max))
    for s in range(0, m, chunk):
        sl = slice(s, min(m, s + chunk))
        lo_t, hi_t = torch.as_tensor(lo_a[sl]), torch.as_tensor(hi_a[sl])
        grid = lo_t[:, None] + (hi_t - lo_t)[:, None] * t  # (c, G)
        w, mu, var = (torch.as_tensor(a[sl]) for a in (params.weights, params.means, params.variances))
        z = (grid[:, :, None] - mu[:, None, :]) ** 2 / var[:, None, :]  # (c, G, K)
        dens = w[:, None, :] * torch.exp(-0.5 * z) / torch.sqrt(2.0 * math.pi * var[:, None, :])  # (c, G, K)
        f_t = (dens * torch.as_tensor(target[sl])[:, None, :]).sum(-1)  # (c, G)
        f_b = (dens * torch.as_tensor(background[sl])[:, None, :]).sum(-1)
        out[sl] = torch.trapezoid(torch.minimum(f_t, f_b), grid, dim=-1).numpy()
    return out


def separation_score(params: GMMParams, target: np.ndarray, ov: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """(M,) SS = 1 / (overlap + ε); 0 where K* = 1 or the split has an empty side."""
    has_both = target.any(axis=1) & (params.valid & ~target).any(axis=1)
    return np.where(has_both, 1.0 / (ov + eps), 0.0)


def standardised_separation(params: GMMParams, target: np.ndarray) -> np.ndarray:
    """(M,) |μ_T − μ_B| / sqrt((σ_T² + σ_B²) / 2) from the two sub-mixtures' means and variances.

    Scale-free, unlike SS on a fixed grid: a split of one skewed or heavy-tailed bulk into two overlapping
    components scores low, a shifted mode scores high (the content-head filter of the early probes).
    0 where a side is empty.
    """
    background = params.valid & ~target
    moments = [_group_moments(params, g) for g in (target, background)]
    (w_t, mu_t, var_t), (w_b, mu_b, var_b) = moments
    d = np.abs(mu_t - mu_b) / np.sqrt(np.maximum(0.5 * (var_t + var_b), 1e-300))
    return np.where((w_t > 0) & (w_b > 0), d, 0.0)


def target_posterior(x: np.ndarray, params: GMMParams, target: np.ndarray) -> np.ndarray:
    """(N, M) posterior mass on the target group, r_i = Σ_{k∈G_t} γ_ik (TCAP step 5)."""
    return (posterior(x, params) * target[None, :, :]).sum(axis=-1)


def _group_moments(params: GMMParams, group: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weight, mean and variance (M,) of the sub-mixture of `group` components (renormalised)."""
    w = np.where(group, params.weights, 0.0)
    tot = w.sum(axis=1)
    safe = np.where(tot > 0, tot, 1.0)
    mean = (w * params.means).sum(axis=1) / safe
    second = (w * (params.variances + params.means**2)).sum(axis=1) / safe
    return tot, mean, np.maximum(second - mean**2, 0.0)
