"""What can be wrong with input data, at two levels.

A *file-level* problem (the file cannot be read or parsed as a dataset at all) raises `DataError`; the CLI
turns it into exit code 2. A *sample-level* problem never stops the run: the sample is quarantined with a
`QuarantineReason`, so it still has a row in the verdict table and is never released. Reason codes are stable
strings (a `StrEnum`), because reports, GX expectations and people's filters match on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class DataError(ValueError):
    """The input file as a whole is unusable; the message names the file and, where known, line and field."""


class ReasonCode(StrEnum):
    # ids (assigned while reading, see ids.py)
    MISSING_ID = "missing_id"
    DUPLICATE_ID = "duplicate_id"
    INVALID_ID = "invalid_id"
    # structure of the raw record
    NOT_AN_OBJECT = "not_an_object"
    MISSING_CONVERSATION = "missing_conversation"
    MALFORMED_TURN = "malformed_turn"
    NON_STRING_VALUE = "non_string_value"
    UNKNOWN_ROLE = "unknown_role"
    UNKNOWN_CONTENT_TYPE = "unknown_content_type"
    # shape of the conversation
    NO_USER_TURN = "no_user_turn"
    FIRST_TURN_NOT_USER = "first_turn_not_user"
    TURN_ORDER = "turn_order"
    EMPTY_TURN = "empty_turn"
    NO_ASSISTANT_TURN = "no_assistant_turn"
    CONVERSATION_TOO_LONG = "conversation_too_long"
    OVER_TOKEN_BUDGET = "over_token_budget"  # alone longer than the extraction's token budget per batch
    SPECIAL_TOKEN_IN_TEXT = "special_token_in_text"  # the tokenizer would read part of the text as control tokens
    # image placeholders against image references
    PLACEHOLDER_WITHOUT_IMAGE = "placeholder_without_image"
    IMAGE_WITHOUT_PLACEHOLDER = "image_without_placeholder"
    PLACEHOLDER_COUNT_MISMATCH = "placeholder_count_mismatch"
    PLACEHOLDER_MISPLACED = "placeholder_misplaced"
    TOO_MANY_IMAGES = "too_many_images"
    # the image files themselves (also raised by load_image as ImageError)
    INVALID_IMAGE_REF = "invalid_image_ref"
    IMAGE_OUTSIDE_ROOT = "image_outside_root"
    MISSING_IMAGE = "missing_image"
    UNREADABLE_IMAGE = "unreadable_image"
    EMPTY_IMAGE = "empty_image"
    FILE_TOO_LARGE = "file_too_large"
    DECOMPRESSION_BOMB = "decompression_bomb"
    CORRUPT_IMAGE = "corrupt_image"
    # the file as a whole (a usable sample that cannot be screened is not released either)
    TOO_FEW_TO_SCREEN = "too_few_to_screen"


@dataclass(frozen=True)
class QuarantineReason:
    """Why one sample is quarantined: a stable `code` to filter on and a `message` for people."""

    code: str
    message: str

    @classmethod
    def at(cls, code: str, sample_id: str, field: str, detail: str) -> QuarantineReason:
        """A reason whose message names the sample and the field, in the one format every check uses."""
        return cls(code, f"sample {sample_id!r} field {field!r}: {detail}")


class ImageError(ValueError):
    """An image cannot be used; `code` is the same `ReasonCode` the sample is quarantined with."""

    def __init__(self, code: ReasonCode, detail: str):
        super().__init__(detail)
        self.code = code
        self.detail = detail


def json_type(value: object) -> str:
    """The JSON name of a parsed value's type ("an object", "a number", ...), for messages people read."""
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    if type(value) in names:
        return names[type(value)]
    return "a number" if isinstance(value, (int, float)) else type(value).__name__
