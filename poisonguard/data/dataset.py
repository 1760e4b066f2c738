"""Reading a dataset file (LLaVA JSON or HF messages; JSON list or JSON Lines) into `Sample`s.

The format is detected from the records, not the file name: the first record with "conversations" makes it
LLaVA, with "messages" HF messages. JSON Lines is recognised by a .jsonl/.ndjson suffix, by a JSON document
followed by more ("Extra data"), or by a single top-level sample object. Everything the writer needs to write
the file back in its own format travels in `Dataset.style`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from poisonguard.data.errors import DataError, json_type
from poisonguard.data.hfmessages import parse_hf_messages
from poisonguard.data.ids import MISSING, assign_ids
from poisonguard.data.jsonstyle import BOM, JsonStyle, detect_style
from poisonguard.data.llava import parse_llava
from poisonguard.data.records import Sample

Format = Literal["llava", "hf_messages"]
LINES_SUFFIXES = (".jsonl", ".ndjson")
_PARSERS: dict[Format, Callable[[object, str, int], Sample]] = {
    "llava": parse_llava,
    "hf_messages": parse_hf_messages,
}


@dataclass
class Dataset:
    """A parsed input file. Sample ids are unique (see ids.py); `image_root` is where image paths start."""

    format: Format
    path: Path
    image_root: Path
    samples: list[Sample]
    style: JsonStyle

    @property
    def ids(self) -> list[str]:
        return [s.id for s in self.samples]


def read_dataset(path: str | Path, image_root: str | Path | None = None) -> Dataset:
    """Parse `path`; images are looked up under `image_root` (default: the file's folder).

    Raises `DataError` when the file as a whole is unusable. Problems with single records do not raise: they
    are recorded on the samples (`Sample.issues`) and reported by `validate`.
    """
    path = Path(path)
    text = _read_text(path)
    records, lines = _parse(text.removeprefix(BOM), path)
    fmt = _detect_format(records, path)
    raw_ids = [r.get("id", MISSING) if isinstance(r, dict) else MISSING for r in records]
    # HF messages make ids optional, but only file-wide: a file where some records have one and others not
    # has lost ids by mistake.
    ids_required = fmt == "llava" or any(isinstance(r, dict) and "id" in r for r in records)
    samples = []
    for index, (record, (sample_id, id_issue)) in enumerate(
        zip(records, assign_ids(raw_ids, required=ids_required), strict=True)
    ):
        sample = _PARSERS[fmt](record, sample_id, index)
        if id_issue is not None:
            sample.issues.insert(0, id_issue)
        samples.append(sample)
    return Dataset(
        format=fmt,
        path=path,
        image_root=Path(image_root) if image_root is not None else path.parent,
        samples=samples,
        style=detect_style(text, records, lines=lines),
    )


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"{path}: not valid UTF-8 at line {line} (byte {exc.start}: "
            f"{data[exc.start : exc.start + 1]!r}); JSON files must be UTF-8"
        ) from None


def _parse(text: str, path: Path) -> tuple[list[object], bool]:
    """(records, is JSON Lines)."""
    if path.suffix.lower() in LINES_SUFFIXES:
        return _parse_lines(text, path), True
    if not text.strip():
        raise DataError(f"{path}: the file is empty; expected a JSON list of samples or JSON Lines")
    try:
        top = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data" and _starts_with_object_line(text):  # JSON Lines under another name
            return _parse_lines(text, path), True
        raise DataError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if isinstance(top, dict) and ("conversations" in top or "messages" in top):
        return [top], True
    if not isinstance(top, list):
        raise DataError(f"{path}: expected a JSON list of samples at the top level, got {json_type(top)}")
    return top, False


def _starts_with_object_line(text: str) -> bool:
    first = next(line for line in text.split("\n") if line.strip())
    try:
        return isinstance(json.loads(first), dict)
    except json.JSONDecodeError:
        return False


def _parse_lines(text: str, path: Path) -> list[object]:
    records = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {lineno}: invalid JSON at column {exc.colno}: {exc.msg}") from None
    return records


def _detect_format(records: list[object], path: Path) -> Format:
    for record in records:
        if isinstance(record, dict) and "conversations" in record:
            return "llava"
        if isinstance(record, dict) and "messages" in record:
            return "hf_messages"
    if not records:
        return "llava"
    first = records[0]
    seen = f"keys {sorted(first)}" if isinstance(first, dict) else json_type(first)
    raise DataError(
        f"{path}: unknown format: no sample has 'conversations' (LLaVA JSON) or 'messages' (HF messages); "
        f"the first sample has {seen}"
    )
