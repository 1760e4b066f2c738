"""Small builders shared by the data tests."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image


def png(path: Path, size: tuple[int, int] = (8, 8), color: tuple[int, int, int] = (200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def llava(
    sid: object, image: str | None = "img.png", question: str = "What colour?", answer: str = "red"
) -> dict:
    record: dict = {"id": sid}
    if image is not None:
        record["image"] = image
        question = f"<image>\n{question}"
    record["conversations"] = [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    return record


def chat(sid: str, *turns: tuple[object, object], image: str | None = None) -> dict:
    record: dict = {"id": sid}
    if image is not None:
        record["image"] = image
    record["conversations"] = [{"from": who, "value": value} for who, value in turns]
    return record


def write_json(path: Path, records: object, **dump_kwargs: object) -> Path:
    path.write_text(json.dumps(records, **dump_kwargs), encoding="utf-8")
    return path


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


FORMAT_KEYS = ["id", "image", "images", "conversations", "messages", "from", "value", "role", "content", "type",
               "text", "path", "x"]


def json_values(leaves, max_leaves: int = 12):
    """Hypothesis strategy: arbitrary JSON built from `leaves`, with dict keys that the readers look at."""
    from hypothesis import strategies as st

    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(FORMAT_KEYS), inner, max_size=4),
        max_leaves=max_leaves,
    )
