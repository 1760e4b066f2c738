"""One validator of a conversation's turns, whatever input format they were read from.

A reader turns each raw turn into a `ReadTurn` (role, text without placeholders, number of image marks; None
where a field could not be read, which the reader has already reported) and hands the list to
`validate_turns`. It checks the image marks against the images, then the conversation's shape: an optional
system turn, then user and assistant turns alternating from the user, none empty. The shape is judged only
when every turn was readable, because a dropped turn would make the order checks restate the reader's issue.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from poisonguard.data.errors import QuarantineReason, ReasonCode
from poisonguard.data.placeholders import check_placeholders
from poisonguard.data.records import Role, Turn


@dataclass(frozen=True)
class ReadTurn:
    """One raw turn as the reader could read it; None marks a field it could not read."""

    role: Role | None
    text: str | None  # image placeholders removed
    marks: int = 0  # image marks in the turn: `<image>` placeholders and image content blocks

    @property
    def readable(self) -> bool:
        return self.role is not None and self.text is not None


UNREADABLE = ReadTurn(None, None)


def typed_turns(turns: Sequence[ReadTurn]) -> list[Turn]:
    """The readable turns, as the sample's `Turn`s."""
    return [Turn(role=t.role, text=t.text) for t in turns if t.readable]  # type: ignore[arg-type]


def validate_turns(
    sample_id: str, field: str, turns: Sequence[ReadTurn], n_images: int, *, prompt_image: bool
) -> list[QuarantineReason]:
    """Why the turns of sample `sample_id` (at `field`, e.g. "conversations") are unusable; [] if fine.

    `n_images` counts the image references the record gives (readable or not): each needs a mark.
    `prompt_image` says the sample has a usable image, so an empty first user turn still asks something.
    """
    roles = [t.role or "" for t in turns]
    reasons = check_placeholders(sample_id, field, roles, [t.marks for t in turns], n_images)
    if all(t.readable for t in turns):
        reasons += check_shape(sample_id, field, typed_turns(turns), prompt_image=prompt_image)
    return reasons


def check_shape(
    sample_id: str, field: str, turns: Sequence[Turn], *, prompt_image: bool
) -> list[QuarantineReason]:
    """An optional system turn, then user and assistant turns alternating from the user; none empty."""
    roles = [t.role for t in turns]
    reasons = _order(sample_id, field, roles)
    if "assistant" not in roles:
        reasons.append(
            QuarantineReason.at(
                ReasonCode.NO_ASSISTANT_TURN, sample_id, field, "no answer: there is no assistant turn"
            )
        )
    first_user = roles.index("user") if "user" in roles else None
    empty = [
        k
        for k, turn in enumerate(turns)
        if not turn.text.strip() and not (k == first_user and prompt_image)  # an image alone is a prompt
    ]
    if empty:
        reasons.append(
            QuarantineReason.at(
                ReasonCode.EMPTY_TURN,
                sample_id,
                f"{field}[{empty[0]}]",
                f"turn {empty[0]} is empty or whitespace-only"
                if len(empty) == 1
                else f"turns {', '.join(map(str, empty))} are empty or whitespace-only",
            )
        )
    return reasons


def _order(sample_id: str, field: str, roles: list[str]) -> list[QuarantineReason]:
    """The first problem with the order of the roles, if any: no user turn, a first turn not the user's, or
    two turns of one side in a row."""
    if "user" not in roles:
        return [QuarantineReason.at(ReasonCode.NO_USER_TURN, sample_id, field, "no turn from the user")]
    start = 1 if roles[0] == "system" else 0
    if roles[start] != "user":
        return [
            QuarantineReason.at(
                ReasonCode.FIRST_TURN_NOT_USER,
                sample_id,
                f"{field}[{start}]",
                f"the conversation opens with {_a(roles[start])} turn; it must open with the user "
                "(after an optional system turn)",
            )
        ]
    for k in range(start, len(roles)):
        expected = "user" if (k - start) % 2 == 0 else "assistant"
        if roles[k] != expected:
            return [
                QuarantineReason.at(
                    ReasonCode.TURN_ORDER,
                    sample_id,
                    f"{field}[{k}]",
                    f"turn {k} is {_a(roles[k])} turn where {_a(expected)} turn belongs; user and "
                    "assistant turns must alternate",
                )
            ]
    return []


def _a(role: str) -> str:
    return f"an {role}" if role == "assistant" else f"a {role}"
