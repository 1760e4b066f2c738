"""Projector audit (ProjLens): ΔW spectrum and rank-k removal / reconstruction, per-token drift ΔE on the
data and per-sample drift scores (the projector detector in `poisonguard.detect.projector` cuts them), a JSON
+ PNG report."""

from poisonguard.audit.activations import (
    DRIFT_SCORES,
    collect_drift,
    drift_features,
    drift_scores,
    fit_stride,
    merge_drift,
    shared_direction,
)
from poisonguard.audit.projector import (
    ProjectorFeatures,
    apply_projector,
    find_projector,
    image_inputs,
    projector_features,
    projector_linears,
)
from poisonguard.audit.report import audit_models
from poisonguard.audit.weights import layer_deltas, rank_k_edit, rank_k_edited, repair, spectrum_summary

__all__ = [
    "DRIFT_SCORES",
    "ProjectorFeatures",
    "apply_projector",
    "audit_models",
    "collect_drift",
    "drift_features",
    "drift_scores",
    "find_projector",
    "fit_stride",
    "image_inputs",
    "layer_deltas",
    "merge_drift",
    "projector_features",
    "projector_linears",
    "rank_k_edit",
    "rank_k_edited",
    "repair",
    "shared_direction",
    "spectrum_summary",
]
