"""Report figures: the ROC points agree with the AUROC the tables report, the figures draw from plain arrays,
and the Markdown tables become HTML tables."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from poisonguard.detect.metrics import auroc
from poisonguard.report import plots
from poisonguard.bench.html import markdown_to_html


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.booleans()), min_size=2, max_size=40))
def test_roc_area_equals_auroc_with_ties(pairs):
    scores = np.array([s for s, _ in pairs], dtype=float) / 4  # few distinct values: many ties
    truth = np.array([t for _, t in pairs])
    fpr, tpr = plots.roc_points(scores, truth)
    assert fpr[0] == tpr[0] == 0 and np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    expected = auroc(scores, truth)
    if expected is not None:
        assert fpr[-1] == tpr[-1] == 1
        assert abs(np.trapezoid(tpr, fpr) - expected) < 1e-9


def test_figures_are_written_as_png(tmp_path):
    rng = np.random.default_rng(0)
    truth = rng.random(200) < 0.1
    scores = np.where(truth, 0.8, 0.2) + rng.normal(0, 0.2, 200)
    figures = {
        "roc": plots.roc_figure({"10%": {"a": (scores, truth, auroc(scores, truth)), "b": (-scores, truth, None)}},
                                "roc"),
        "hist": plots.histogram_grid({"a": np.clip(scores, 0, 1), "b": np.full(200, np.nan)}, truth, "hist"),
        "heat": plots.heatmap(rng.random((6, 4)), [(5, 1), (4, 0)], "ss"),
        "alloc": plots.allocation_shift({"clean": np.full((2, 3), 1 / 3), "poisoned": [[0.5, 0.3, 0.2]] * 2},
                                        [(5, 1), (4, 0)], "shift"),
        "drift": plots.norm_drift_scatter(rng.random(200), np.r_[np.nan, rng.random(199)], truth, "drift"),
    }
    for name, fig in figures.items():
        path = plots.save(fig, tmp_path / f"{name}.png")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{n}.png" for n in figures)  # no temp left


def test_markdown_tables_become_html_tables():
    md = "Intro with `code`:\n\n| a | b |\n|---|---|\n| 1 < 2 | x |\n\n- a bullet\n"
    page = markdown_to_html(md)
    assert "<p>Intro with <code>code</code>:</p>" in page
    assert "<table><tr><th>a</th><th>b</th></tr><tr><td>1 &lt; 2</td><td>x</td></tr></table>" in page
    assert "<li>a bullet</li>" in page
