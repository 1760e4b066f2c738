"""The one table of detectors: public name -> class. Config keys, verdict-table columns (`flag_<name>`,
`p_<name>`), JSON states and MLflow versions all use these names and no others.

`fused` is TCAP+ with the projector-drift annotators switched on (its `fuse_projector` parameter); it has a
name of its own because the benchmark compares the two settings side by side.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from poisonguard.detect.activation_clustering import ActivationClusteringDetector
from poisonguard.detect.base import Detector
from poisonguard.detect.bye import BYEDetector
from poisonguard.detect.projector import ProjectorDriftDetector
from poisonguard.detect.shift import DecisionShiftDetector
from poisonguard.detect.span import AnswerSpanDetector
from poisonguard.detect.spectral import SpectralSignatureDetector
from poisonguard.detect.tcap import TCAPDetector
from poisonguard.detect.tcap_plus import FusedDetector, TCAPPlusDetector

DETECTORS: dict[str, type[Detector]] = {cls.name: cls for cls in (
    DecisionShiftDetector, AnswerSpanDetector, FusedDetector, TCAPPlusDetector, TCAPDetector, ProjectorDriftDetector, BYEDetector,
    SpectralSignatureDetector, ActivationClusteringDetector)}

# Detectors that read the projector-drift scores (`FeatureSet.extra_scores`); they are left out of a screen
# whose data has too few images to score (see `poisonguard.pipeline.gmm`).
USES_PROJECTOR = ("fused", "projector")
# Detectors that read the answer-span log-probabilities (`FeatureSet.answer_logp`); left out of a screen whose
# extraction has none (see `poisonguard.pipeline.gmm`).
USES_ANSWER_SPAN = ("span",)


def detector_class(name: str) -> type[Detector]:
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; available: {', '.join(DETECTORS)}")
    return DETECTORS[name]


def make_detector(name: str, params: Mapping[str, Any] | None = None) -> Detector:
    """An unfitted detector; `params` are its declared parameters (unknown ones are refused by name)."""
    return detector_class(name)(**dict(params or {}))


def make_detectors(params_by_name: Mapping[str, Mapping[str, Any] | None]) -> dict[str, Detector]:
    """Unfitted detectors in the given order, each with its parameters."""
    return {name: make_detector(name, params) for name, params in params_by_name.items()}


def load_detector(state: dict[str, Any]) -> Detector:
    """Rebuild a fitted detector from its `to_state()` output."""
    return detector_class(str(state.get("detector"))).from_state(state)


def load_detectors(states: Mapping[str, dict[str, Any]]) -> dict[str, Detector]:
    return {name: load_detector(state) for name, state in states.items()}
