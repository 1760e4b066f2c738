"""Figures of the screening and benchmark reports (matplotlib, Agg backend: no display, safe in CI).

Each function returns a `Figure`; the caller embeds it (`html.py`, one self-contained file for the approver)
or saves it next to an HTML page (`bench_html.py`, many plots). Inputs are plain arrays, so the figures can be
checked without a model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

SHARE_NAMES = ("system", "image", "user text")  # order of the allocation's last axis (extract.ROLE_NAMES)
SHARE_COLOURS = ("tab:blue", "tab:orange", "tab:green")


def save(fig: Figure, path: Path, dpi: int = 100) -> Path:
    """Write a PNG atomically (temp file, then rename) and close the figure."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path


def heatmap(ss: np.ndarray, selected: Sequence[Sequence[int]] | None, title: str) -> Figure:
    """(L, H) separation score per head; the selected heads outlined in red."""
    ss = np.asarray(ss, dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 + 0.5 * ss.shape[1], 0.9 + 0.35 * ss.shape[0]))
    im = ax.imshow(np.nan_to_num(ss), aspect="auto", cmap="viridis")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.05)
    for lh in selected or []:
        layer, head = int(lh[0]), int(lh[1])
        ax.add_patch(Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, ec="red", lw=2))
    return fig


def roc_points(scores: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates over every distinct threshold (ties move together), from (0, 0) to
    (1, 1). NaN scores rank lowest, as in `binary_metrics`."""
    s = np.nan_to_num(np.asarray(scores, dtype=float), nan=-np.inf)
    t = np.asarray(truth, dtype=bool)
    order = np.argsort(-s, kind="stable")
    s, t = s[order], t[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1] if s.size else np.zeros(0, int)
    tp, fp = np.cumsum(t)[last_of_tie], np.cumsum(~t)[last_of_tie]
    n_pos, n_neg = max(int(t.sum()), 1), max(int((~t).sum()), 1)
    return np.r_[0.0, fp / n_neg], np.r_[0.0, tp / n_pos]


def roc_figure(panels: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray, float | None]]],
               title: str) -> Figure:
    """One panel per key of `panels` (e.g. a poison rate); per detector a curve from (scores, truth, auroc)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    for ax, (panel, curves) in zip(axes[0], panels.items()):
        for det, (scores, truth, auc) in curves.items():
            fpr, tpr = roc_points(scores, truth)
            ax.plot(fpr, tpr, lw=1.3, label=f"{det} ({'–' if auc is None else f'{auc:.2f}'})")
        ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
        ax.set_xlabel("false-positive rate")
        ax.set_ylabel("true-positive rate")
        ax.set_title(panel, fontsize=9)
        ax.legend(fontsize=7, title="detector (AUROC)", title_fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def histogram(values: np.ndarray, split: np.ndarray, title: str, *,
              labels: tuple[str, str] = ("not flagged", "flagged"), ax=None, bins=None) -> Figure:
    """Histogram of a per-sample score, the two groups of `split` overlaid (log counts); NaN left out."""
    v = np.asarray(values, dtype=float)
    f = np.asarray(split, dtype=bool)
    fig, ax = (plt.subplots(figsize=(4.2, 2.4)) if ax is None else (ax.figure, ax))
    ok = np.isfinite(v)
    if bins is None:
        bins = np.histogram_bin_edges(v[ok], bins=40) if ok.any() and np.ptp(v[ok]) > 0 else 10
    if (ok & ~f).any():
        ax.hist(v[ok & ~f], bins=bins, alpha=0.7, label=f"{labels[0]} ({int((ok & ~f).sum())})")
    if (ok & f).any():
        ax.hist(v[ok & f], bins=bins, alpha=0.7, label=f"{labels[1]} ({int((ok & f).sum())})", color="tab:red")
    ax.set_title(title, fontsize=9)
    if ok.any():
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no score", ha="center", va="center", transform=ax.transAxes)
    return fig


def histogram_grid(scores: Mapping[str, np.ndarray], truth: np.ndarray, title: str) -> Figure:
    """One histogram of p_poison (in [0, 1]) per detector, poisoned vs clean by the ground truth."""
    n = len(scores)
    cols = min(4, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.6 * rows), squeeze=False)
    for ax, (name, v) in zip(axes.flat, scores.items()):
        histogram(v, truth, name, labels=("clean", "poisoned"), ax=ax, bins=np.linspace(0, 1, 41))
        ax.set_xlabel("p_poison", fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def allocation_shift(groups: Mapping[str, np.ndarray], heads: Sequence[tuple[int, int]], title: str) -> Figure:
    """Mean attention shares (system / image / user text) at each selected head, one stacked bar per group.

    `groups[name]` is (n_heads, 3): the group's mean shares at `heads`. A backdoor fingerprint shows as the
    poisoned (or flagged) bars shifting share away from the clean bars at the same head.
    """
    names = list(groups)
    n_heads, n_groups = len(heads), len(names)
    width = 0.8 / max(n_groups, 1)
    fig, ax = plt.subplots(figsize=(1.6 + 0.45 * n_heads * n_groups, 3.4))
    hatches = ("", "//", "..", "xx")
    for g, name in enumerate(names):
        shares = np.asarray(groups[name], dtype=float).reshape(n_heads, 3)
        x = np.arange(n_heads) + (g - (n_groups - 1) / 2) * width
        bottom = np.zeros(n_heads)
        for c in range(3):
            ax.bar(x, shares[:, c], width * 0.95, bottom=bottom, color=SHARE_COLOURS[c],
                   hatch=hatches[g % len(hatches)], edgecolor="white", lw=0.3,
                   label=SHARE_NAMES[c] if g == 0 else None)
            bottom += shares[:, c]
    ax.set_xticks(np.arange(n_heads), [f"L{lh[0]}H{lh[1]}" for lh in heads], fontsize=8)
    ax.set_ylabel("mean attention share")
    ax.set_ylim(0, 1.05)
    key = ", ".join(f"{name}: {'plain' if i == 0 else hatches[i % len(hatches)]}" for i, name in enumerate(names))
    ax.set_title(f"{title}\nbars left to right: {key}", fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3)
    fig.tight_layout()
    return fig


def norm_drift_scatter(raw: np.ndarray, relative: np.ndarray, truth: np.ndarray, title: str) -> Figure:
    """Per sample: the largest token drift ‖ΔE_t‖ against the largest norm-relative drift ‖ΔE_t‖/‖E0_t‖.

    Where the norm law holds (drift grows with the base projector's output norm), clean samples lie on one
    trend; a trigger token that drifts beyond its norm sits above it.
    """
    x, y, t = (np.asarray(a, dtype=float) for a in (raw, relative, truth))
    t = t.astype(bool)
    ok = np.isfinite(x) & np.isfinite(y)
    fig, ax = plt.subplots(figsize=(4.8, 3.8))
    for mask, label, colour, z in ((ok & ~t, "clean", "tab:gray", 1), (ok & t, "poisoned", "tab:red", 2)):
        if mask.any():
            ax.scatter(x[mask], y[mask], s=5, alpha=0.5, color=colour, label=f"{label} ({int(mask.sum())})",
                       zorder=z)
    ax.set_xlabel("max_t ‖ΔE_t‖ (raw projector drift)")
    ax.set_ylabel("max_t ‖ΔE_t‖ / ‖E0_t‖ (norm-relative)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, markerscale=2)
    fig.tight_layout()
    return fig
