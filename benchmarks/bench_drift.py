"""Per-sample drift spectra: the batched float32 eigenproblem against the per-sample float64 SVD it replaced.

    python benchmarks/bench_drift.py                  # 32 samples × 576 tokens × D = 4096 (LLaVA-1.5-7B)
    python benchmarks/bench_drift.py --quick          # 32 × 144 × 1024, seconds on a laptop
    python benchmarks/bench_drift.py --device cuda    # the batched pass on a GPU (the reference stays on the CPU)

The drift pass of the projector audit reduces each sample's ΔE (T tokens × D) to its top direction, its
energy spectrum and the norm-law r (`poisonguard.audit.activations.drift_spectra`). Synthetic ΔE here is a
rank-1 drift holding a random share of the energy plus noise, as ProjLens describes real ones. Both
formulations run in this one process on the same data; the bench prints both times, their ratio and the
largest differences in the results.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from poisonguard.audit.activations import drift_spectra, drift_spectra_float64


def synthetic_drift(b: int, t: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(B·T, D) float32-valued ΔE rows, (B·T,) ‖E0_t‖ and the per-sample lengths (all T)."""
    g = torch.Generator().manual_seed(seed)
    norms = 1.0 + torch.rand(b, t, generator=g)  # (B, T)
    v = torch.nn.functional.normalize(torch.randn(b, 1, d, generator=g), dim=-1)  # (B, 1, D)
    strength = 0.5 + 2.0 * torch.rand(b, 1, 1, generator=g)
    delta = strength * norms[..., None] * v + 0.1 * torch.randn(b, t, d, generator=g)  # (B, T, D)
    return delta.reshape(b * t, d).double(), norms.reshape(-1).double(), [t] * b


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(b: int, t: int, d: int, *, device: str = "cpu", threads: int = 2, seed: int = 0) -> dict:
    torch.set_num_threads(threads)
    dev = torch.device(device)
    print(f"poisonguard bench_drift: {b} samples × {t} tokens × D={d}, batched pass on {dev}; torch "
          f"{torch.__version__}, {threads} thread(s), {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    delta, norms, lengths = synthetic_drift(b, t, d, seed)
    t0 = time.perf_counter()
    ref = drift_spectra_float64(delta, lengths, norms, 4)
    t_ref = time.perf_counter() - t0

    delta_d, norms_d = delta.to(dev), norms.to(dev)
    drift_spectra(delta_d[: 2 * t], lengths[:2], norms_d[: 2 * t], 4)  # warm-up (kernels, CUDA context)
    _sync(dev)
    t0 = time.perf_counter()
    new = drift_spectra(delta_d, lengths, norms_d, 4)
    _sync(dev)
    t_new = time.perf_counter() - t0

    cos = np.abs((new[0].astype(np.float64) * ref[0]).sum(1))
    d_energy = np.nanmax(np.abs(new[1] - ref[1]))
    d_r = np.nanmax(np.abs(new[2] - ref[2]))
    print(f"per-sample float64 SVD (CPU): {t_ref:.2f} s; batched float32 ({dev}): {t_new:.2f} s; "
          f"old/new time ratio ×{t_ref / t_new:.1f}")
    print(f"agreement: min |cos| of top directions {cos.min():.7f}, max |Δ energy share| {d_energy:.1e}, "
          f"max |Δ image r| {d_r:.1e}")
    return {"reference_s": t_ref, "batched_s": t_new, "ratio": t_ref / t_new, "min_abs_cos": float(cos.min()),
            "max_abs_denergy": float(d_energy), "max_abs_dr": float(d_r)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="32 samples × 144 tokens × D = 1024")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=None, help="tokens per sample (default 576; 144 with --quick)")
    ap.add_argument("--dim", type=int, default=None, help="LM hidden size D (default 4096; 1024 with --quick)")
    ap.add_argument("--device", default="cpu", help="where the batched pass runs: cpu, cuda or cuda:N")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    run(args.samples, args.tokens or (144 if args.quick else 576), args.dim or (1024 if args.quick else 4096),
        device=args.device, threads=args.threads, seed=args.seed)


if __name__ == "__main__":
    main()
