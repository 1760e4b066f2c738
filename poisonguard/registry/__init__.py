"""MLflow tracking (sqlite backend) of screenings, and the fitted detector in the Model Registry with
`challenger` / `champion` aliases, served as a models-from-code pyfunc over extraction folders."""

from poisonguard.registry.models import (
    CHALLENGER,
    CHAMPION,
    DEFAULT_MODEL_NAME,
    alias_or_none,
    alias_summary,
    promote,
    register_detector,
    restore_alias,
    version_for_alias,
)
from poisonguard.registry.scoring import features_from_extraction, score_extractions
from poisonguard.registry.tracking import log_screening, run_links, tracking, tracking_uri

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "DEFAULT_MODEL_NAME",
    "alias_or_none",
    "alias_summary",
    "features_from_extraction",
    "log_screening",
    "promote",
    "register_detector",
    "restore_alias",
    "run_links",
    "score_extractions",
    "tracking",
    "tracking_uri",
    "version_for_alias",
]
