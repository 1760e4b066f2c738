"""`<image>` placeholders: removing them from turn text, and checking them against the image references.

Both formats mark where an image goes (LLaVA with `<image>` in the text, HF messages with image content blocks
or `<image>`); a mismatch between marks and images makes the model see an image with no slot or a slot with no
image, which LLaVA-style training either crashes on or learns garbage from.
"""

from __future__ import annotations

from collections.abc import Sequence

from poisonguard.data.errors import QuarantineReason, ReasonCode
from poisonguard.data.records import IMAGE_PLACEHOLDER


def strip_placeholders(text: str) -> tuple[str, int]:
    """`text` without its placeholders (and the newline that separated each), stripped; plus their count.

    "<image>\\nWhat is this?" and "What is this?\\n<image>" both give "What is this?", as LLaVA's own
    preprocessing does.
    """
    parts = text.split(IMAGE_PLACEHOLDER)
    if len(parts) == 1:
        return text, 0
    joined = parts[0]
    for part in parts[1:]:
        if part.startswith("\n"):
            part = part[1:]
        elif joined.endswith("\n"):
            joined = joined[:-1]
        joined += part
    return joined.strip(), len(parts) - 1


def check_placeholders(
    sample_id: str, field: str, roles: Sequence[str], marks: Sequence[int], n_images: int
) -> list[QuarantineReason]:
    """Reasons why the image marks per turn (`marks[k]` for turn `roles[k]`) do not fit `n_images` images.

    `roles[k]` is "" for a turn whose role could not be read.

    Every mark must sit in the first user turn, where `Sample.messages()` puts the images.
    """
    total = sum(marks)
    reasons: list[QuarantineReason] = []
    if total == 0 and n_images:
        reasons.append(
            QuarantineReason.at(
                ReasonCode.IMAGE_WITHOUT_PLACEHOLDER,
                sample_id,
                field,
                f"{n_images} image(s) given but no {IMAGE_PLACEHOLDER} placeholder marks where they go",
            )
        )
    elif total and not n_images:
        reasons.append(
            QuarantineReason.at(
                ReasonCode.PLACEHOLDER_WITHOUT_IMAGE,
                sample_id,
                field,
                f"{total} {IMAGE_PLACEHOLDER} placeholder(s) but no image given",
            )
        )
    elif total != n_images:
        reasons.append(
            QuarantineReason.at(
                ReasonCode.PLACEHOLDER_COUNT_MISMATCH,
                sample_id,
                field,
                f"{total} {IMAGE_PLACEHOLDER} placeholder(s) for {n_images} image(s)",
            )
        )
    first_user = next((k for k, role in enumerate(roles) if role == "user"), None)
    # A turn whose role could not be read ("") is already reported; where its images belong is unknowable.
    stray = [k for k, count in enumerate(marks) if count and roles[k] and k != first_user]
    if stray:
        reasons.append(
            QuarantineReason.at(
                ReasonCode.PLACEHOLDER_MISPLACED,
                sample_id,
                f"{field}[{stray[0]}]",
                f"image placeholder in turn {stray[0]} ({roles[stray[0]]}); images belong in the first user "
                "turn",
            )
        )
    return reasons
