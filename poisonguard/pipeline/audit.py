"""Stage `audit_projector`: how fine-tuning moved the projector, per sample and in weight space.

Per sample: the drift of each image's projected tokens between the base and the fine-tuned visual path
(`audit.activations`), the scores the `projector` detector cuts and `fused` counts as annotators; NaN for
samples without an image. In weight space: the ΔW spectrum of the projector's layers, from the same two
visual paths (the full audit with rank-k removal is `poisonguard audit`). Disabled (`enabled: false`), the stage records that no drift was computed, and the detectors that
need it are left out by `fit_gmm`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from poisonguard.atomic import atomic_write_json
from poisonguard.audit.activations import collect_drift, drift_scores, shared_direction
from poisonguard.audit.report import projector_weight_report
from poisonguard.data.loading import CheckedDataset
from poisonguard.extract.features import save_drift_scores
from poisonguard.models import drift_pair, is_adapter_dir
from poisonguard.pipeline.config import AuditConfig
from poisonguard.pipeline.layout import Layout
from poisonguard.runtime import Runtime


def audit_projector(checked: CheckedDataset, base: str | Path, finetuned: str | Path, layout: Layout,
                    cfg: AuditConfig, *, runtime: Runtime | None = None, show_progress: bool = True,
                    log=print) -> dict[str, np.ndarray]:
    """Write `layout.drift` (scores aligned with `checked.ok`) and the weight audit into `layout.audit`.
    The drift pass holds only the two visual paths (or one model with its adapter off and on)."""
    ids = [s.id for s in checked.ok]
    layout.audit.mkdir(parents=True, exist_ok=True)
    layout.drift.parent.mkdir(parents=True, exist_ok=True)
    if not cfg.enabled:
        save_drift_scores(ids, {}, layout.drift)
        log("projector audit disabled (audit_projector.enabled: false)")
        return {}
    with drift_pair(base, finetuned, runtime) as (m0, m1, processor):
        col = collect_drift(m0, m1, processor, checked.ok, checked.image_loader(), batch_size=cfg.batch_size,
                            max_batch_tokens=cfg.max_batch_tokens, show_progress=show_progress)
        if is_adapter_dir(finetuned):  # one model with the adapter off and on: no second set of weights here
            atomic_write_json(layout.audit / "audit.json", {"skipped": (
                "weight audit of an adapter: run `poisonguard audit --base BASE --finetuned ADAPTER`, which "
                "merges it")})
        else:
            projector_weight_report(m0, m1, cfg.ks, layout.audit)
        del m0, m1
    every = drift_scores(col, shared_direction(col))
    scores = {name: np.asarray(every[name], dtype=np.float64) for name in cfg.scores}
    save_drift_scores(ids, scores, layout.drift)
    n_scored = int(np.isfinite(np.column_stack(list(scores.values()))).all(axis=1).sum()) if scores else 0
    log(f"projector drift of {n_scored} samples with an image; weight audit in {layout.audit}")
    return scores
