"""Label-free detection of poisoned samples: head profiling, batched GMMs, separation scores, Dawid–Skene EM,
and detectors as objects (TCAP as published, TCAP+, decision shift, BYE, spectral signatures, activation clustering)."""

from poisonguard.detect.activation_clustering import ActivationClusteringDetector
from poisonguard.detect.base import DetectionResult, Detector, load_detector, to_jsonable
from poisonguard.detect.bye import BYEDetector
from poisonguard.detect.features import FeatureSet
from poisonguard.detect.metrics import evaluate
from poisonguard.detect.shift import DecisionShiftDetector
from poisonguard.detect.spectral import SpectralSignatureDetector
from poisonguard.detect.tcap import TCAPDetector
from poisonguard.detect.tcap_plus import TCAPPlusDetector

__all__ = [
    "ActivationClusteringDetector",
    "BYEDetector",
    "DecisionShiftDetector",
    "DetectionResult",
    "Detector",
    "FeatureSet",
    "SpectralSignatureDetector",
    "TCAPDetector",
    "TCAPPlusDetector",
    "evaluate",
    "load_detector",
    "to_jsonable",
]
