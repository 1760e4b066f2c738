"""Label-free detection of poisoned samples: head profiling, batched GMMs, separation scores, Dawid–Skene EM,
and detectors as objects (decision shift, TCAP as published, TCAP+ and its projector fusion, projector drift,
BYE, spectral signatures, activation clustering), named in one registry (`detect.registry`)."""

from poisonguard.detect.activation_clustering import ActivationClusteringDetector
from poisonguard.detect.base import DetectionResult, Detector, to_jsonable
from poisonguard.detect.bye import BYEDetector
from poisonguard.detect.features import FeatureSet
from poisonguard.detect.metrics import evaluate
from poisonguard.detect.projector import ProjectorDriftDetector
from poisonguard.detect.registry import DETECTORS, load_detector, make_detector, make_detectors
from poisonguard.detect.shift import DecisionShiftDetector
from poisonguard.detect.span import AnswerSpanDetector
from poisonguard.detect.spectral import SpectralSignatureDetector
from poisonguard.detect.tcap import TCAPDetector
from poisonguard.detect.tcap_plus import FusedDetector, TCAPPlusDetector

__all__ = [
    "DETECTORS",
    "ActivationClusteringDetector",
    "AnswerSpanDetector",
    "BYEDetector",
    "DecisionShiftDetector",
    "DetectionResult",
    "Detector",
    "FeatureSet",
    "FusedDetector",
    "ProjectorDriftDetector",
    "SpectralSignatureDetector",
    "TCAPDetector",
    "TCAPPlusDetector",
    "evaluate",
    "load_detector",
    "make_detector",
    "make_detectors",
    "to_jsonable",
]
