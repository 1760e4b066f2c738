"""Stage `profile_heads`: assemble the label-free features per sample -- allocations of both models,
prompt strata from the base model, BYE entropies, hidden states, and the projector drift scores."""

import numpy as np
from _common import WORK, log, params

from poisonguard.screening import build_features, save_features

p = params("profile_heads")
with np.load(WORK / "audit" / "drift_scores.npz") as z:
    extra = {k: z[k] for k in z.files if k != "ids"}
    drift_ids = z["ids"]
fs = build_features(WORK / "extract", strata_k=p["strata_k"], seed=p["seed"], extra_scores=extra)
if list(fs.ids) != list(drift_ids):
    raise SystemExit("profile_heads: drift scores and extraction cover different samples")
(WORK / "profile").mkdir(parents=True, exist_ok=True)
save_features(fs, WORK / "profile" / "features.npz")
log(f"profile_heads: {fs.n} samples, alloc {fs.alloc.shape}, {len(np.unique(fs.strata))} strata")
