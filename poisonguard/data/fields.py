"""Reading one typed field of a raw record, noting on the sample what is wrong instead of raising.

Shared by the format readers so that both report the same codes with the same wording.
"""

from __future__ import annotations

from collections.abc import Mapping

from poisonguard.data.errors import QuarantineReason, ReasonCode, json_type
from poisonguard.data.records import Role, Sample


def read_role(value: object, roles: Mapping[str, Role], field: str, sample: Sample) -> Role | None:
    """The role that `value` names in this format's vocabulary `roles`, or None (and an issue)."""
    if not isinstance(value, str):
        sample.issues.append(
            QuarantineReason.at(
                ReasonCode.NON_STRING_VALUE, sample.id, field, f"expected a string, got {json_type(value)}"
            )
        )
        return None
    if value not in roles:
        sample.issues.append(
            QuarantineReason.at(
                ReasonCode.UNKNOWN_ROLE,
                sample.id,
                field,
                f"unknown role {value!r}; expected one of {', '.join(roles)}",
            )
        )
        return None
    return roles[value]


def read_text(value: object, field: str, sample: Sample) -> str | None:
    """`value` if it is a string, else None (and an issue)."""
    if isinstance(value, str):
        return value
    sample.issues.append(
        QuarantineReason.at(
            ReasonCode.NON_STRING_VALUE, sample.id, field, f"expected a string, got {json_type(value)}"
        )
    )
    return None


def read_image_ref(value: object, field: str, sample: Sample) -> None:
    """Add `value` to the sample's images if it is a path string, else note an invalid reference."""
    if isinstance(value, str):
        sample.images.append(value)
        sample.image_fields.append(field)
    else:
        sample.issues.append(
            QuarantineReason.at(
                ReasonCode.INVALID_IMAGE_REF,
                sample.id,
                field,
                f"expected a path string, got {json_type(value)}",
            )
        )


def not_an_object(sample: Sample) -> QuarantineReason:
    return QuarantineReason(
        ReasonCode.NOT_AN_OBJECT,
        f"sample {sample.id!r}: the record at index {sample.index} is {json_type(sample.raw)}, not an object",
    )
