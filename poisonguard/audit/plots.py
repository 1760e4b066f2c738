"""PNG plots of the projector audit (matplotlib, Agg backend: no display, safe in CI and workers)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

MAX_RANKS = 30  # ProjLens plots ranks 1–30


def plot_spectra(layers: Sequence[dict[str, Any]], path: Path) -> None:
    """σ_i of each layer's ΔW (left axis, log) and cumulative energy C(k) (right axis), ProjLens §3.2."""
    fig, axes = plt.subplots(1, len(layers), figsize=(4.5 * len(layers), 3.4), squeeze=False)
    for ax, layer in zip(axes[0], layers):
        s = np.asarray(layer["singular_values"], dtype=np.float64)[:MAX_RANKS]
        ranks = np.arange(1, s.size + 1)
        ax.semilogy(ranks, np.maximum(s, 1e-12), "o-", ms=3, color="tab:blue")
        ax.set_xlabel("rank i")
        ax.set_ylabel("σ_i", color="tab:blue")
        ax.set_title(
            layer["layer"].rsplit(".", 2)[-1] if "." in layer["layer"] else layer["layer"], fontsize=9
        )
        twin = ax.twinx()
        all_s = np.asarray(layer["singular_values"], dtype=np.float64)
        total = (all_s**2).sum()
        if total > 0:
            twin.plot(ranks, np.cumsum(s**2) / total, "s--", ms=2, color="tab:red")
        twin.set_ylim(0, 1.02)
        twin.set_ylabel("cumulative energy", color="tab:red")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_norm_law(
    base_norm: np.ndarray, coord: np.ndarray, flagged: np.ndarray, fits: dict[str, dict[str, Any]], path: Path
) -> None:
    """Each kept token's coordinate on the shared drift direction against ‖E0_t‖ (ProjLens §4.3)."""
    fig, ax = plt.subplots(figsize=(5, 3.8))
    for mask, label, colour in ((~flagged, "unflagged", "tab:gray"), (flagged, "flagged", "tab:red")):
        if mask.any():
            ax.scatter(
                base_norm[mask], coord[mask], s=4, alpha=0.4, color=colour, label=f"{label} ({mask.sum()})"
            )
        fit = fits.get(label)
        if fit and fit.get("slope") is not None and mask.any():
            x = np.linspace(base_norm[mask].min(), base_norm[mask].max(), 50)
            ax.plot(x, fit["slope"] * x + fit["intercept"], color=colour, lw=1.5)
    ax.set_xlabel("‖E0_t‖ (base projector output norm)")
    ax.set_ylabel("⟨ΔE_t, g⟩ (shared drift direction)")
    ax.legend(fontsize=8, markerscale=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_scores(z: np.ndarray, cut: float, path: Path, truth: np.ndarray | None = None) -> None:
    """Histogram of the combined drift z with the detector's cut; split by ground truth when a benchmark
    provides it."""
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ok = np.isfinite(z)
    bins = np.linspace(np.nanmin(z), max(np.nanmax(z), cut) + 0.5, 60)
    if truth is None:
        ax.hist(z[ok], bins=bins, color="tab:blue", alpha=0.8, label="samples")
    else:
        ax.hist(z[ok & ~truth], bins=bins, color="tab:gray", alpha=0.7, label="clean (truth)")
        ax.hist(z[ok & truth], bins=bins, color="tab:red", alpha=0.7, label="poisoned (truth)")
    ax.axvline(cut, color="k", ls="--", lw=1, label=f"cut z = {cut:.2f}")
    ax.set_yscale("log")
    ax.set_xlabel("combined robust z of log drift scores")
    ax.set_ylabel("samples")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_rank_k(rows: Sequence[dict[str, Any]], reference: dict[str, dict[str, float]], path: Path) -> None:
    """ASR and CP against k for rank-k removal and reconstruction, one line per layer set (ProjLens §3.5)."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for ax, mode in zip(axes, ("remove", "reconstruct")):
        sets = sorted({r["layers"] for r in rows if r["mode"] == mode})
        for i, name in enumerate(sets):
            pts = sorted(
                (r["k"], r["asr"], r["cp"]) for r in rows if r["mode"] == mode and r["layers"] == name
            )
            k, asr, cp = (np.asarray(v, dtype=np.float64) for v in zip(*pts))
            colour = f"C{i}"
            ax.plot(k, asr, "o-", color=colour, label=f"ASR {name}")
            ax.plot(k, cp, "s--", color=colour, alpha=0.6, label=f"CP {name}")
        for key, ls in (("base", ":"), ("finetuned", "-.")):
            if key in reference:
                ax.axhline(reference[key]["asr"], color="k", ls=ls, lw=0.8, label=f"ASR {key}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("k (top components of ΔW)")
        ax.set_title(
            "rank-k removal (fine-tuned − top-k)"
            if mode == "remove"
            else "rank-k reconstruction (base + top-k)",
            fontsize=9,
        )
        ax.set_ylim(-0.02, 1.02)
    axes[0].set_ylabel("rate")
    axes[1].legend(fontsize=7, loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
