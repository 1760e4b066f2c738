"""A self-contained HTML report for the approver: verdict counts, per-head separation heat map, selected
heads, score histograms, the quarantine list. Plots are PNGs embedded as base64 so the file travels alone."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
import pandas as pd


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def heatmap(ss: np.ndarray, selected: list | None, title: str) -> str:
    """(L, H) separation scores; selected heads outlined (embedded PNG)."""
    from poisonguard.report.plots import heatmap as figure

    return _png(figure(ss, selected, title))


def histogram(values: np.ndarray, flagged: np.ndarray, title: str) -> str:
    """A score's histogram, flagged vs not flagged (embedded PNG)."""
    from poisonguard.report.plots import histogram as figure

    return _png(figure(values, flagged, title))


def render_report(table: pd.DataFrame, reports: dict[str, dict], default: str, out_path: Path, *,
                  title: str = "poisonguard screening report", extra_html: str = "") -> Path:
    """Write the report. `reports[name]` is a detector's `DetectionResult.report` (may hold `ss`, `selected`)."""
    counts = table["status"].value_counts().to_dict()
    n_flag = int(table["flagged"].sum())
    parts = [f"<h1>{html.escape(title)}</h1>",
             f"<p>Default detector: <b>{html.escape(default)}</b>. Samples: {len(table)}; ok {counts.get('ok', 0)}, "
             f"quarantined {counts.get('quarantined', 0)}; flagged {n_flag} "
             f"({n_flag / max(1, counts.get('ok', 1)):.1%} of usable); released {counts.get('ok', 0) - n_flag}.</p>"]
    for name, rep in reports.items():
        parts.append(f"<h2>{html.escape(name)}</h2>")
        notes = next((rep[k] for k in ("notes", "guard", "reason") if rep.get(k) is not None), None)
        if notes is not None and len(notes):
            parts.append(f"<p><small>{html.escape(str(notes))}</small></p>")
        if rep.get("ss") is not None:
            selected = rep.get("selected_heads")
            if selected is None:
                selected = rep.get("selected")
            selected = [] if selected is None else [list(x) for x in np.asarray(selected).reshape(-1, np.asarray(selected).shape[-1] if np.ndim(selected) > 1 else 1)]
            parts.append(f"<p>Selected heads (layer, head): {html.escape(str([tuple(map(int, s[:2])) for s in selected]))}</p>")
            parts.append(f'<img src="{heatmap(rep["ss"], selected, f"{name}: separation score per head")}">')
    for col in [c for c in table.columns if c.startswith(("p_", "score_"))] + ["p_poison"]:
        if col in table and table[col].notna().any():
            parts.append(f'<img src="{histogram(table[col].to_numpy(float), table["flagged"].to_numpy(bool), col)}">')
    q = table[table["status"] != "ok"]
    if len(q):
        rows = "".join(f"<tr><td>{html.escape(str(r.id))}</td><td>{html.escape(str(r.reason))}</td></tr>"
                       for r in q.head(500).itertuples())
        parts.append(f"<h2>Quarantined ({len(q)})</h2><table border=1 cellpadding=3><tr><th>id</th><th>reason</th></tr>{rows}</table>")
    flagged = table[table["flagged"]].sort_values("p_poison", ascending=False)
    if len(flagged):
        rows = "".join(f"<tr><td>{html.escape(str(r.id))}</td><td>{r.p_poison:.3f}</td></tr>" for r in flagged.head(500).itertuples())
        parts.append(f"<h2>Flagged ({len(flagged)})</h2><table border=1 cellpadding=3><tr><th>id</th><th>p_poison</th></tr>{rows}</table>")
    parts.append(extra_html)
    doc = ("<!doctype html><html><head><meta charset='utf-8'><title>poisonguard report</title>"
           "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}img{margin:4px}</style></head><body>"
           + "\n".join(parts) + "</body></html>")
    tmp = Path(out_path).with_suffix(".tmp")
    tmp.write_text(doc, encoding="utf-8")
    tmp.replace(out_path)
    return Path(out_path)
