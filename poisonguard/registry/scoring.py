"""Scoring new data with a registered detector: extraction folders in, one verdict row per sample out.

This is the one place that maps a report's detector.json and an extraction onto a Detector and its
FeatureSet, so a detector that needs more inputs changes these functions and nothing else. Two layouts:

- `poisonguard screen`'s: detector.json = {"default": name, "detectors": {name: state}} and an extraction
  folder holding `finetuned/` and `base/`; features are built exactly as the screen builds them
  (`poisonguard.extract.features.build_features`: base-model allocations and label-free strata included);
- a single detector state and a single extraction folder (optionally a separate base-model folder).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from poisonguard.detect import Detector, FeatureSet, load_detector
from poisonguard.extract.features import build_features
from poisonguard.extract.storage import load_extraction

DEFAULT_STRATA_K = 8


def load_report_detector(state: dict[str, Any]) -> tuple[str, Detector]:
    """(name, fitted detector) from a detector.json: the bundle's default detector, or the single state."""
    if "detectors" in state:
        name = state.get("default")
        bundle = state["detectors"]
        if name not in bundle:
            raise ValueError(f"detector.json names default {name!r}, which is not among {sorted(bundle)}")
        return str(name), load_detector(bundle[name])
    return str(state.get("detector")), load_detector(state)


def features_from_extraction(extraction_dir: str | Path, base_extraction_dir: str | Path | None = None, *,
                             strata_k: int = DEFAULT_STRATA_K) -> FeatureSet:
    """FeatureSet of one extraction folder (either layout, see the module docstring)."""
    folder = Path(extraction_dir)
    if (folder / "finetuned").is_dir() and (folder / "base").is_dir():
        return build_features(folder, strata_k=strata_k)
    ext = load_extraction(folder)
    base = load_extraction(base_extraction_dir, ids=ext.ids) if base_extraction_dir else None
    return FeatureSet(ids=np.asarray(ext.ids), alloc=ext.alloc,
                      alloc_base=base.alloc if base is not None else None,
                      vis_entropy=ext.vis_entropy, hidden=ext.hidden,
                      hidden_base=base.hidden if base is not None else None)


def score_extractions(detector: Detector, extraction_dirs: Sequence[str],
                      base_extraction_dirs: Sequence[str | None] | None = None, *,
                      strata_k: int = DEFAULT_STRATA_K) -> pd.DataFrame:
    """`id, p_poison, flagged` for every sample of every folder, folders in the given order."""
    bases = list(base_extraction_dirs) if base_extraction_dirs is not None else [None] * len(extraction_dirs)
    if len(bases) != len(extraction_dirs):
        raise ValueError(f"{len(extraction_dirs)} extraction folders but {len(bases)} base folders")
    frames = []
    for folder, base in zip(extraction_dirs, bases, strict=True):
        features = features_from_extraction(folder, base if _given(base) else None, strata_k=strata_k)
        result = detector.score(features)
        frames.append(pd.DataFrame({"id": result.ids.astype(str), "p_poison": result.p_poison.astype(float),
                                    "flagged": result.flagged.astype(bool)}))
    if not frames:
        return pd.DataFrame({"id": pd.Series(dtype=str), "p_poison": pd.Series(dtype=float),
                             "flagged": pd.Series(dtype=bool)})
    return pd.concat(frames, ignore_index=True)


def _given(value: object) -> bool:
    """A base folder cell counts only when it is a non-empty string (DataFrame cells may hold None/NaN)."""
    return isinstance(value, str | Path) and str(value) != ""
