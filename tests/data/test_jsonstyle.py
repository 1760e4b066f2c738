"""Style detection must reproduce any json.dump output byte for byte, and degrade gracefully otherwise."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from poisonguard.data.jsonstyle import BOM, JsonStyle, detect_style

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
records = st.lists(st.dictionaries(st.text(max_size=5), values, max_size=4), max_size=5)
dump_kwargs = st.fixed_dictionaries(
    {
        "indent": st.sampled_from([None, 0, 1, 2, 4, "\t"]),
        "ensure_ascii": st.booleans(),
        "separators": st.sampled_from([None, (",", ":"), (", ", ": "), (",", ": ")]),
    }
)


@settings(max_examples=150, deadline=None)
@given(
    records=records, kwargs=dump_kwargs, final_newline=st.booleans(), crlf=st.booleans(), bom=st.booleans()
)
def test_any_json_dump_output_is_reproduced_exactly(records, kwargs, final_newline, crlf, bom):
    newline = "\r\n" if crlf else "\n"
    text = json.dumps(records, **kwargs).replace("\n", newline) + (newline if final_newline else "")
    text = (BOM if bom else "") + text
    style = detect_style(text, json.loads(text.removeprefix(BOM)), lines=False)
    assert style.exact
    assert style.render(records) == text


@settings(max_examples=100, deadline=None)
@given(records=records, ensure_ascii=st.booleans(), compact=st.booleans(), final_newline=st.booleans())
def test_json_lines_are_reproduced_exactly(records, ensure_ascii, compact, final_newline):
    separators = (",", ":") if compact else None
    lines = [json.dumps(r, ensure_ascii=ensure_ascii, separators=separators) for r in records]
    text = "\n".join(lines) + ("\n" if final_newline and lines else "")
    style = detect_style(text, records, lines=True)
    assert style.exact and style.lines
    assert style.render(records) == text


def test_indent_and_ascii_are_read_from_the_text():
    data = [{"id": "é", "n": 1}, {"id": "b", "n": 2}]
    style = detect_style(json.dumps(data, indent="\t", ensure_ascii=False) + "\n", data, lines=False)
    assert (style.indent, style.ensure_ascii, style.final_newline, style.separators) == (
        "\t",
        False,
        True,
        (",", ": "),
    )


def test_hand_written_json_gets_the_closest_style_and_is_marked_inexact():
    text = '[ {"id":"a" ,  "n": 1},\n{"id": "b", "n": 2} ]'
    data = json.loads(text)
    style = detect_style(text, data, lines=False)
    assert not style.exact
    assert json.loads(style.render(data)) == data


def test_an_empty_json_lines_release_is_an_empty_file():
    style = JsonStyle(lines=True, final_newline=True)
    assert style.render([]) == ""
    assert style.render([{"a": 1}]) == '{"a": 1}\n'


def test_a_raw_del_character_is_read_as_ensure_ascii_off():
    """DEL is ASCII, yet json.dumps(ensure_ascii=True) escapes it: a raw one means the file was written without."""
    records = [{"\x7f": None}]
    text = json.dumps(records[0], ensure_ascii=False)
    style = detect_style(text, records, lines=True)
    assert style.exact and not style.ensure_ascii
    assert style.render(records) == text
