"""How a JSON / JSON Lines file was written, so a release can be written the same way, byte for byte.

A cleaned release should differ from its input only by the removed samples; a diff full of re-indentation or
`\\u00e9` escapes hides exactly that. Files written by `json.dump` (any indent, `ensure_ascii` either way,
default or compact separators, LF or CRLF, with or without a final newline or UTF-8 BOM) are re-rendered
identically from the parsed records. The style is guessed from the text, candidates are checked cheaply on
the first record, then verified on the whole file; `exact` says whether one reproduced it. Files from other
writers get the closest style instead: same records, same key order, different whitespace.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

BOM = "\ufeff"
_DEFAULT_SEPARATORS = (", ", ": ")
_ALL_SEPARATORS = ((", ", ": "), (",", ": "), (",", ":"), (", ", ":"))


@dataclass(frozen=True)
class JsonStyle:
    lines: bool = False  # JSON Lines (one record per line) instead of one JSON list
    indent: int | str | None = None
    separators: tuple[str, str] = _DEFAULT_SEPARATORS
    ensure_ascii: bool = True
    newline: str = "\n"
    final_newline: bool = False
    bom: bool = False
    exact: bool = False  # rendering the parsed input reproduced its text exactly

    def render(self, records: Sequence[object]) -> str:
        """The text of a file holding `records`, written in this style."""
        if self.lines:
            body = self.newline.join(
                json.dumps(r, ensure_ascii=self.ensure_ascii, separators=self.separators) for r in records
            )
            end = self.newline if self.final_newline and records else ""
        else:
            body = json.dumps(
                list(records), indent=self.indent, ensure_ascii=self.ensure_ascii, separators=self.separators
            )
            if self.newline != "\n":  # JSON escapes newlines inside strings, so every "\n" here is layout
                body = body.replace("\n", self.newline)
            end = self.newline if self.final_newline else ""
        return (BOM if self.bom else "") + body + end


_ESCAPED = re.compile(r"[^\x20-\x7e\r\n\t]")  # characters json.dumps(ensure_ascii=True) never writes raw


def detect_style(text: str, records: Sequence[object], *, lines: bool) -> JsonStyle:
    """The style that renders `records` back into `text` (the decoded file), or the closest guess."""
    bom = text.startswith(BOM)
    body = text[1:] if bom else text
    newline = "\r\n" if "\r\n" in body else "\n"
    indent = None if lines else _guess_indent(body, newline)
    preferred = _DEFAULT_SEPARATORS if indent is None else (",", ": ")  # what json.dumps uses by default
    # ensure_ascii escapes every character outside " ".."~" (DEL too, although it is ASCII), so text with only
    # those (and the layout's whitespace) was most likely written with it; the other value is tried second.
    ascii_guess = _ESCAPED.search(body) is None
    candidates = [
        JsonStyle(
            lines=lines,
            indent=indent,
            separators=seps,
            ensure_ascii=ensure_ascii,
            newline=newline,
            final_newline=body.endswith(newline),
            bom=bom,
        )
        for ensure_ascii in (ascii_guess, not ascii_guess)
        for seps in (preferred, *(s for s in _ALL_SEPARATORS if s != preferred))
    ]
    plausible = [c for c in candidates if _renders_first_record(c, body, records)] or candidates[:1]
    exact = next((c for c in plausible if c.render(records) == text), None)
    return replace(exact, exact=True) if exact is not None else plausible[0]


def _guess_indent(body: str, newline: str) -> int | str | None:
    """The indent unit: the leading whitespace of the line after "[" (json.dumps puts one record there)."""
    if not body.startswith("[" + newline):
        return None
    unit = re.match(r"[ \t]*", body[1 + len(newline) :]).group()
    return len(unit) if set(unit) <= {" "} else unit


def _renders_first_record(style: JsonStyle, body: str, records: Sequence[object]) -> bool:
    """Cheap check on the first record only: does its rendering start the file?"""
    if not records:
        return True
    one = replace(style, bom=False, final_newline=False).render(records[:1])
    if not style.lines:
        one = one[:-1].removesuffix(style.newline)  # up to the first record's end, before "]"
    return body.startswith(one)
