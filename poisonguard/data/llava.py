"""LLaVA JSON records -> `Sample`.

`{"id", "image"?, "conversations": [{"from": "human"|"gpt"|"system", "value": str}, ...]}`. "image" is one
path or (LLaVA-OneVision style) a list of paths. Whatever cannot be read into the typed record is recorded as
an issue on the sample instead of raising: one bad record must not stop a whole file.
"""

from __future__ import annotations

from poisonguard.data.errors import QuarantineReason, ReasonCode, json_type
from poisonguard.data.fields import not_an_object, read_image_ref, read_role, read_text
from poisonguard.data.placeholders import check_placeholders, strip_placeholders
from poisonguard.data.records import Role, Sample, Turn

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
    roles: list[str] = []
    marks: list[int] = []
    for k, turn in enumerate(conversation):
        field = f"conversations[{k}]"
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            sample.issues.append(
                QuarantineReason.at(
                    ReasonCode.MALFORMED_TURN,
                    sample_id,
                    field,
                    "a turn must be an object with 'from' and 'value'",
                )
            )
            roles.append("")
            marks.append(0)
            continue
        role = read_role(turn["from"], ROLES, f"{field}.from", sample)
        value = read_text(turn["value"], f"{field}.value", sample)
        text, count = strip_placeholders(value) if value is not None else ("", 0)
        roles.append(role or "")
        marks.append(count)
        if role is not None and value is not None:
            sample.turns.append(Turn(role=role, text=text))
    sample.issues += check_placeholders(sample_id, "conversations", roles, marks, len(refs))
    return sample
