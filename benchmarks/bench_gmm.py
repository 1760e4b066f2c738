"""Batched 1-D GMM profiling (poisonguard.detect.gmm) against a per-head sklearn loop.

    python benchmarks/bench_gmm.py                 # 100,000 samples × 1,024 heads, K = 1..5, on the CPU
    python benchmarks/bench_gmm.py --quick         # 10,000 × 64, for a smoke run
    python benchmarks/bench_gmm.py --device cuda   # the same fit on a GPU, checked against a CPU fit

Goals for the full size (issue 15): ≤ 30 s on 2 CPU cores, ≤ 5 s on one H100/H200. With `--device` other
than cpu the bench also fits `--check-heads` evenly spaced heads on the CPU and prints the largest
difference in log-likelihood per sample and the K* agreement between the two devices.

Synthetic heads look like TCAP's min-max normalised α_sys: each column is a mixture of 1–3 Gaussians with
random weights, means and widths, rescaled to [0, 1]. The batched fit runs on every head; sklearn's
`GaussianMixture` (its defaults: k-means init, n_init 1, tol 1e-3) runs on an evenly spaced subset of heads
and its time is extrapolated to all heads. Agreement (K* by AIC and BIC, log-likelihood per sample) is
measured on that subset. Everything is measured in this one run.

On a busy machine set OMP_WAIT_POLICY=PASSIVE: with every core taken, torch's spinning OpenMP workers made
2 threads 4× slower than 1 in development runs.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

from poisonguard.detect.gmm import GMMFit, fit_gmm_1d, resolve_device

KS = (1, 2, 3, 4, 5)


def synthetic_heads(n: int, m: int, seed: int) -> np.ndarray:
    """(n, m) float32 columns, each a 1–3 component Gaussian mixture min-max normalised to [0, 1]."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, m), dtype=np.float32)
    for j in range(m):
        k = rng.integers(1, 4)
        w = rng.dirichlet(np.full(k, 2.0))
        comp = rng.choice(k, size=n, p=w)
        means, sds = rng.uniform(0.1, 0.9, k), rng.uniform(0.02, 0.1, k)
        col = rng.normal(means[comp], sds[comp])
        x[:, j] = (col - col.min()) / (col.max() - col.min())
    return x


def sklearn_loop(
    x: np.ndarray, heads: np.ndarray, seed: int
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Seconds, and per head × K: mean log-likelihood per sample, AIC, BIC."""
    ll, aic, bic = (np.empty((heads.size, len(KS))) for _ in range(3))
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for i, j in enumerate(heads):
            col = x[:, [j]].astype(np.float64)
            for c, k in enumerate(KS):
                g = GaussianMixture(k, random_state=seed).fit(col)
                ll[i, c], aic[i, c], bic[i, c] = g.score(col), g.aic(col), g.bic(col)
    return time.perf_counter() - t0, ll, aic, bic


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """This script's options (bench_speed.py reuses them)."""
    ap.add_argument("--quick", action="store_true", help="10,000 samples × 64 heads")
    ap.add_argument("--n", type=int, default=None, help="samples (default 100,000; 10,000 with --quick)")
    ap.add_argument("--m", type=int, default=None, help="heads (default 1,024; 64 with --quick)")
    ap.add_argument("--sk-heads", type=int, default=8, help="heads fitted with sklearn (timed, extrapolated)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="where the batched fit runs: cpu, cuda, cuda:N or auto")
    ap.add_argument("--check-heads", type=int, default=64,
                    help="heads refitted on the CPU to check a non-CPU device's results")


def _goal(n: int, m: int, seconds: float, device: torch.device) -> str:
    if n < 100_000 or m < 1024:
        return ""
    limit = 30 if device.type == "cpu" else 5
    where = "2-core" if device.type == "cpu" else "H100/H200"
    return f"  [{'meets' if seconds <= limit else 'misses'} the {limit} s {where} goal]"


def _timed_fit(x: np.ndarray, seed: int, device: torch.device) -> tuple[GMMFit, float, float]:
    """The fit, its wall seconds (GPU work synchronised) and CPU seconds."""
    if device.type == "cuda":  # warm-up: CUDA context and kernels, not counted
        fit_gmm_1d(x[:2048, :8], KS, seed=seed, device=device)
        torch.cuda.synchronize(device)
    t0, c0 = time.perf_counter(), time.process_time()
    fit = fit_gmm_1d(x, KS, seed=seed, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return fit, time.perf_counter() - t0, time.process_time() - c0


def check_against_cpu(x: np.ndarray, fit: GMMFit, heads: np.ndarray, seed: int) -> dict:
    """Refit `heads` on the CPU and compare with the device fit: max |Δ log-likelihood| per sample, K* match."""
    ref = fit_gmm_1d(x[:, heads], KS, seed=seed, device="cpu")
    d = np.abs(fit.loglik[heads] - ref.loglik) / x.shape[0]
    same_k = float(np.mean(fit.k_star("bic")[heads] == ref.k_star("bic")))
    print(f"device vs CPU on {heads.size} heads: max |Δ loglik| per sample {d.max():.1e}, K* (BIC) match {same_k:.0%}")
    return {"max_abs_dloglik_per_sample": float(d.max()), "k_bic_match": same_k}


def run(n: int, m: int, *, sk_heads: int = 8, threads: int = 2, seed: int = 0, device: str = "cpu",
        check_heads: int = 64) -> dict:
    """Time the batched fit on (n, m) synthetic heads on `device` and a sklearn loop on `sk_heads` of them
    (0: none); print the comparison; return the numbers."""
    torch.set_num_threads(threads)
    dev = resolve_device(device)
    print(f"poisonguard bench_gmm: N={n:,} samples × M={m:,} heads, K={KS[0]}..{KS[-1]}, device {dev}"
          + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""))
    print(
        f"torch {torch.__version__}, {threads} thread(s), {os.cpu_count()} CPUs, "
        f"load average at start {os.getloadavg()[0]:.2f}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}"
    )
    t0 = time.perf_counter()
    x = synthetic_heads(n, m, seed)
    print(f"synthetic features: {time.perf_counter() - t0:.1f} s")

    fit, t_batched, cpu_batched = _timed_fit(x, seed, dev)
    print(
        f"batched GMM (all {m} heads) on {dev}: {t_batched:.1f} s wall{_goal(n, m, t_batched, dev)}; "
        f"{cpu_batched:.1f} s CPU (all threads), load average now {os.getloadavg()[0]:.2f}"
    )
    out = {"n": n, "m": m, "threads": threads, "device": str(dev), "batched_s": t_batched}
    if dev.type != "cpu" and check_heads > 0:
        out |= check_against_cpu(x, fit, np.unique(np.linspace(0, m - 1, min(check_heads, m)).round().astype(int)), seed)
    if sk_heads <= 0:
        return out

    heads = np.unique(np.linspace(0, m - 1, min(sk_heads, m)).round().astype(int))
    t_sk, ll_sk, aic_sk, bic_sk = sklearn_loop(x, heads, seed)
    t_sk_all = t_sk * m / heads.size
    print(
        f"sklearn loop: {t_sk:.1f} s for {heads.size} heads (measured) → {t_sk_all:.0f} s for {m} heads "
        f"(extrapolated ×{m / heads.size:.0f}); speed-up ×{t_sk_all / t_batched:.0f}"
    )

    ll_b = fit.loglik[heads] / n  # (h, nK) per sample
    d = ll_b - ll_sk
    k_aic = np.asarray(KS)[np.argmin(aic_sk, 1)]
    k_bic = np.asarray(KS)[np.argmin(bic_sk, 1)]
    print(f"agreement on the {heads.size} sklearn heads:")
    print(
        f"  K* by AIC match: {np.mean(fit.k_star('aic')[heads] == k_aic):.0%}   "
        f"(batched {fit.k_star('aic')[heads].tolist()}, sklearn {k_aic.tolist()})"
    )
    print(
        f"  K* by BIC match: {np.mean(fit.k_star('bic')[heads] == k_bic):.0%}   "
        f"(batched {fit.k_star('bic')[heads].tolist()}, sklearn {k_bic.tolist()})"
    )
    print(
        "  log-likelihood per sample, batched − sklearn, by K: "
        + ", ".join(
            f"K={k}: mean {d[:, c].mean():+.1e} max|.| {np.abs(d[:, c]).max():.1e}" for c, k in enumerate(KS)
        )
    )
    print(f"  fits where batched ≥ sklearn − 1e-4: {np.mean(d >= -1e-4):.0%}")
    for i in np.flatnonzero(fit.k_star("bic")[heads] != k_bic):
        kb = int(fit.k_star("bic")[heads[i]])
        print(
            f"  head {heads[i]}: batched K*={kb}, sklearn K*={k_bic[i]}; at K={kb} sklearn's fit is "
            f"{d[i, kb - 1]:.1e} nats/sample below batched's (a worse local optimum)"
            if d[i, kb - 1] > 1e-4
            else f"  head {heads[i]}: K* differs with equal fits at K={kb}"
        )
    k_all = fit.k_star("aic")
    print(
        "K* by AIC over all heads (batched): "
        + ", ".join(f"{k}: {np.sum(k_all == k)}" for k in KS)
        + f"; EM not converged in {int((~fit.converged[:, 1:]).sum())} of {m * (len(KS) - 1)} fits"
    )
    return out | {"sklearn_s_extrapolated": t_sk_all, "sklearn_heads": int(heads.size),
                  "k_aic_match": float(np.mean(fit.k_star("aic")[heads] == k_aic))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    args = ap.parse_args()
    run(args.n or (10_000 if args.quick else 100_000), args.m or (64 if args.quick else 1024),
        sk_heads=args.sk_heads, threads=args.threads, seed=args.seed, device=args.device,
        check_heads=args.check_heads)


if __name__ == "__main__":
    main()
