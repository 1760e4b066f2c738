"""Batched 1-D Gaussian mixtures: one EM run for many columns (heads, features) and restarts at once.

Why: TCAP profiles every attention head with K = 1..5 component GMMs and keeps the K* of lowest AIC
(research/papers.md §1(a) step 3). A Python loop of sklearn fits took 4–5 s for 16 heads × 5 K on 3,600 samples
in the detector probe; at 1,000+ heads × 100,000 samples it does not fit the budget (DESIGN.md §9). Here every
column and every restart of one K is a single tensor problem.

How. A component's log-density is quadratic in x, log(w φ(x; μ, σ²)) = [1, x, x²] · c, so the E-step is one
batched matmul (columns, points, 3) @ (columns, 3, K) and the M-step's sufficient statistics another. Fitting
runs in two stages:

1. Compressed EM. Each (standardised) column is sorted and cut into `n_blocks` blocks (half the cuts at equal
   counts, half at the widest gaps) that keep their exact count, mean and mean square. EM runs on the blocks with one responsibility per block: the E-step
   scores a block by its *expected* component log-density (a lower bound on the blocks' exact log-likelihood),
   the M-step uses the blocks' exact moments, so every iteration still raises that bound. Equal-count blocks
   are narrow where data are dense, so narrow modes keep their resolution; gap cuts keep separated modes apart. With N ≤ n_blocks a block is one
   sample and this *is* exact EM.
2. Exact finish (only when blocks held several samples). `polish_iter` EM iterations on the raw samples from
   the best compressed solution, then the exact log-likelihood, which is what AIC and BIC use.

Columns are standardised internally (GMMs are affine-equivariant; parameters and log-likelihoods are mapped
back), and `reg_covar` is added to every variance in the caller's units, as sklearn does.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

_DTYPE = torch.float64
# Bound on elements of one (columns, samples, K) tensor in the exact stage: 2**24 float64 = 128 MiB.
_MAX_ELEMENTS = 2**24
_LOG_2PI = math.log(2.0 * math.pi)


@dataclass(frozen=True)
class GMMParams:
    """One mixture per column, zero-padded to `k_max` components (padding: weight 0, mean 0, variance 1).

    Components of each column are sorted by mean; `k[j]` of them are real.
    """

    weights: np.ndarray  # (M, Kmax)
    means: np.ndarray  # (M, Kmax)
    variances: np.ndarray  # (M, Kmax)
    k: np.ndarray  # (M,) int

    @property
    def n_columns(self) -> int:
        return int(self.weights.shape[0])

    @property
    def k_max(self) -> int:
        return int(self.weights.shape[1])

    @property
    def valid(self) -> np.ndarray:
        """(M, Kmax) bool: which padded slots are real components."""
        return np.arange(self.k_max)[None, :] < self.k[:, None]

    def take(self, columns: np.ndarray) -> GMMParams:
        """The mixtures of the given columns, in that order."""
        return GMMParams(self.weights[columns], self.means[columns], self.variances[columns], self.k[columns])


@dataclass(frozen=True)
class GMMFit:
    """Fits of every column for every candidate K.

    Parameters are (M, nK, Kmax) with the K-th fit zero-padded beyond its K components; `loglik` is the total
    log-likelihood of the column's N samples under that fit (sklearn's `score(X) * N`).
    """

    ks: tuple[int, ...]
    weights: np.ndarray  # (M, nK, Kmax)
    means: np.ndarray  # (M, nK, Kmax)
    variances: np.ndarray  # (M, nK, Kmax)
    loglik: np.ndarray  # (M, nK)
    n_iter: np.ndarray  # (M, nK) EM iterations of the kept restart (0 for K = 1, closed form)
    converged: np.ndarray  # (M, nK) bool
    n_samples: int

    @property
    def n_params(self) -> np.ndarray:
        """(nK,) free parameters of a 1-D K-mixture: K means, K variances, K − 1 weights."""
        return 3 * np.asarray(self.ks) - 1

    @property
    def aic(self) -> np.ndarray:
        return -2.0 * self.loglik + 2.0 * self.n_params[None, :]  # (M, nK)

    @property
    def bic(self) -> np.ndarray:
        return -2.0 * self.loglik + math.log(self.n_samples) * self.n_params[None, :]  # (M, nK)

    def criterion(self, name: str) -> np.ndarray:
        if name == "aic":
            return self.aic
        if name == "bic":
            return self.bic
        raise ValueError(f"criterion must be 'aic' or 'bic', got {name!r}")

    def best_index(self, criterion: str = "aic") -> np.ndarray:
        """(M,) index into `ks` of the lowest criterion (ties: the smaller K)."""
        return np.argmin(self.criterion(criterion), axis=1)

    def k_star(self, criterion: str = "aic") -> np.ndarray:
        return np.asarray(self.ks)[self.best_index(criterion)]

    def select(self, criterion: str = "aic") -> GMMParams:
        """The K* fit of every column."""
        idx = self.best_index(criterion)
        rows = np.arange(self.weights.shape[0])
        return GMMParams(
            self.weights[rows, idx], self.means[rows, idx], self.variances[rows, idx], self.k_star(criterion)
        )

    def at(self, k: int) -> GMMParams:
        """The K = k fit of every column."""
        i = self.ks.index(k)
        return GMMParams(
            self.weights[:, i], self.means[:, i], self.variances[:, i], np.full(self.weights.shape[0], k)
        )


def fit_gmm_1d(
    x: np.ndarray,
    ks: Iterable[int] = (1, 2, 3, 4, 5),
    *,
    n_init: int = 2,
    max_iter: int = 300,
    tol: float = 1e-5,
    reg_covar: float = 1e-6,
    n_blocks: int = 2048,
    polish_iter: int = 0,
    seed: int = 0,
    chunk_size: int | None = None,
) -> GMMFit:
    """Fit 1-D Gaussian mixtures with each K in `ks` to every column of `x` (N, M).

    Restart 0 starts from K equal-count segments of the sorted data (deterministic); restarts 1.. start from
    k-means++ seeds drawn from uniforms that a generator seeded by `seed` makes per (column, restart, K), so
    results do not depend on how columns are chunked. The restart with the highest
    compressed log-likelihood bound is kept. EM stops for a column when the mean log-likelihood per sample
    moves less than `tol` (sklearn's `tol` is 1e-3 on the same quantity).
    """
    X = np.asarray(x, dtype=np.float64)
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2:
        raise ValueError(f"x must be (N,) or (N, M), got shape {X.shape}")
    n, m = X.shape
    ks_t = tuple(sorted({int(k) for k in ks}))
    if not ks_t or ks_t[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks_t}")
    if n < 2 or ks_t[-1] > n:
        raise ValueError(f"need N >= max(2, max K); got N={n}, ks={ks_t}")
    if not np.all(np.isfinite(X)):
        raise ValueError("x contains NaN or inf")
    if n_init < 1 or max_iter < 1 or polish_iter < 0 or n_blocks < 2 or tol < 0 or reg_covar < 0:
        raise ValueError(
            "n_init, max_iter, n_blocks must be >= 1 (n_blocks >= 2); polish_iter, tol, reg_covar >= 0"
        )

    k_max, n_k = ks_t[-1], len(ks_t)
    weights = np.zeros((m, n_k, k_max))
    means = np.zeros((m, n_k, k_max))
    variances = np.ones((m, n_k, k_max))
    loglik = np.zeros((m, n_k))
    n_iter = np.zeros((m, n_k), dtype=np.int64)
    converged = np.zeros((m, n_k), dtype=bool)

    gen = torch.Generator().manual_seed(seed)
    uniforms = {k: torch.rand(m, n_init - 1, k, generator=gen, dtype=_DTYPE) for k in ks_t}  # k-means++ draws
    chunk = chunk_size or max(1, _MAX_ELEMENTS // (n * k_max))
    for start in range(0, m, chunk):
        cols = slice(start, min(m, start + chunk))
        res = _fit_chunk(
            torch.from_numpy(np.ascontiguousarray(X[:, cols].T)),
            ks_t,
            {k: u[cols] for k, u in uniforms.items()},
            n_init=n_init,
            max_iter=max_iter,
            tol=tol,
            reg_covar=reg_covar,
            n_blocks=n_blocks,
            polish_iter=polish_iter,
        )
        for i, (w, mu, var, ll, it, conv) in enumerate(res):
            k = ks_t[i]
            weights[cols, i, :k], means[cols, i, :k], variances[cols, i, :k] = w, mu, var
            loglik[cols, i], n_iter[cols, i], converged[cols, i] = ll, it, conv
    return GMMFit(ks_t, weights, means, variances, loglik, n_iter, converged, n)


def component_log_density(x: np.ndarray, params: GMMParams) -> np.ndarray:
    """(N, M, Kmax) log(w_k φ(x; μ_k, σ_k²)) per sample, column and component; −inf for padded slots."""
    xt = torch.as_tensor(np.asarray(x, dtype=np.float64).T)  # (M, N)
    valid = torch.as_tensor(params.valid)  # (M, Kmax)
    w = torch.as_tensor(params.weights).masked_fill(
        ~valid, 1.0
    )  # padded slots: finite stand-ins, masked below
    coef = _coefficients(w, torch.as_tensor(params.means), torch.as_tensor(params.variances))
    lp = torch.bmm(coef, _features(xt))  # (M, Kmax, N)
    lp = lp.masked_fill(~valid[:, :, None], -math.inf)
    return lp.permute(2, 0, 1).numpy()


def posterior(x: np.ndarray, params: GMMParams) -> np.ndarray:
    """(N, M, Kmax) responsibilities; padded slots get 0."""
    lp = torch.as_tensor(component_log_density(x, params))
    return torch.softmax(lp, dim=-1).numpy()


def log_likelihood(x: np.ndarray, params: GMMParams) -> np.ndarray:
    """(N, M) log-density of each sample under its column's mixture."""
    return torch.logsumexp(torch.as_tensor(component_log_density(x, params)), dim=-1).numpy()


# --- kernels (torch, float64; columns first) ---------------------------------------------------------------
# Layouts: point features (C, 3, P); per-component log-densities (C, K, P), so reductions over the few
# components run across long contiguous rows instead of over a tiny innermost axis.


def _features(x: torch.Tensor) -> torch.Tensor:
    """(C, P) values → (C, 3, P) [1, x, x²]."""
    return torch.stack((torch.ones_like(x), x, x * x), dim=1)


def _coefficients(w: torch.Tensor, mu: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """(C, K) parameters → (C, K, 3) coefficients c with log(w φ(x)) = c · [1, x, x²]."""
    a = torch.log(w) - 0.5 * (_LOG_2PI + torch.log(var)) - mu * mu / (2.0 * var)
    return torch.stack((a, mu / var, -0.5 / var), dim=-1)


def _m_step(
    stats: torch.Tensor, n: float, reg: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sufficient statistics (C, K, 3) = Σ r·[1, x, x²] → weights, means, variances (C, K)."""
    nk = stats[..., 0] + 10.0 * torch.finfo(stats.dtype).eps  # keeps empty components finite (as sklearn)
    mu = stats[..., 1] / nk
    var = (stats[..., 2] / nk - mu * mu).clamp_min(0.0) + reg[:, None]
    return nk / nk.sum(-1, keepdim=True), mu, var


def _normalise(lp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, K, P) log-joint → log-likelihood (C, P) and responsibilities (C, K, P)."""
    top = lp.amax(1, keepdim=True)  # (C, 1, P)
    e = torch.exp(lp - top)
    s = e.sum(1)  # (C, P)
    return top[:, 0] + torch.log(s), e / s[:, None]


def _log_lik(feats: torch.Tensor, w: torch.Tensor, mu: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """(C, 3, P) point features → (C, P) log-likelihood of each point (a lower bound for blocks)."""
    lp = torch.bmm(_coefficients(w, mu, var), feats)  # (C, K, P)
    top = lp.amax(1)
    return top + torch.log(torch.exp(lp - top[:, None]).sum(1))


def _e_step(
    feats: torch.Tensor, counts: torch.Tensor | None, w: torch.Tensor, mu: torch.Tensor, var: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """→ per-point log-likelihood (bound) (C, P) and count-weighted sufficient statistics (C, K, 3)."""
    lse, r = _normalise(torch.bmm(_coefficients(w, mu, var), feats))  # (C, P), (C, K, P)
    if counts is not None:
        r = r * counts[:, None, :]
    return lse, torch.bmm(r, feats.transpose(1, 2))  # (C, K, 3)


def _total(lse: torch.Tensor, counts: torch.Tensor | None) -> torch.Tensor:
    return (lse if counts is None else lse * counts).sum(-1)  # (C,)


def _em(
    feats: torch.Tensor,
    counts: torch.Tensor | None,
    n: float,
    w: torch.Tensor,
    mu: torch.Tensor,
    var: torch.Tensor,
    reg: torch.Tensor,
    *,
    max_iter: int,
    tol: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """EM on (C, 3, P) point features until each column's mean log-likelihood moves < tol.

    Converged columns are dropped from the working set, so late iterations only pay for slow columns.
    Returns parameters (C, K) ×3, iterations (C,) and converged (C,).
    """
    c = feats.shape[0]
    w, mu, var = w.clone(), mu.clone(), var.clone()
    prev = torch.full((c,), -math.inf, dtype=feats.dtype)
    n_iter = torch.zeros(c, dtype=torch.long)
    conv = torch.zeros(c, dtype=torch.bool)
    active = torch.arange(c)
    f, cnt, r = feats, counts, reg
    for _ in range(max_iter):
        lse, stats = _e_step(f, cnt, w[active], mu[active], var[active])
        cur = _total(lse, cnt) / n  # (a,)
        w[active], mu[active], var[active] = _m_step(stats, n, r)
        n_iter[active] += 1
        done = (cur - prev[active]).abs() < tol
        prev[active] = cur
        if done.any():
            conv[active[done]] = True
            keep = ~done
            active, f, r = active[keep], f[keep], r[keep]
            cnt = None if cnt is None else cnt[keep]
            if active.numel() == 0:
                break
    return w, mu, var, n_iter, conv


def _blocks(zs: torch.Tensor, n_blocks: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sorted columns (C, N) → block features (C, 3, P) of [1, mean, mean square] and counts (C, P).

    Half the boundaries cut the column into equal-count runs (fine where data are dense), half sit at the
    column's widest gaps between consecutive values, so no block straddles two separated modes (a block's
    samples share one responsibility) and sparse tails break into small blocks. Coinciding boundaries leave
    empty blocks, which carry no weight. Returns the samples themselves (counts None) when N ≤ n_blocks.
    """
    c, n = zs.shape
    if n <= n_blocks:
        return _features(zs), None
    n_even = n_blocks // 2
    even = torch.div(torch.arange(n_even + 1) * n, n_even, rounding_mode="floor")  # (P/2+1,) from 0 to N
    at_gaps = (zs[:, 1:] - zs[:, :-1]).topk(n_blocks - n_even, dim=1).indices + 1  # (C, P/2) block starts
    edges = torch.cat((even.expand(c, -1), at_gaps), dim=1).sort(dim=1).values  # (C, P+1)
    counts = (edges[:, 1:] - edges[:, :-1]).to(zs.dtype)  # (C, P)
    zero = torch.zeros(c, 1, dtype=zs.dtype)
    s1 = torch.cat((zero, zs.cumsum(1)), 1)  # (C, N+1)
    s2 = torch.cat((zero, (zs * zs).cumsum(1)), 1)
    safe = counts.clamp_min(1.0)
    mean = (s1.gather(1, edges[:, 1:]) - s1.gather(1, edges[:, :-1])) / safe  # (C, P)
    meansq = (s2.gather(1, edges[:, 1:]) - s2.gather(1, edges[:, :-1])) / safe
    meansq = torch.maximum(
        meansq, mean * mean
    )  # cumsum rounding must not give a negative within-block variance
    return torch.stack((torch.ones_like(mean), mean, meansq), dim=1), counts


def _init_from_assignment(
    feats: torch.Tensor, counts: torch.Tensor | None, onehot: torch.Tensor, n: float, reg: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hard assignment (C, K, P) → moment estimates; empty components get weight 1/n, unit variance."""
    r = onehot if counts is None else onehot * counts[:, None, :]
    stats = torch.bmm(r, feats.transpose(1, 2))  # (C, K, 3)
    w, mu, var = _m_step(stats, n, reg)
    empty = stats[..., 0] < 0.5
    if empty.any():
        w = torch.where(empty, torch.full_like(w, 1.0 / n), w)
        w = w / w.sum(-1, keepdim=True)
        var = torch.where(empty, torch.ones_like(var), var)
    return w, mu, var


def _quantile_init(
    feats: torch.Tensor, counts: torch.Tensor | None, k: int, n: float, reg: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """K contiguous equal-mass segments of the sorted points (points are sorted in every column)."""
    cnt = torch.ones_like(feats[:, 1]) if counts is None else counts  # (C, P)
    mid = cnt.cumsum(1) - 0.5 * cnt  # (C, P) mass before each point's centre
    seg = torch.clamp((mid / n * k).long(), max=k - 1)
    onehot = torch.nn.functional.one_hot(seg, k).transpose(1, 2).to(feats.dtype)  # (C, K, P)
    return _init_from_assignment(feats, counts, onehot, n, reg)


def _kmeanspp_init(
    feats: torch.Tensor,
    counts: torch.Tensor | None,
    k: int,
    n: float,
    reg: torch.Tensor,
    u: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """k-means++ seeding (D²-weighted by point mass) with uniforms u (C, K), then nearest-centre assignment."""
    x = feats[:, 1]  # (C, P)
    mass = torch.ones_like(x) if counts is None else counts
    centres = x.gather(1, _draw(mass, u[:, :1]))  # (C, 1)
    d2 = (x - centres) ** 2
    for j in range(1, k):
        prob = mass * d2
        prob = torch.where(prob.sum(1, keepdim=True) > 0, prob, mass)  # all points on centres: draw uniformly
        c_new = x.gather(1, _draw(prob, u[:, j : j + 1]))
        centres = torch.cat((centres, c_new), 1)
        d2 = torch.minimum(d2, (x - c_new) ** 2)
    nearest = (x[..., None] - centres[:, None, :]).abs().argmin(-1)  # (C, P)
    onehot = torch.nn.functional.one_hot(nearest, k).transpose(1, 2).to(feats.dtype)  # (C, K, P)
    w, mu, var = _init_from_assignment(feats, counts, onehot, n, reg)
    empty = w <= 1.0 / n
    return w, torch.where(empty, centres, mu), var


def _draw(prob: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One index per row (C, 1) with probability ∝ prob (C, P), by inverting the CDF at u (C, 1)."""
    cdf = prob.cumsum(1)
    idx = torch.searchsorted(cdf, u * cdf[:, -1:])
    return idx.clamp_max(prob.shape[1] - 1)


def _fit_chunk(
    xt: torch.Tensor,
    ks: tuple[int, ...],
    uniforms: dict[int, torch.Tensor],
    *,
    n_init: int,
    max_iter: int,
    tol: float,
    reg_covar: float,
    n_blocks: int,
    polish_iter: int,
) -> list[tuple[np.ndarray, ...]]:
    """Columns (m, N) → per K: weights, means, variances (m, K) sorted by mean, loglik, n_iter, converged."""
    xt = xt.to(_DTYPE)
    m, n = xt.shape
    loc = xt.mean(1)  # (m,)
    scale = xt.std(1, correction=0)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    z = (xt - loc[:, None]) / scale[:, None]  # (m, N)
    reg = reg_covar / scale**2  # (m,) the variance floor in standardised units
    bfeats, bcounts = _blocks(torch.sort(z, dim=1).values, n_blocks)  # (m, 3, P), (m, P) | None
    exact = bcounts is not None  # blocks hold several samples: finish on the raw samples
    zfeats = _features(z) if exact else bfeats

    out = []
    for k in ks:
        if k == 1:  # closed form
            v = (z * z).mean(1) - z.mean(1) ** 2  # (m,)
            w, mu, var = torch.ones(m, 1, dtype=_DTYPE), z.mean(1)[:, None], (v + reg)[:, None]
            it, conv = torch.zeros(m, dtype=torch.long), torch.ones(m, dtype=torch.bool)
            ll_z = -0.5 * n * (_LOG_2PI + torch.log(v + reg) + v / (v + reg))
        else:
            starts = [_quantile_init(bfeats, bcounts, k, n, reg)]
            starts += [
                _kmeanspp_init(bfeats, bcounts, k, n, reg, uniforms[k][:, r]) for r in range(n_init - 1)
            ]
            w0, mu0, var0 = (torch.cat([s[i] for s in starts], 0) for i in range(3))  # (R·m, K)
            feats_r = bfeats.repeat(n_init, 1, 1)  # restarts stacked as extra columns
            counts_r = None if bcounts is None else bcounts.repeat(n_init, 1)
            reg_r = reg.repeat(n_init)
            w, mu, var, it, conv = _em(feats_r, counts_r, n, w0, mu0, var0, reg_r, max_iter=max_iter, tol=tol)
            bound = _total(_log_lik(feats_r, w, mu, var), counts_r)  # (R·m,)
            best = bound.view(n_init, m).argmax(0)  # (m,) the restart with the highest bound
            pick = best * m + torch.arange(m)
            w, mu, var, it, conv = w[pick], mu[pick], var[pick], it[pick], conv[pick]
            if exact and polish_iter > 0:
                w, mu, var, _, _ = _em(zfeats, None, n, w, mu, var, reg, max_iter=polish_iter, tol=0.0)
            ll_z = _log_lik(zfeats, w, mu, var).sum(-1)
        ll = ll_z - n * torch.log(scale)  # back to the caller's units
        order = mu.argsort(1)
        w, mu, var = w.gather(1, order), mu.gather(1, order), var.gather(1, order)
        mu = loc[:, None] + scale[:, None] * mu
        var = var * scale[:, None] ** 2
        out.append(tuple(t.numpy() for t in (w, mu, var, ll, it, conv)))
    return out
