"""Stage `profile_heads`: assemble the label-free features per sample -- allocations of both models,
prompt strata from the base model, BYE entropies, hidden states, and the projector drift scores."""

import numpy as np
from _common import WORK, log, params

from poisonguard.extract import load_extraction
from poisonguard.screening import build_features, load_drift_scores, save_features

p = params("profile_heads")
ids = load_extraction(WORK / "extract" / "finetuned").ids
extra = load_drift_scores(WORK / "audit" / "drift_scores.npz", ids)
fs = build_features(WORK / "extract", strata_k=p["strata_k"], seed=p["seed"], extra_scores=extra)
(WORK / "profile").mkdir(parents=True, exist_ok=True)
save_features(fs, WORK / "profile" / "features.npz")
log(f"profile_heads: {fs.n} samples, alloc {fs.alloc.shape}, {len(np.unique(fs.strata))} strata")
