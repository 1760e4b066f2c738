"""HF chat-messages records -> `Sample`.

`{"id"?, "messages": [{"role", "content": str | [block, ...]}], "images"?: [path, ...]}`. A content block is
`{"type": "text", "text": ...}` or `{"type": "image"}`; an image block either takes the next path from
"images" (a slot) or carries its own under "image", "path" or "url". `<image>` in text also counts as a slot
(the LLaMA-Factory convention). `Sample.images` lists "images" first, then inline paths in message order. The
turns are checked by `validate_turns`, as LLaVA's are.
"""

from __future__ import annotations

from poisonguard.data.errors import QuarantineReason, ReasonCode, json_type
from poisonguard.data.fields import not_an_object, read_image_ref, read_role, read_text
from poisonguard.data.placeholders import strip_placeholders
from poisonguard.data.records import Role, Sample
from poisonguard.data.turns import UNREADABLE, ReadTurn, typed_turns, validate_turns

ROLES: dict[str, Role] = {"system": "system", "user": "user", "assistant": "assistant"}
IMAGE_KEYS = ("image", "path", "url")


def parse_hf_messages(raw: object, sample_id: str, index: int) -> Sample:
    sample = Sample(id=sample_id, index=index, images=[], turns=[], raw=raw)  # type: ignore[arg-type]
    if not isinstance(raw, dict):
        sample.issues.append(not_an_object(sample))
        return sample
    listed = raw.get("images")
    if listed is None:
        listed = []
    if not isinstance(listed, list):
        sample.issues.append(
            QuarantineReason.at(
                ReasonCode.INVALID_IMAGE_REF,
                sample_id,
                "images",
                f"expected a list of paths, got {json_type(listed)}",
            )
        )
        listed = []
    for k, ref in enumerate(listed):
        read_image_ref(ref, f"images[{k}]", sample)
    messages = raw.get("messages")
    if not isinstance(messages, list):
        what = (
            "is missing or null" if messages is None else f"is {json_type(messages)}, not a list of messages"
        )
        sample.issues.append(
            QuarantineReason.at(ReasonCode.MISSING_CONVERSATION, sample_id, "messages", what)
        )
        return sample
    turns: list[ReadTurn] = []
    inline_images = 0
    for i, message in enumerate(messages):
        turn, inline = _read_message(message, f"messages[{i}]", sample)
        turns.append(turn)
        inline_images += inline
    sample.turns = typed_turns(turns)
    sample.issues += validate_turns(
        sample_id, "messages", turns, len(listed) + inline_images, prompt_image=bool(sample.images)
    )
    return sample


def _read_message(message: object, field: str, sample: Sample) -> tuple[ReadTurn, int]:
    """The message as a turn (its marks: image slots and inline image blocks), and its inline image count."""
    if not isinstance(message, dict) or "role" not in message or "content" not in message:
        sample.issues.append(
            QuarantineReason.at(
                ReasonCode.MALFORMED_TURN,
                sample.id,
                field,
                "a message must be an object with 'role' and 'content'",
            )
        )
        return UNREADABLE, 0
    role = read_role(message["role"], ROLES, f"{field}.role", sample)
    text, slots, inline = _read_content(message["content"], f"{field}.content", sample)
    return ReadTurn(role, text, slots + inline), inline


def _read_content(content: object, field: str, sample: Sample) -> tuple[str | None, int, int]:
    """(text without placeholders or None if unusable, image slots, inline image blocks) of one message."""
    if isinstance(content, str):
        text, slots = strip_placeholders(content)
        return text, slots, 0
    if not isinstance(content, list):
        sample.issues.append(
            QuarantineReason.at(
                ReasonCode.NON_STRING_VALUE,
                sample.id,
                field,
                f"expected a string or a list of content blocks, got {json_type(content)}",
            )
        )
        return None, 0, 0
    pieces: list[str] = []
    slots = inline = 0
    usable = True
    for j, block in enumerate(content):
        block_field = f"{field}[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            value = read_text(block.get("text"), f"{block_field}.text", sample)
            usable &= value is not None
            if value is not None:
                piece, count = strip_placeholders(value)
                pieces.append(piece)
                slots += count
        elif kind == "image":
            key = next((k for k in IMAGE_KEYS if block.get(k) is not None), None)
            if key is None:
                slots += 1
            else:
                read_image_ref(block[key], f"{block_field}.{key}", sample)
                inline += 1
        else:
            what = (
                f"unknown content type {kind!r}"
                if isinstance(block, dict)
                else f"{json_type(block)}, not a block"
            )
            sample.issues.append(
                QuarantineReason.at(
                    ReasonCode.UNKNOWN_CONTENT_TYPE,
                    sample.id,
                    block_field,
                    f"{what}; expected a block of type 'text' or 'image'",
                )
            )
            usable = False
    return ("\n".join(pieces) if usable else None), slots, inline
