"""Stage `fit_gmm`: fit every configured detector, label-free, on the drop's features (each fits its own
mixtures: the decision-shift cut, the per-head profiles of TCAP and TCAP+, the drift cut ...), and store their
JSON states -- the artefact registered in MLflow and reapplied to later drops.
"""

from __future__ import annotations

import numpy as np

from poisonguard.atomic import atomic_write_json
from poisonguard.detect.base import Detector
from poisonguard.detect.features import FeatureSet
from poisonguard.detect.registry import USES_ANSWER_SPAN, USES_PROJECTOR, make_detectors
from poisonguard.extract.features import load_features
from poisonguard.pipeline.config import GmmConfig
from poisonguard.pipeline.layout import Layout

MIN_SCORED = 10  # the drift statistics need this many samples with an image


def usable_detectors(cfg: GmmConfig, features: FeatureSet) -> tuple[dict[str, dict], dict[str, str]]:
    """(the configured detectors that can run on these features, {left out: why}): the drift readers need
    `MIN_SCORED` samples with drift scores (only samples with an image have them; none when the projector
    audit is disabled); the answer-span readers need the span pass of both models (`extract.span`)."""
    drift = features.extra_scores
    scored = int(np.isfinite(np.column_stack(list(drift.values()))).all(axis=1).sum()) if drift else 0
    chosen, left_out = {}, {}
    for name, params in cfg.detectors.items():
        if name in USES_PROJECTOR and scored < MIN_SCORED:
            left_out[name] = (f"only {scored} samples have projector-drift scores (an image and the projector "
                              f"audit enabled); it needs {MIN_SCORED}")
            continue
        if name in USES_ANSWER_SPAN and features.answer_logp is None:
            left_out[name] = ("the extraction holds no answer-span log-probabilities (span.npz of both models); "
                              "re-run the extract_attention stage")
            continue
        chosen[name] = params
    return chosen, left_out


def fit_gmm(layout: Layout, cfg: GmmConfig, features: FeatureSet | None = None, *,
            log=print) -> dict[str, Detector]:
    """Fit the usable detectors on `features` (read from `layout.features` when not given) and write
    `layout.detectors` and, for the report, `layout.left_out` (the configured detectors that could not run)."""
    features = features if features is not None else load_features(layout.features)
    chosen, left_out = usable_detectors(cfg, features)
    for name, why in left_out.items():
        log(f"{name} left out: {why}")
    detectors = make_detectors(chosen)
    for det in detectors.values():
        det.fit(features)
    layout.gmm.mkdir(parents=True, exist_ok=True)
    atomic_write_json(layout.detectors, {name: det.to_state() for name, det in detectors.items()}, indent=1)
    atomic_write_json(layout.left_out, left_out)
    log(f"fitted {', '.join(detectors)}")
    return detectors
