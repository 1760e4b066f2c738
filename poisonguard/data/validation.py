"""Per-sample validation: every sample gets a (possibly empty) list of quarantine reasons, none is dropped.

`validate` combines what the reader already noted (`Sample.issues`) with format-independent checks: the shape
of the conversation, its length, the number of images and each image file (opened with `load_image`, so
a sample that passes here also loads later). More checks, such as a tokenizer-based context-length check,
plug in through `checks`; they run only on samples that passed everything else, because they assume a
well-formed sample (a chat template fed a broken conversation fails for reasons already reported).
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

# Reader issues that already explain a broken conversation; the shape checks would only restate them.
_CONVERSATION_PARSE_CODES = frozenset(
    {
        ReasonCode.NOT_AN_OBJECT,
        ReasonCode.MISSING_CONVERSATION,
        ReasonCode.MALFORMED_TURN,
        ReasonCode.NON_STRING_VALUE,
        ReasonCode.UNKNOWN_ROLE,
        ReasonCode.UNKNOWN_CONTENT_TYPE,
    }
)


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
        if not any(r.code in _CONVERSATION_PARSE_CODES for r in reasons):
            reasons += check_turns(sample, field)
        reasons += check_length(sample, field, limits)
        reasons += check_images(sample, dataset.image_root, limits, image_errors)
        if not reasons:
            for check in checks:
                reasons += check(sample)
        verdicts[sample.id] = reasons
    return verdicts


def check_turns(sample: Sample, field: str) -> list[QuarantineReason]:
    """An optional system turn, then user and assistant turns alternating from the user; none empty."""
    roles = [t.role for t in sample.turns]
    reasons: list[QuarantineReason] = []
    if "user" not in roles:
        reasons.append(
            QuarantineReason.at(ReasonCode.NO_USER_TURN, sample.id, field, "no turn from the user")
        )
    else:
        start = 1 if roles[0] == "system" else 0
        if roles[start] != "user":
            reasons.append(
                QuarantineReason.at(
                    ReasonCode.FIRST_TURN_NOT_USER,
                    sample.id,
                    f"{field}[{start}]",
                    f"the conversation opens with {_a(roles[start])} turn; it must open with the user "
                    "(after an optional system turn)",
                )
            )
        else:
            for k in range(start, len(roles)):
                expected = "user" if (k - start) % 2 == 0 else "assistant"
                if roles[k] != expected:
                    reasons.append(
                        QuarantineReason.at(
                            ReasonCode.TURN_ORDER,
                            sample.id,
                            f"{field}[{k}]",
                            f"turn {k} is {_a(roles[k])} turn where {_a(expected)} turn belongs; user and "
                            "assistant turns must alternate",
                        )
                    )
                    break
    if "assistant" not in roles:
        reasons.append(
            QuarantineReason.at(
                ReasonCode.NO_ASSISTANT_TURN, sample.id, field, "no answer: there is no assistant turn"
            )
        )
    first_user = roles.index("user") if "user" in roles else None
    empty = [
        k
        for k, turn in enumerate(sample.turns)
        if not turn.text.strip() and not (k == first_user and sample.images)  # an image alone is a prompt
    ]
    if empty:
        reasons.append(
            QuarantineReason.at(
                ReasonCode.EMPTY_TURN,
                sample.id,
                f"{field}[{empty[0]}]",
                f"turn {empty[0]} is empty or whitespace-only"
                if len(empty) == 1
                else f"turns {', '.join(map(str, empty))} are empty or whitespace-only",
            )
        )
    return reasons


def _a(role: str) -> str:
    return f"an {role}" if role == "assistant" else f"a {role}"


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
