"""From stored extractions to the detectors' input: the `FeatureSet` of a screened drop, and its files.

The fine-tuned and the base model's extractions of the same samples are paired here (base-model
differencing needs both), the label-free strata are computed from the base model, and the per-sample
projector-drift scores join as `extra_scores`. The answer-span log-probabilities (`span.npz` of each model,
extract/span.py) join when both models have them: an extraction made without them (an older folder, the
Prefect shard flow) still gives the decision features, and the `span` detector is then left out. The pipeline's `profile_heads` stage and the MLflow scoring of
a registered detector on a new drop both build features through `build_features`, so they cannot disagree.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from poisonguard.atomic import atomic_path
from poisonguard.detect.features import FeatureSet
from poisonguard.detect.strata import label_free_strata
from poisonguard.extract.span import SPAN_FILE, load_span
from poisonguard.extract.storage import load_extraction

DRIFT_FILE = "drift_scores.npz"
_FEATURE_ARRAYS = ("alloc", "alloc_base", "strata", "vis_entropy", "hidden", "hidden_base", "answer_logp",
                   "answer_logp_base")


def build_features(extract_dir: str | Path, *, strata_k: int, seed: int = 0,
                   drift_file: str | Path | None = None) -> FeatureSet:
    """FeatureSet of an extraction folder holding `finetuned/` and `base/`. Drift scores come from
    `drift_file` when given, else from `extract_dir/drift_scores.npz` when that exists (a screen's layout)."""
    folder = Path(extract_dir)
    ft = load_extraction(folder / "finetuned")
    base = load_extraction(folder / "base")
    if list(ft.ids) != list(base.ids):
        raise ValueError("fine-tuned and base extractions cover different samples; re-run extraction")
    drift = Path(drift_file) if drift_file is not None else folder / DRIFT_FILE
    extra = load_drift_scores(drift, ft.ids) if drift.exists() else {}
    span_ft, span_base = load_span_pair(folder, ft.ids)
    return FeatureSet(ids=np.asarray(ft.ids), alloc=ft.alloc, alloc_base=base.alloc,
                      strata=label_free_strata(base.hidden, strata_k, seed), vis_entropy=ft.vis_entropy,
                      hidden=ft.hidden, hidden_base=base.hidden, answer_logp=span_ft, answer_logp_base=span_base,
                      extra_scores=extra)


def load_span_pair(extract_dir: Path, ids) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(fine-tuned, base) answer-span log-probabilities, (N, T) each, or (None, None) when either model's
    `span.npz` is missing. Both must have scored the very same answer tokens."""
    paths = [extract_dir / name / SPAN_FILE for name in ("finetuned", "base")]
    if not all(p.exists() for p in paths):
        return None, None
    ft, base = (load_span(p, ids=ids) for p in paths)
    if not np.array_equal(ft.tokens, base.tokens):
        raise ValueError(f"{extract_dir}: the fine-tuned and base span passes scored different answer tokens "
                         "(different tokenizers?); re-run extraction")
    return ft.logp, base.logp


def save_drift_scores(ids, scores: dict[str, np.ndarray], path: str | Path) -> None:
    """Per-sample drift scores aligned with `ids` (an empty `scores` records that none were computed)."""
    with atomic_path(path, ".npz") as tmp:
        np.savez(tmp, ids=np.asarray(ids, dtype=str), **scores)


def load_drift_scores(path: str | Path, ids) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        if list(z["ids"]) != list(ids):
            raise ValueError(f"{path} covers different samples than the extraction")
        return {k: z[k] for k in z.files if k != "ids"}


def save_features(features: FeatureSet, path: str | Path) -> None:
    arrays = {"ids": np.asarray(features.ids)}
    for name in _FEATURE_ARRAYS:
        value = getattr(features, name)
        if value is not None:
            arrays[name] = value
    for name, value in features.extra_scores.items():
        arrays[f"extra__{name}"] = value
    with atomic_path(path, ".npz") as tmp:
        np.savez(tmp, **arrays)


def load_features(path: str | Path) -> FeatureSet:
    with np.load(path, allow_pickle=False) as z:
        kw = {k: z[k] for k in z.files if not k.startswith("extra__")}
        extra = {k[len("extra__"):]: z[k] for k in z.files if k.startswith("extra__")}
    return FeatureSet(extra_scores=extra, **kw)
