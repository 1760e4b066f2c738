"""Binary Dawid–Skene EM: fuse noisy per-annotator votes into P(poison) per sample.

TCAP fuses its sensitive heads this way, each head an annotator with its own 2×2 confusion matrix; the same
model fuses heads with other label-free signals (projector drift votes), which did best in the early detector
probe. Model: z_i ~ Bernoulli(ρ); annotator a votes 1 with probability s_a (sensitivity) if z_i = 1
and 1 − t_a (t_a = specificity) if z_i = 0, independently given z_i.

Votes may be missing (mask 0: the annotator abstains on that sample, e.g. an image-only score on a text-only
sample). Soft votes v in (0, 1) are accepted as fractional counts (log-odds linear in v); that is exact only
at 0 and 1 and, with every vote soft, EM can drift to a degenerate fit, so the detectors pass hard votes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import expit

_CLIP = 1e-12


@dataclass(frozen=True)
class DawidSkene:
    p: np.ndarray  # (N,) posterior P(z_i = 1 | votes)
    prior: float  # ρ
    sensitivity: np.ndarray  # (A,)
    specificity: np.ndarray  # (A,)
    log_likelihood: float  # marginal log-likelihood of the votes under the final parameters
    n_iter: int
    converged: bool


def dawid_skene(
    votes: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    max_iter: int = 100,
    tol: float = 1e-6,
    smoothing: float = 1.0,
    init: str = "majority",
) -> DawidSkene:
    """Fit the binary Dawid–Skene model to votes (N, A) in [0, 1].

    init "majority": p⁰_i = 1 if more than half of the sample's (unmasked) votes are 1, ½ on a tie, else 0;
    "mean": p⁰_i = the mean vote. The first M-step then reads annotator quality off that consensus, which
    fixes the orientation (z = 1 is the side the votes call 1). `smoothing` is a Laplace pseudo-count added to
    each cell of every confusion matrix and to the prior. Stops when max |Δp| < tol.
    """
    v, mk = _check_votes(votes, mask)
    if max_iter < 1 or tol < 0 or smoothing < 0:
        raise ValueError("need max_iter >= 1, tol >= 0, smoothing >= 0")
    n_votes = mk.sum(axis=1)
    frac = np.divide((v * mk).sum(axis=1), n_votes, out=np.full(v.shape[0], 0.5), where=n_votes > 0)
    if init == "majority":
        p = np.where(frac > 0.5, 1.0, np.where(frac < 0.5, 0.0, 0.5))
    elif init == "mean":
        p = frac
    else:
        raise ValueError(f"init must be 'majority' or 'mean', got {init!r}")

    converged, it = False, 0
    for it in range(1, max_iter + 1):
        prior, sens, spec = _m_step(v, mk, p, smoothing)
        p_new, _ = _e_step(v, mk, prior, sens, spec)
        delta = float(np.max(np.abs(p_new - p))) if p.size else 0.0
        p = p_new
        if delta < tol:
            converged = True
            break
    prior, sens, spec = _m_step(v, mk, p, smoothing)
    p, ll = _e_step(v, mk, prior, sens, spec)
    return DawidSkene(p, prior, sens, spec, ll, it, converged)


def dawid_skene_posterior(
    votes: np.ndarray,
    prior: float,
    sensitivity: np.ndarray,
    specificity: np.ndarray,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """(N,) P(z = 1 | votes) under fixed parameters: scores new samples with a fitted model."""
    v, mk = _check_votes(votes, mask)
    sens, spec = np.asarray(sensitivity, dtype=np.float64), np.asarray(specificity, dtype=np.float64)
    if sens.shape != (v.shape[1],) or spec.shape != (v.shape[1],):
        raise ValueError(f"need one sensitivity and specificity per annotator ({v.shape[1]})")
    return _e_step(v, mk, float(prior), sens, spec)[0]


def _check_votes(votes: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    v = np.asarray(votes, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] == 0:
        raise ValueError(f"votes must be (N, A) with A >= 1, got shape {v.shape}")
    mk = np.ones_like(v) if mask is None else np.asarray(mask, dtype=np.float64)
    if mk.shape != v.shape:
        raise ValueError(f"mask shape {mk.shape} != votes shape {v.shape}")
    v = np.where(mk > 0, v, 0.0)  # masked cells may hold NaN
    if not np.all(np.isfinite(v)) or v.min(initial=0.0) < 0 or v.max(initial=0.0) > 1:
        raise ValueError("votes must be finite and in [0, 1] where unmasked")
    return v, mk


def _m_step(v: np.ndarray, mk: np.ndarray, p: np.ndarray, a: float) -> tuple[float, np.ndarray, np.ndarray]:
    """Prior, sensitivities and specificities (A,) from the current posteriors, with pseudo-count a."""
    pos, neg = p[:, None] * mk, (1.0 - p)[:, None] * mk  # (N, A) responsibility mass seen by each annotator
    sens = ((pos * v).sum(0) + a) / (pos.sum(0) + 2 * a)
    spec = ((neg * (1.0 - v)).sum(0) + a) / (neg.sum(0) + 2 * a)
    prior = (p.sum() + a) / (p.size + 2 * a)
    clip = (_CLIP, 1.0 - _CLIP)
    return float(np.clip(prior, *clip)), np.clip(sens, *clip), np.clip(spec, *clip)


def _e_step(
    v: np.ndarray, mk: np.ndarray, prior: float, sens: np.ndarray, spec: np.ndarray
) -> tuple[np.ndarray, float]:
    """Posterior (N,) and marginal log-likelihood of the votes."""
    log_pos = np.log(prior) + (mk * (v * np.log(sens) + (1 - v) * np.log1p(-sens))).sum(1)  # (N,)
    log_neg = np.log1p(-prior) + (mk * (v * np.log1p(-spec) + (1 - v) * np.log(spec))).sum(1)
    ll = float(np.logaddexp(log_pos, log_neg).sum())
    return expit(log_pos - log_neg), ll
