"""The data contract: input formats <-> one typed record, validation into quarantine reasons, safe images."""

from poisonguard.data.dataset import Dataset, read_dataset
from poisonguard.data.errors import DataError, ImageError, QuarantineReason, ReasonCode
from poisonguard.data.images import load_image, resolve_image_path
from poisonguard.data.limits import Limits
from poisonguard.data.records import Sample, Turn
from poisonguard.data.validation import validate
from poisonguard.data.writer import write_dataset

__all__ = [
    "DataError",
    "Dataset",
    "ImageError",
    "Limits",
    "QuarantineReason",
    "ReasonCode",
    "Sample",
    "Turn",
    "load_image",
    "read_dataset",
    "resolve_image_path",
    "validate",
    "write_dataset",
]
