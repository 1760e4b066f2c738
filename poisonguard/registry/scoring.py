"""Scoring new data with a registered detector: extraction folders in, one verdict row per sample out.

This is the one place that maps an extraction (poisonguard.extract storage) onto the detector's FeatureSet,
so a detector that needs more inputs (e.g. strata, extra scores) changes this function and nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from poisonguard.detect import Detector, FeatureSet

OUTPUT_COLUMNS = ("id", "p_poison", "flagged")


def features_from_extraction(extraction_dir: str | Path, base_extraction_dir: str | Path | None = None
                             ) -> FeatureSet:
    """FeatureSet of one extraction folder; `base_extraction_dir` (same ids, base model) gives alloc_base."""
    from poisonguard.extract import load_extraction

    ext = load_extraction(extraction_dir)
    base = load_extraction(base_extraction_dir, ids=ext.ids) if base_extraction_dir else None
    return FeatureSet(ids=np.asarray(ext.ids), alloc=ext.alloc,
                      alloc_base=base.alloc if base is not None else None,
                      vis_entropy=ext.vis_entropy, hidden=ext.hidden)


def score_extractions(detector: Detector, extraction_dirs: Sequence[str],
                      base_extraction_dirs: Sequence[str | None] | None = None) -> pd.DataFrame:
    """`id, p_poison, flagged` for every sample of every folder, folders in the given order."""
    bases = list(base_extraction_dirs) if base_extraction_dirs is not None else [None] * len(extraction_dirs)
    if len(bases) != len(extraction_dirs):
        raise ValueError(f"{len(extraction_dirs)} extraction folders but {len(bases)} base folders")
    frames = []
    for folder, base in zip(extraction_dirs, bases, strict=True):
        result = detector.score(features_from_extraction(folder, base if _given(base) else None))
        frames.append(pd.DataFrame({"id": result.ids.astype(str), "p_poison": result.p_poison.astype(float),
                                    "flagged": result.flagged.astype(bool)}))
    if not frames:
        return pd.DataFrame({"id": pd.Series(dtype=str), "p_poison": pd.Series(dtype=float),
                             "flagged": pd.Series(dtype=bool)})
    return pd.concat(frames, ignore_index=True)


def _given(value: object) -> bool:
    """A base folder cell counts only when it is a non-empty string (DataFrame cells may hold None/NaN)."""
    return isinstance(value, str | Path) and str(value) != ""
