"""Stage `profile_heads`: the label-free features of the drop and a mixture profile of every attention head.

Features: both models' attention shares and decision states, label-free prompt strata from the base model,
and the projector-drift scores -- everything the detectors read (`extract.features.build_features`).
Head profiles: for each layer and head, a 1-D mixture (K = 1..k_max, K* by BIC) of the fine-tuned minus the
base model's system share at the decision position, with TCAP's separation score of its minority group.
They show the reviewer which heads fine-tuning split into a separated minority; the detectors fit their own
mixtures on their own coordinates in `fit_gmm`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from poisonguard.atomic import atomic_path
from poisonguard.detect.features import FeatureSet
from poisonguard.detect.profile import profile_columns
from poisonguard.extract.features import build_features, save_features
from poisonguard.pipeline.config import ProfileConfig
from poisonguard.pipeline.layout import Layout
from poisonguard.runtime import Runtime

_SYS = 0  # index of the system share in the allocation's last axis


def profile_heads(layout: Layout, cfg: ProfileConfig, *, runtime: Runtime | None = None, log=print) -> FeatureSet:
    """Write `layout.features` and `layout.heads`; return the features. With a CUDA `runtime` the head GMMs
    are fitted on that GPU (`fit_gmm_1d(device=...)`: the same fits to rounding), else on the CPU."""
    features = build_features(layout.extract, strata_k=cfg.strata_k, seed=cfg.seed, drift_file=layout.drift)
    layout.profile.mkdir(parents=True, exist_ok=True)
    save_features(features, layout.features)
    heads = head_profiles(features, cfg, device=str(runtime.device) if runtime is not None and runtime.is_cuda
                          else None)
    with atomic_path(layout.heads, ".csv") as tmp:
        heads.to_csv(tmp, index=False, float_format="%.6g")
    split = int((heads["k_star"] > 1).sum())
    log(f"profiled {len(heads)} heads on {features.n} samples ({split} split by fine-tuning); "
        f"{len(np.unique(features.strata))} prompt strata")
    return features


def head_profiles(features: FeatureSet, cfg: ProfileConfig, *, device: str | None = None) -> pd.DataFrame:
    """One row per (layer, head): K*, minority weight, TCAP separation score, standardised separation."""
    features.require("alloc", "alloc_base")
    n, n_layers, n_heads, _ = features.alloc.shape
    x = (features.alloc[..., _SYS] - features.alloc_base[..., _SYS]).reshape(n, -1).astype(np.float64)  # (N, L*H)
    lo, hi = x.min(axis=0), x.max(axis=0)
    xn = (x - lo) / np.where(hi > lo, hi - lo, 1.0)  # (N, L*H), per-head min-max as in TCAP
    prof = profile_columns(xn, k_max=cfg.k_max, criterion="bic", target_rule="cumulative", eps=1e-6,
                           grid_lo=-0.5, grid_hi=1.5, n_grid=2001, n_init=2, seed=cfg.seed, tol=1e-5,
                           max_iter=300, reg_covar=1e-6, device=device)
    layer, head = np.divmod(np.arange(n_layers * n_heads), n_heads)
    return pd.DataFrame({"layer": layer, "head": head, "k_star": prof.params.k.astype(int),
                         "minority_weight": prof.target_weight, "separation_score": prof.ss,
                         "separation": prof.separation, "bic_gain": prof.criterion_gain})
