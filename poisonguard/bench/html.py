"""The benchmark's HTML report: its tables and, per attack, the plots a reader needs to believe them.

Written to OUT/report/index.html with the PNGs beside it (many plots: one file each, not base64). Everything
is read from what the run already wrote -- summary.json and each cell's screening folder (verdicts.parquet,
manifest.json, detector.json, extract/{finetuned,base}, extract/drift_scores.npz) and its poison_ids.json --
so the report can be redrawn without recomputing anything (`write_bench_report(summary, out)`).

Per attack (first seed; one ROC panel per rate, the rest at the largest rate):
- ROC curves of every detector's p_poison against the truth;
- p_poison histograms, poisoned vs clean;
- separation score per (layer, head) of the profile-and-vote detectors, selected heads outlined;
- the allocation shift at the default detector's selected heads: mean system / image / user-text shares of
  clean, poisoned and flagged samples (fine-tuned model) and of the poisoned samples under the base model;
- projector drift per sample, raw against norm-relative, poisoned vs clean.
Plus the controls' flag rates. A plot whose inputs are missing is skipped with a note, never faked.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from poisonguard.attacks.files import read_poison_ids
from poisonguard.report import plots
from poisonguard.bench.tables import groups, markdown_tables

MAX_HEADS = 6  # allocation-shift bars: the default detector's best heads


def write_bench_report(summary: dict, out: Path) -> Path:
    out = Path(out)
    rdir = out / "report"
    rdir.mkdir(parents=True, exist_ok=True)
    cfg = summary["config"]
    parts = [f"<h1>poisonguard benchmark</h1><p>Run {html.escape(str(summary.get('started')))} UTC on "
             f"{html.escape(str(summary.get('machine')))}"
             + (f"; command: <code>{html.escape(summary['command'])}</code>" if summary.get("command") else "")
             + f". Fine-tune: {html.escape(str(cfg['finetune']))}.</p>",
             "<h2>Tables</h2>", markdown_to_html(markdown_tables(summary))]
    fig = controls_figure(summary)
    if fig is not None:
        parts.append("<h2>Controls</h2>" + _img(plots.save(fig, rdir / "controls_flag_rate.png")))
    for attack, cells in _first_seed_by_attack(summary).items():
        parts.append(f"<h2>{html.escape(attack)}</h2>")
        parts.append(_attack_section(attack, cells, cfg, out, rdir))
    doc = ("<!doctype html><html><head><meta charset='utf-8'><title>poisonguard benchmark</title>"
           "<style>body{font-family:sans-serif;max-width:1300px;margin:2em auto}img{margin:4px;max-width:100%}"
           "table{border-collapse:collapse;font-size:13px;margin:8px 0}td,th{border:1px solid #ccc;padding:2px 6px}"
           "</style></head><body>" + "\n".join(parts) + "</body></html>")
    page = rdir / "index.html"
    tmp = rdir / ".index.html.tmp"
    tmp.write_text(doc, encoding="utf-8")
    tmp.replace(page)
    return page


# ------------------------------------------------------------------------------------------------ sections
def _first_seed_by_attack(summary: dict) -> dict[str, dict[float, dict]]:
    """attack → rate → the attack cell with the lowest seed that has a screening."""
    out: dict[str, dict[float, dict]] = {}
    for (attack, rate), cs in groups(summary, "attack").items():
        screened = [c for c in cs if "detection" in c]
        if screened:
            out.setdefault(attack, {})[rate] = min(screened, key=lambda c: c["seed"])
    return out


def _attack_section(attack: str, cells: dict[float, dict], cfg: dict, out: Path, rdir: Path) -> str:
    dets = list(cfg["detectors"])
    parts = []
    panels = {}
    for rate, c in cells.items():
        view = CellView(out / "cells" / c["cell"])
        panels[f"{rate:.0%} poisoned, seed {c['seed']}"] = {
            d: (view.scores(d), view.truth, (c["detection"].get(d) or {}).get("auroc")) for d in dets}
    parts.append(_img(plots.save(plots.roc_figure(panels, f"{attack}: ROC per detector"), rdir / f"roc_{attack}.png")))

    top = cells[max(cells)]
    view = CellView(out / "cells" / top["cell"])
    label = f"{attack} {max(cells):.0%}, seed {top['seed']}"
    parts.append(f"<p>Screening report of this cell: <a href='../cells/{top['cell']}/report/report.html'>"
                 f"{html.escape(top['cell'])}</a></p>")
    fig = plots.histogram_grid({d: view.scores(d) for d in dets}, view.truth, f"{label}: p_poison, poisoned vs clean")
    parts.append(_img(plots.save(fig, rdir / f"hist_{attack}.png")))

    for det in dets:
        rep = view.detector_report(det)
        if rep is not None and rep.get("ss") is not None:
            fig = plots.heatmap(np.asarray(rep["ss"], dtype=float), rep.get("selected_heads") or [],
                                f"{label}: {det} separation score per head (selected: red)")
            parts.append(_img(plots.save(fig, rdir / f"heads_{attack}_{det}.png")))

    try:
        shift = view.allocation_groups()
    except (OSError, ValueError) as exc:  # an unfinished or stale extraction: say so, draw nothing
        shift = None
        parts.append(f"<p><small>Allocation shift not drawn: {html.escape(str(exc))}</small></p>")
    else:
        if shift is None:
            parts.append(f"<p><small>Allocation shift: no selected head in {html.escape(view.default)}, "
                         f"tcap_plus or tcap.</small></p>")
    if shift is not None:
        det, heads, grps = shift
        fig = plots.allocation_shift(grps, heads, f"{label}: shares at {det}'s selected heads")
        parts.append(_img(plots.save(fig, rdir / f"alloc_{attack}.png")))

    drift = view.drift()
    if drift is None:
        parts.append("<p><small>Projector drift: no drift_scores.npz in this cell's screening.</small></p>")
    else:
        fig = plots.norm_drift_scatter(drift["drift_max"], drift["drift_max_rel"], view.truth,
                                       f"{label}: projector drift per sample")
        parts.append(_img(plots.save(fig, rdir / f"drift_{attack}.png")))
        parts.append("<p><small>Per-sample maxima from the screening (drift_scores.npz). The per-token norm law "
                     "(‖E0_t‖ against the drift coordinate) is in <code>poisonguard audit</code>'s report.</small></p>")
    return "\n".join(parts)


def controls_figure(summary: dict):
    """Share of samples flagged per detector on each control (mean over seeds)."""
    import matplotlib.pyplot as plt

    dets = list(summary["config"]["detectors"])
    rows = []
    for kind, title in (("no_relabel", "no relabel"), ("base_model", "base model"), ("clean", "clean")):
        for (a, r), cs in groups(summary, kind).items():
            if any("detection" in c for c in cs):
                name = title if kind == "clean" else f"{title}: {a} {r:.0%}"
                rows.append((name, [np.mean([(c["detection"].get(d) or {}).get("flag_rate", np.nan) for c in cs])
                                    for d in dets]))
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(1.5 + 1.1 * len(dets), 3.2))
    width = 0.8 / len(rows)
    for i, (name, vals) in enumerate(rows):
        ax.bar(np.arange(len(dets)) + (i - (len(rows) - 1) / 2) * width, np.asarray(vals) * 100, width, label=name)
    ax.set_xticks(np.arange(len(dets)), dets, rotation=20, fontsize=8)
    ax.set_ylabel("% of samples flagged")
    ax.axhline(1.0, color="k", lw=0.8, ls="--", label="goal ≤ 1% (clean)")
    ax.set_title("Controls: a real backdoor detector flags (almost) nothing here", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


# -------------------------------------------------------------------------------------------- one cell
class CellView:
    """Read-only access to one bench cell's screening folder, aligned to its verdict table's usable rows."""

    def __init__(self, cell_dir: Path) -> None:
        self.dir = Path(cell_dir)
        self.report = self.dir / "report"
        table = pd.read_parquet(self.report / "verdicts.parquet")
        self.table = table[table["status"] == "ok"].reset_index(drop=True)
        self.ids = self.table["id"].astype(str).to_numpy()
        self.default = json.loads((self.report / "manifest.json").read_text())["default_detector"]
        truth_file = self.dir / "data" / "poison_ids.json"
        truth = read_poison_ids(truth_file) if truth_file.exists() else []  # a clean cell has no truth file
        self.truth = np.isin(self.ids, truth)

    def scores(self, det: str) -> np.ndarray:
        from poisonguard.report.evaluation import detector_columns

        return self.table[detector_columns(self.table, det, self.default)[1]].to_numpy(float)

    def flags(self, det: str) -> np.ndarray:
        from poisonguard.report.evaluation import detector_columns

        return self.table[detector_columns(self.table, det, self.default)[0]].to_numpy(bool)

    def detector_report(self, det: str) -> dict | None:
        states = json.loads((self.report / "detector.json").read_text()).get("detectors", {})
        return ((states.get(det) or {}).get("fitted") or {}).get("report")

    def _aligned(self, ids) -> np.ndarray:
        pos = {str(i): k for k, i in enumerate(ids)}
        return np.asarray([pos[i] for i in self.ids])

    def allocation_groups(self):
        """(detector, heads, {group: (n_heads, 3) mean shares}) at the default detector's selected heads
        (TCAP's when the default selected none); None without selected heads."""
        from poisonguard.extract import load_extraction

        for det in dict.fromkeys((self.default, "tcap_plus", "tcap")):
            rep = self.detector_report(det)
            heads = [tuple(int(v) for v in lh[:2]) for lh in (rep or {}).get("selected_heads") or []][:MAX_HEADS]
            if heads:
                break
        else:
            return None
        ext = self.report / "extract"
        ft, base = load_extraction(ext / "finetuned"), load_extraction(ext / "base")
        li, hi = np.asarray(heads).T
        a_ft = ft.alloc[self._aligned(ft.ids)][:, li, hi, :]  # (N, n_heads, 3)
        a_base = base.alloc[self._aligned(base.ids)][:, li, hi, :]
        groups_: dict[str, np.ndarray] = {"clean": a_ft[~self.truth].mean(0)}
        if self.truth.any():
            groups_["poisoned"] = a_ft[self.truth].mean(0)
            groups_["poisoned, base model"] = a_base[self.truth].mean(0)
        flagged = self.flags(det)
        if flagged.any():
            groups_[f"flagged by {det}"] = a_ft[flagged].mean(0)
        return det, heads, groups_

    def drift(self) -> dict[str, np.ndarray] | None:
        path = self.report / "extract" / "drift_scores.npz"
        if not path.exists():
            return None
        with np.load(path, allow_pickle=False) as z:
            if not {"drift_max", "drift_max_rel"} <= set(z.files):
                return None
            idx = self._aligned([str(i) for i in z["ids"]])
            return {k: z[k][idx] for k in z.files if k != "ids"}


# ---------------------------------------------------------------------------------------------- helpers
def _img(path: Path) -> str:
    return f'<img src="{html.escape(Path(path).name)}">'


def markdown_to_html(md: str) -> str:
    """The subset of Markdown the tables use: pipe tables, paragraphs, `code`, bullet lines."""
    out: list[str] = []
    rows: list[list[str]] = []

    def inline(text: str) -> str:
        return re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(text))

    def flush() -> None:
        if rows:
            head, body = rows[0], [r for r in rows[1:] if not all(set(c) <= {"-", ":"} for c in r)]
            out.append("<table><tr>" + "".join(f"<th>{inline(c)}</th>" for c in head) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in body)
                       + "</table>")
            rows.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
            continue
        flush()
        if line.startswith("- "):
            out.append(f"<li>{inline(line[2:])}</li>")
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
    flush()
    return "\n".join(out)

