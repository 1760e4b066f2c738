"""Read + validate a dataset in one call, and hand out a safe image loader bound to its image folder."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import Image

from poisonguard.data.dataset import Dataset, read_dataset
from poisonguard.data.errors import QuarantineReason
from poisonguard.data.images import load_image
from poisonguard.data.limits import Limits
from poisonguard.data.records import Sample
from poisonguard.data.validation import validate


@dataclass
class CheckedDataset:
    """A dataset with its per-sample verdict from validation: `reasons[id]` empty means usable."""

    dataset: Dataset
    reasons: dict[str, list[QuarantineReason]]
    limits: Limits

    @property
    def ok(self) -> list[Sample]:
        return [s for s in self.dataset.samples if not self.reasons.get(s.id)]

    @property
    def quarantined(self) -> list[Sample]:
        return [s for s in self.dataset.samples if self.reasons.get(s.id)]

    def image_loader(self, cache_size: int = 0) -> Callable[[str], Image.Image]:
        return image_loader(self.dataset.image_root, self.limits, cache_size)

    def digests(self, samples: list[Sample]) -> list[str]:
        """Content fingerprints of `samples` (turns and image bytes), for resumable work keyed on them."""
        from poisonguard.data.fingerprint import sample_digest

        return [sample_digest(s, self.dataset.image_root, self.limits) for s in samples]


def image_loader(image_root: str | Path, limits: Limits | None = None,
                 cache_size: int = 0) -> Callable[[str], Image.Image]:
    """`ref -> PIL RGB` through the safe loader (path checks, bomb limits), optionally memoised."""
    root = Path(image_root)
    lim = limits or Limits()

    def load(ref: str) -> Image.Image:
        return load_image(ref, root, lim)

    return lru_cache(maxsize=cache_size)(load) if cache_size else load


def load_checked(path: str | Path, image_folder: str | Path | None = None, limits: Limits | None = None,
                 checks=()) -> CheckedDataset:
    """Read (raises DataError on an unusable file) and validate (per-sample quarantine reasons)."""
    return check_dataset(read_dataset(path, image_root=image_folder), limits, checks)


def check_dataset(ds: Dataset, limits: Limits | None = None, checks=()) -> CheckedDataset:
    """Validate an already read dataset (so a caller can refuse an unreadable file before loading a model)."""
    limits = limits or Limits()
    return CheckedDataset(ds, validate(ds, limits, checks=checks), limits)
