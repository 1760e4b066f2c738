"""Stage `em_vote`: score the fitted detectors, fuse their verdicts in one Dawid–Skene vote, and write the
screen's record (`pipeline.verdicts`) and report.html.

The vote: each detector in `annotators` is an annotator whose flags are its votes (a drift reader abstains on
samples without an image); binary Dawid–Skene EM estimates each one's sensitivity and specificity without
labels and gives `p_vote` per sample. Which verdict blocks samples is `decide`: a detector, or "vote" (flag
p_vote > 0.5). The benchmark decides between them; the vote's column is always in the table so that its
verdict can be compared with the deciding one on every screen.
"""

from __future__ import annotations

import json

import numpy as np

from poisonguard.atomic import atomic_write_json
from poisonguard.data.loading import CheckedDataset
from poisonguard.detect.base import DetectionResult
from poisonguard.detect.em import dawid_skene
from poisonguard.detect.features import FeatureSet
from poisonguard.detect.registry import USES_PROJECTOR, load_detectors
from poisonguard.extract.features import load_features
from poisonguard.pipeline.config import VoteConfig
from poisonguard.pipeline.layout import Layout
from poisonguard.pipeline.verdicts import ScreenResult, write_report_dir
from poisonguard.report.html import render_report


def vote(results: dict[str, DetectionResult], features: FeatureSet, cfg: VoteConfig) -> DetectionResult | None:
    """The Dawid–Skene fusion of the annotators' flags (None when none of them ran)."""
    names = [n for n in cfg.annotators if n in results]
    if not names:
        return None
    votes = np.column_stack([results[n].flagged for n in names]).astype(np.float64)  # (N, A)
    mask = np.ones_like(votes)
    if features.extra_scores:
        has_drift = np.isfinite(np.column_stack(list(features.extra_scores.values()))).all(axis=1)  # (N,)
        for j, n in enumerate(names):
            if n in USES_PROJECTOR:
                mask[:, j] = has_drift
    ds = dawid_skene(votes, mask, max_iter=cfg.max_iter, smoothing=cfg.smoothing)
    report = {"detector": "vote", "annotators": names, "prior": ds.prior,
              "sensitivity": dict(zip(names, ds.sensitivity.tolist())),
              "specificity": dict(zip(names, ds.specificity.tolist())), "converged": ds.converged,
              "n": int(features.n), "n_flagged": int((ds.p > 0.5).sum())}
    return DetectionResult(features.ids, ds.p, ds.p > 0.5, {}, report)


def em_vote(checked: CheckedDataset, layout: Layout, cfg: VoteConfig, *, features: FeatureSet | None = None,
            params: dict | None = None, log=print) -> ScreenResult:
    """Score every detector of `layout.detectors`, vote, write the report folder and its metrics. The
    detectors `fit_gmm` left out are named in the report with the reason."""
    features = features if features is not None else load_features(layout.features)
    states = json.loads(layout.detectors.read_text())
    skipped = json.loads(layout.left_out.read_text()) if layout.left_out.exists() else {}
    detectors = load_detectors(states)
    results = {name: det.score(features) for name, det in detectors.items()}
    fused = vote(results, features, cfg)
    decide = cfg.decide
    if decide != "vote" and decide not in results:  # e.g. `projector` left out for want of images
        fallback = next(iter(results))
        log(f"{decide} did not run on this drop; {fallback} decides")
        decide = fallback
    if decide == "vote":
        if fused is None:
            raise ValueError(f"em_vote.decide is 'vote' but none of its annotators {cfg.annotators} ran")
        results = {"vote": fused, **results}
    extra = {"p_vote": (fused.ids, fused.p_poison)} if fused is not None and decide != "vote" else None
    res = write_report_dir(checked, results, decide, {"default": decide, "detectors": states}, layout.report,
                           params=params, extra_columns=extra)
    reports = {name: r.report for name, r in results.items()}
    if fused is not None and decide != "vote":
        reports["vote"] = fused.report
    render_report(res.table, reports, decide, layout.report / "report.html", checked=checked,
                  skipped=skipped or None)
    layout.metrics.mkdir(parents=True, exist_ok=True)
    atomic_write_json(layout.metrics_file("em_vote"), {
        "n": len(res.table), "flagged": len(res.flagged_ids), "released": len(res.keep_ids),
        "quarantined": int((res.table["status"] != "ok").sum()), "decided_by": decide,
        "vote_flagged": None if fused is None else int(fused.flagged.sum())})
    log(f"{len(res.flagged_ids)} flagged by {decide}; {len(res.keep_ids)} samples in the release candidate")
    return res
