"""LLaVA JSON records -> `Sample`.

`{"id", "image"?, "conversations": [{"from": "human"|"gpt"|"system", "value": str}, ...]}`. "image" is one
path or (LLaVA-OneVision style) a list of paths. Whatever cannot be read into the typed record is recorded as
an issue on the sample instead of raising: one bad record must not stop a whole file. The turns are checked
by `validate_turns`, as HF messages' are.
"""

from __future__ import annotations

from poisonguard.data.errors import QuarantineReason, ReasonCode, json_type
from poisonguard.data.fields import not_an_object, read_image_ref, read_role, read_text
from poisonguard.data.placeholders import strip_placeholders
from poisonguard.data.records import Role, Sample
from poisonguard.data.turns import UNREADABLE, ReadTurn, typed_turns, validate_turns

ROLES: dict[str, Role] = {"human": "user", "gpt": "assistant", "system": "system"}


def parse_llava(raw: object, sample_id: str, index: int) -> Sample:
    sample = Sample(id=sample_id, index=index, images=[], turns=[], raw=raw)  # type: ignore[arg-type]
    if not isinstance(raw, dict):
        sample.issues.append(not_an_object(sample))
        return sample
    image = raw.get("image")
    refs = [] if image is None else image if isinstance(image, list) else [image]
    for k, ref in enumerate(refs):
        read_image_ref(ref, f"image[{k}]" if isinstance(image, list) else "image", sample)
    conversation = raw.get("conversations")
    if not isinstance(conversation, list):
        what = (
            "is missing or null"
            if conversation is None
            else f"is {json_type(conversation)}, not a list of turns"
        )
        sample.issues.append(
            QuarantineReason.at(ReasonCode.MISSING_CONVERSATION, sample_id, "conversations", what)
        )
        return sample
    turns = [_read_turn(turn, f"conversations[{k}]", sample) for k, turn in enumerate(conversation)]
    sample.turns = typed_turns(turns)
    sample.issues += validate_turns(
        sample_id, "conversations", turns, len(refs), prompt_image=bool(sample.images)
    )
    return sample


def _read_turn(turn: object, field: str, sample: Sample) -> ReadTurn:
    if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
        sample.issues.append(
            QuarantineReason.at(
                ReasonCode.MALFORMED_TURN,
                sample.id,
                field,
                "a turn must be an object with 'from' and 'value'",
            )
        )
        return UNREADABLE
    role = read_role(turn["from"], ROLES, f"{field}.from", sample)
    value = read_text(turn["value"], f"{field}.value", sample)
    if value is None:
        return ReadTurn(role, None)
    text, marks = strip_placeholders(value)
    return ReadTurn(role, text, marks)
