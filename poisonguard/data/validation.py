"""Per-sample validation: every sample gets a (possibly empty) list of quarantine reasons, none is dropped.

`validate` combines what the reader already noted (`Sample.issues`, including its check of the turns, see
turns.py) with format-independent checks: the conversation's length, the number of images and each image file
(opened with `load_image`, so a sample that passes here also loads later). More checks, such as a
tokenizer-based context-length check, plug in through `checks`; they run only on samples that passed
everything else, because they assume a well-formed sample (a chat template fed a broken conversation fails for
reasons already reported).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from poisonguard.data.dataset import Dataset
from poisonguard.data.errors import ImageError, QuarantineReason, ReasonCode
from poisonguard.data.images import load_image
from poisonguard.data.limits import Limits
from poisonguard.data.records import Sample

Check = Callable[[Sample], Iterable[QuarantineReason]]


def validate(
    dataset: Dataset, limits: Limits | None = None, checks: Sequence[Check] = ()
) -> dict[str, list[QuarantineReason]]:
    """Map every sample id, in input order, to its reasons; an empty list means the sample is ok."""
    limits = limits or Limits()
    field = "conversations" if dataset.format == "llava" else "messages"
    image_errors: dict[str, ImageError | None] = {}  # many samples share one image file
    verdicts: dict[str, list[QuarantineReason]] = {}
    for sample in dataset.samples:
        reasons = list(sample.issues)
        reasons += check_length(sample, field, limits)
        reasons += check_images(sample, dataset.image_root, limits, image_errors)
        if not reasons:
            for check in checks:
                reasons += check(sample)
        verdicts[sample.id] = reasons
    return verdicts


def check_length(sample: Sample, field: str, limits: Limits) -> list[QuarantineReason]:
    total = sum(len(t.text) for t in sample.turns)
    if total <= limits.max_prompt_chars:
        return []
    return [
        QuarantineReason.at(
            ReasonCode.CONVERSATION_TOO_LONG,
            sample.id,
            field,
            f"{total:,} characters over all turns, over the limit of {limits.max_prompt_chars:,}",
        )
    ]


def check_images(
    sample: Sample, image_root: Path, limits: Limits, image_errors: dict[str, ImageError | None]
) -> list[QuarantineReason]:
    """The image count, then each image file; `image_errors` caches outcomes by reference across samples."""
    fields = sample.image_fields or [f"images[{k}]" for k in range(len(sample.images))]
    reasons: list[QuarantineReason] = []
    if len(sample.images) > limits.max_images:
        reasons.append(
            QuarantineReason.at(
                ReasonCode.TOO_MANY_IMAGES,
                sample.id,
                fields[limits.max_images],
                f"{len(sample.images)} images; the model takes at most {limits.max_images}",
            )
        )
    for ref, field in zip(sample.images, fields, strict=True):
        if ref not in image_errors:
            image_errors[ref] = _image_error(ref, image_root, limits)
        error = image_errors[ref]
        if error is not None:
            reasons.append(QuarantineReason.at(error.code, sample.id, field, error.detail))
    return reasons


def _image_error(ref: str, image_root: Path, limits: Limits) -> ImageError | None:
    try:
        load_image(ref, image_root, limits).close()
    except ImageError as exc:
        return exc
    return None
