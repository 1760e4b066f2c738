"""A corpus of bad inputs with their expected outcomes, for tests and for checking the CLI end to end.

`make_bad_corpus(dir)` writes one small dataset file per case (plus its images) into `dir/cases/<case name>/`
and returns the cases. A case expects a file-level `DataError` ("error"), specific quarantine reasons for named
samples ("quarantine"), or that every sample passes ("ok": awkward but legal input such as 16-bit or CMYK
images). Each file also holds at least one good sample, which must stay ok. Every case holds under the default
`Limits`, so the CLI (which uses them) must give exactly these outcomes. Everything is generated, small and
deterministic; it takes about a second.

`screen_batches(cases, dir)` groups the cases into as few `poisonguard screen` runs as their semantics allow
(merged files with case-prefixed ids and paths), because each run loads a model. The escape attempts aim at
`dir/outside.png`, two levels above a case's files, so they escape a case folder *and* the merged image
folder `dir/cases/`. Each builder's docstring says what its input is; `python -m poisonguard.data.badcorpus`
prints the table of cases and outcomes that the README's "Safety" section shows.
"""

from __future__ import annotations

import json
import os
import re
import struct
import sys
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from poisonguard.data.errors import ReasonCode as R
from poisonguard.data.limits import Limits


@dataclass(frozen=True)
class Case:
    name: str
    path: Path  # the dataset file; images live next to it
    expect: Literal["error", "quarantine", "ok"]
    reasons: Mapping[str, frozenset[str]] = field(default_factory=dict)  # sample id -> exactly these codes
    ok_ids: frozenset[str] = frozenset()  # samples that must pass
    error_mentions: tuple[str, ...] = ()  # text the DataError message must contain
    description: str = ""  # what the input is (the builder's docstring)
    # The case's ids depend on the whole file (positions, repeats, a file-wide choice), so it cannot be merged
    # with other cases into one screen run.
    standalone: bool = False


def make_bad_corpus(out_dir: str | Path) -> list[Case]:
    """Write every case into `out_dir/cases/` (created if needed; rerunning over it is fine) and return them."""
    out = Path(out_dir)
    (out / "cases").mkdir(parents=True, exist_ok=True)
    _png(out / "outside.png")  # a real image outside every case folder, the target of escape attempts
    builders = [
        _malformed_json,
        _wrong_top_level,
        _non_utf8,
        _unknown_format,
        _malformed_jsonl,
        _missing_conversations,
        _wrong_roles,
        _empty_turns,
        _placeholders,
        _several_images,
        _path_dotdot,
        _path_absolute,
        _path_symlink,
        _bad_refs,
        _missing_file,
        _truncated_png,
        _truncated_jpeg,
        _zero_byte,
        _not_an_image,
        _decompression_bomb,
        _huge_image,
        _oversized_file,
        _non_rgb_images,
        _duplicate_ids,
        _missing_ids,
        _long_conversation,
        _non_string_values,
        _hf_unknown_content,
        _hf_without_ids,
        _hf_json_list,
        _text_only,
    ]
    cases = []
    for build in builders:
        name = build.__name__.lstrip("_")
        folder = out / "cases" / name
        folder.mkdir(exist_ok=True)
        description = " ".join((build.__doc__ or "").split())
        cases.append(replace(build(name, folder), description=description))
    return cases


# ---- building blocks -------------------------------------------------------------------------------------


def _sample(
    sid: object, image: object = "img.png", question: str = "What colour is the square?", answer: str = "red"
) -> dict:
    """A LLaVA record; a `None` image makes it text-only, `sid=None` leaves out the id."""
    record: dict = {} if sid is None else {"id": sid}
    if image is not None:
        record["image"] = image
        question = f"<image>\n{question}"
    record["conversations"] = [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    return record


def _chat(*turns: tuple[object, object], sid: str, image: str | None = None) -> dict:
    record: dict = {"id": sid}
    if image is not None:
        record["image"] = image
    record["conversations"] = [{"from": who, "value": value} for who, value in turns]
    return record


def _hf(sid: str | None, user: object, answer: object = "red", images: list | None = None) -> dict:
    record: dict = {} if sid is None else {"id": sid}
    record["messages"] = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    if images is not None:
        record["images"] = images
    return record


def _write_json(folder: Path, records: object) -> Path:
    path = folder / "train.json"
    path.write_text(json.dumps(records, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def _write_jsonl(folder: Path, records: list) -> Path:
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _png(path: Path, size: tuple[int, int] = (16, 16)) -> Path:
    Image.new("RGB", size, (200, 30, 30)).save(path)
    return path


def _noise(size: int = 64) -> Image.Image:
    """Incompressible pixels, so a file cut in half really is missing image data."""
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _good(folder: Path) -> dict:
    _png(folder / "img.png")
    return _sample("good")


def _quarantine(
    name: str,
    path: Path,
    reasons: dict[str, set[str]],
    ok: frozenset[str] | set[str] = frozenset(),
    standalone: bool = False,
) -> Case:
    return Case(
        name,
        path,
        "quarantine",
        {k: frozenset(v) for k, v in reasons.items()},
        frozenset(ok | {"good"}),
        standalone=standalone,
    )


# ---- file-level errors -----------------------------------------------------------------------------------


def _malformed_json(name: str, folder: Path) -> Case:
    """JSON with a syntax error (a missing comma)."""
    path = folder / "train.json"
    path.write_text(
        '[\n  {"id": "good", "conversations": [\n    {"from": "human" "value": "hi"}\n', encoding="utf-8"
    )
    return Case(name, path, "error", error_mentions=("train.json", "line 3"))


def _wrong_top_level(name: str, folder: Path) -> Case:
    """An object at the top level instead of a list of samples."""
    path = _write_json(folder, {"data": [_good(folder)]})
    return Case(name, path, "error", error_mentions=("train.json", "top level", "an object"))


def _non_utf8(name: str, folder: Path) -> Case:
    """Text encoded as Latin-1 instead of UTF-8."""
    path = folder / "train.json"
    text = json.dumps(
        [_good(folder), _sample("cafe", question="Is this a café?")], indent=2, ensure_ascii=False
    )
    path.write_bytes(text.encode("latin-1"))
    line = text[: text.index("é")].count("\n") + 1
    return Case(name, path, "error", error_mentions=("train.json", "UTF-8", f"line {line}"))


def _unknown_format(name: str, folder: Path) -> Case:
    """Records with neither `conversations` (LLaVA) nor `messages` (HF)."""
    path = _write_json(folder, [{"id": "good", "text": "a caption"}, {"id": "b", "prompt": "hi"}])
    return Case(name, path, "error", error_mentions=("train.json", "unknown format", "conversations"))


def _malformed_jsonl(name: str, folder: Path) -> Case:
    """JSON Lines whose second line is cut off."""
    _png(folder / "img.png")
    path = folder / "train.jsonl"
    path.write_text(
        json.dumps(_hf("good", "<image>What?", images=["img.png"])) + '\n{"id": "b", \n', encoding="utf-8"
    )
    return Case(name, path, "error", error_mentions=("train.jsonl", "line 2"))


# ---- record and conversation shape -----------------------------------------------------------------------


def _missing_conversations(name: str, folder: Path) -> Case:
    """No `conversations`, `conversations` a string, a bare string as a sample."""
    records = [
        _good(folder),
        {"id": "noconv", "image": "img.png"},
        {"id": "strconv", "conversations": "hi"},
        "just a string",
    ]
    path = _write_json(folder, records)
    return _quarantine(
        name,
        path,
        {
            "noconv": {R.MISSING_CONVERSATION},
            "strconv": {R.MISSING_CONVERSATION},
            "__index_3": {R.MISSING_ID, R.NOT_AN_OBJECT},
        },
    )


def _wrong_roles(name: str, folder: Path) -> Case:
    """Unknown role, assistant first, a late system turn, two user turns in a row, no user turn (a leading
    system turn is legal).
    """
    records = [
        _good(folder),
        _chat(("human", "Q?"), ("bot", "A"), sid="bot_role"),
        _chat(("gpt", "Hello."), ("human", "Q?"), ("gpt", "A"), sid="gpt_first"),
        _chat(("human", "Q?"), ("system", "Be brief."), ("gpt", "A"), sid="late_system"),
        _chat(("human", "Q?"), ("human", "Q again?"), ("gpt", "A"), sid="user_twice"),
        _chat(("system", "Be brief."), ("gpt", "A"), sid="no_human"),
        _chat(("system", "Be brief."), ("human", "Q?"), ("gpt", "A"), sid="with_system"),
    ]
    return _quarantine(
        name,
        _write_json(folder, records),
        {
            "bot_role": {R.UNKNOWN_ROLE},
            "gpt_first": {R.FIRST_TURN_NOT_USER},
            "late_system": {R.TURN_ORDER},
            "user_twice": {R.TURN_ORDER},
            "no_human": {R.NO_USER_TURN},
        },
        ok={"with_system"},
    )


def _empty_turns(name: str, folder: Path) -> Case:
    """Empty and whitespace-only turns, no answer (an image alone as the prompt is legal)."""
    records = [
        _good(folder),
        _chat(("human", ""), ("gpt", "A"), sid="empty_question"),
        _chat(("human", "Q?"), ("gpt", "  \n\t"), sid="blank_answer"),
        _chat(("human", "Q?"), sid="no_answer"),
        _chat(("human", "<image>"), ("gpt", "red"), sid="image_only_prompt", image="img.png"),
    ]
    return _quarantine(
        name,
        _write_json(folder, records),
        {
            "empty_question": {R.EMPTY_TURN},
            "blank_answer": {R.EMPTY_TURN},
            "no_answer": {R.NO_ASSISTANT_TURN},
        },
        ok={"image_only_prompt"},
    )


def _placeholders(name: str, folder: Path) -> Case:
    """No `<image>` though an image is given, `<image>` without an image, two for one image, one in the answer
    (`<image>` after the question is legal).
    """
    records = [
        _good(folder),
        _chat(("human", "What colour?"), ("gpt", "red"), sid="no_placeholder", image="img.png"),
        _chat(("human", "<image>\nWhat colour?"), ("gpt", "red"), sid="no_image"),
        _chat(
            ("human", "<image>\n<image>\nWhat colour?"),
            ("gpt", "red"),
            sid="two_placeholders",
            image="img.png",
        ),
        _chat(
            ("human", "What colour?"), ("gpt", "<image> red"), sid="placeholder_in_answer", image="img.png"
        ),
        _chat(("human", "What colour?\n<image>"), ("gpt", "red"), sid="placeholder_at_end", image="img.png"),
    ]
    return _quarantine(
        name,
        _write_json(folder, records),
        {
            "no_placeholder": {R.IMAGE_WITHOUT_PLACEHOLDER},
            "no_image": {R.PLACEHOLDER_WITHOUT_IMAGE},
            "two_placeholders": {R.PLACEHOLDER_COUNT_MISMATCH},
            "placeholder_in_answer": {R.PLACEHOLDER_MISPLACED},
        },
        ok={"placeholder_at_end"},
    )


def _several_images(name: str, folder: Path) -> Case:
    """Two images in one sample (the model takes one)."""
    good = _good(folder)
    _png(folder / "img2.png")
    two = _chat(("human", "<image>\n<image>\nSame colour?"), ("gpt", "yes"), sid="two_images")
    two["image"] = ["img.png", "img2.png"]
    return _quarantine(name, _write_json(folder, [good, two]), {"two_images": {R.TOO_MANY_IMAGES}})


def _long_conversation(name: str, folder: Path) -> Case:
    """A 39,000-character prompt, past the model's context."""
    records = [_good(folder), _sample("long", question="Describe it. " * 3000)]  # 39,000 characters
    return _quarantine(name, _write_json(folder, records), {"long": {R.CONVERSATION_TOO_LONG}})


def _non_string_values(name: str, folder: Path) -> Case:
    """Numbers and null where strings belong, a string where a turn object belongs."""
    records = [
        _good(folder),
        _chat(("human", "<image>\nHow many?"), ("gpt", 3), sid="number_answer", image="img.png"),
        _chat((3, "<image>\nHow many?"), ("gpt", "3"), sid="number_role", image="img.png"),
        _chat(("human", "<image>\nHow many?"), ("gpt", None), sid="null_answer", image="img.png"),
        _sample("number_image", image=5),
        {"id": "string_turn", "conversations": ["<image>\nHow many?", {"from": "gpt", "value": "3"}]},
    ]
    return _quarantine(
        name,
        _write_json(folder, records),
        {
            "number_answer": {R.NON_STRING_VALUE},
            "number_role": {R.NON_STRING_VALUE},
            "null_answer": {R.NON_STRING_VALUE},
            "number_image": {R.INVALID_IMAGE_REF},
            "string_turn": {R.MALFORMED_TURN},
        },
    )


# ---- ids -------------------------------------------------------------------------------------------------


def _duplicate_ids(name: str, folder: Path) -> Case:
    """The same id three times, and the number 7 beside the string "7"."""
    records = [_good(folder), _sample("dup"), _sample("dup"), _sample(7), _sample("7"), _sample("dup")]
    return _quarantine(
        name,
        _write_json(folder, records),
        {
            "dup#dup2": {R.DUPLICATE_ID},
            "dup#dup3": {R.DUPLICATE_ID},
            "7#dup2": {R.DUPLICATE_ID},
        },
        ok={"dup", "7"},
        standalone=True,
    )


def _missing_ids(name: str, folder: Path) -> Case:
    """No id, an empty id, a list as id, and a real id equal to a synthesized one."""
    # index 1 has no id, and a later sample already uses "__index_1": the synthesized id must not collide.
    records = [_good(folder), _sample(None), _sample(""), _sample("__index_1"), _sample(None), _sample([1])]
    return _quarantine(
        name,
        _write_json(folder, records),
        {
            "__index_1~2": {R.MISSING_ID},
            "__index_2": {R.MISSING_ID},
            "__index_4": {R.MISSING_ID},
            "__index_5": {R.INVALID_ID},
        },
        ok={"__index_1"},
        standalone=True,
    )


# ---- image paths -----------------------------------------------------------------------------------------


def _path_dotdot(name: str, folder: Path) -> Case:
    """Image paths escaping the image folder with `../` (also hidden as `a/../../..`)."""
    records = [
        _good(folder),
        _sample("dotdot", image="../../outside.png"),
        _sample("sneaky", image="a/../../../outside.png"),
    ]
    (folder / "a").mkdir(exist_ok=True)
    return _quarantine(
        name,
        _write_json(folder, records),
        {"dotdot": {R.IMAGE_OUTSIDE_ROOT}, "sneaky": {R.IMAGE_OUTSIDE_ROOT}},
    )


def _path_absolute(name: str, folder: Path) -> Case:
    """Absolute image paths, outside and inside the image folder."""
    inside = str((folder / "img.png").resolve())
    records = [
        _good(folder),
        _sample("absolute", image=str((folder.parent.parent / "outside.png").resolve())),
        _sample("absolute_inside", image=inside),
    ]
    return _quarantine(
        name,
        _write_json(folder, records),
        {"absolute": {R.IMAGE_OUTSIDE_ROOT}, "absolute_inside": {R.IMAGE_OUTSIDE_ROOT}},
    )


def _path_symlink(name: str, folder: Path) -> Case:
    """Symlinks (to a file, to a folder) leading out of the image folder (one inside is legal)."""
    good = _good(folder)
    for link, target in (("link.png", "../../outside.png"), ("inlink.png", "img.png"), ("dirlink", "../..")):
        if not (folder / link).is_symlink():
            os.symlink(target, folder / link)
    records = [
        good,
        _sample("link_out", image="link.png"),
        _sample("dir_link_out", image="dirlink/outside.png"),
        _sample("link_in", image="inlink.png"),
    ]
    return _quarantine(
        name,
        _write_json(folder, records),
        {"link_out": {R.IMAGE_OUTSIDE_ROOT}, "dir_link_out": {R.IMAGE_OUTSIDE_ROOT}},
        ok={"link_in"},
    )


def _bad_refs(name: str, folder: Path) -> Case:
    """A URL and an empty string as the image path."""
    records = [
        _good(folder),
        _sample("url", image="http://example.com/cat.png"),
        _sample("empty_ref", image=""),
    ]
    return _quarantine(
        name, _write_json(folder, records), {"url": {R.INVALID_IMAGE_REF}, "empty_ref": {R.INVALID_IMAGE_REF}}
    )


# ---- image files -----------------------------------------------------------------------------------------


def _missing_file(name: str, folder: Path) -> Case:
    """An image path to a file that does not exist."""
    records = [_good(folder), _sample("missing", image="nope.png")]
    return _quarantine(name, _write_json(folder, records), {"missing": {R.MISSING_IMAGE}})


def _truncated(name: str, folder: Path, fmt: str, suffix: str) -> Case:
    full = folder / f"full{suffix}"
    _noise().save(full, fmt)
    data = full.read_bytes()
    (folder / f"cut{suffix}").write_bytes(data[: len(data) // 2])
    records = [
        _good(folder),
        _sample("truncated", image=f"cut{suffix}"),
        _sample("complete", image=f"full{suffix}"),
    ]
    return _quarantine(name, _write_json(folder, records), {"truncated": {R.CORRUPT_IMAGE}}, ok={"complete"})


def _truncated_png(name: str, folder: Path) -> Case:
    """A PNG cut in half (a complete one beside it is legal)."""
    return _truncated(name, folder, "PNG", ".png")


def _truncated_jpeg(name: str, folder: Path) -> Case:
    """A JPEG cut in half (a complete one beside it is legal)."""
    return _truncated(name, folder, "JPEG", ".jpg")


def _zero_byte(name: str, folder: Path) -> Case:
    """A zero-byte image file."""
    (folder / "zero.png").write_bytes(b"")
    records = [_good(folder), _sample("zero", image="zero.png")]
    return _quarantine(name, _write_json(folder, records), {"zero": {R.EMPTY_IMAGE}})


def _not_an_image(name: str, folder: Path) -> Case:
    """A text file named `.png`, and a folder named `.png`."""
    (folder / "notes.png").write_text("not an image at all\n")
    (folder / "folder.png").mkdir(exist_ok=True)
    records = [
        _good(folder),
        _sample("text_file", image="notes.png"),
        _sample("directory", image="folder.png"),
    ]
    return _quarantine(
        name,
        _write_json(folder, records),
        {"text_file": {R.CORRUPT_IMAGE}, "directory": {R.UNREADABLE_IMAGE}},
    )


def _chunk(kind: bytes, body: bytes) -> bytes:
    """One PNG chunk: length, type, body, CRC."""
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def write_bomb_png(path: Path, side: int) -> None:
    """A valid-looking PNG whose header claims side x side RGB pixels, with almost no pixel data."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _chunk(b"IEND", b"")
    )


def write_blank_png(path: Path, side: int) -> None:
    """A complete, valid 1-bit greyscale PNG of side x side black pixels (small on disk: it compresses well)."""
    row = b"\0" * (1 + (side + 7) // 8)  # filter byte + packed bits
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(row * side, 9))
        + _chunk(b"IEND", b"")
    )


def _decompression_bomb(name: str, folder: Path) -> Case:
    """A 69-byte PNG whose header claims 100,000 x 100,000 pixels."""
    write_bomb_png(folder / "bomb.png", 100_000)
    records = [_good(folder), _sample("bomb", image="bomb.png")]
    return _quarantine(name, _write_json(folder, records), {"bomb": {R.DECOMPRESSION_BOMB}})


def _huge_image(name: str, folder: Path) -> Case:
    """A genuine, complete 10,000 x 10,000 PNG (over the 89.5 M pixel limit; 12 KB on disk)."""
    write_blank_png(folder / "big.png", 10_000)
    records = [_good(folder), _sample("huge", image="big.png")]
    return _quarantine(name, _write_json(folder, records), {"huge": {R.DECOMPRESSION_BOMB}})


def _oversized_file(name: str, folder: Path) -> Case:
    """An image file over the 64 MiB file-size limit (sparse on disk)."""
    heavy = folder / "heavy.png"
    _png(heavy)
    with open(heavy, "r+b") as f:  # a valid PNG followed by a hole: over the limit, a few KB on disk
        f.truncate(Limits().max_bytes + 1)
    records = [_good(folder), _sample("heavy", image="heavy.png")]
    return _quarantine(name, _write_json(folder, records), {"heavy": {R.FILE_TOO_LARGE}})


def _non_rgb_images(name: str, folder: Path) -> Case:
    """Greyscale, 1-bit, palette (with transparency), alpha, 16-bit, CMYK JPEG and TIFF, animated GIF and PNG,
    WebP, BMP: all legal, all loaded as RGB.
    """
    ramp = np.arange(16 * 16, dtype=np.uint32).reshape(16, 16)
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    palette_with_alpha = Image.new("P", (16, 16), 1)
    writers = {
        "grey.png": lambda p: Image.fromarray(ramp.astype(np.uint8)).save(p),
        "grey_alpha.png": lambda p: Image.new("LA", (16, 16), (90, 128)).save(p),
        "bilevel.png": lambda p: Image.new("1", (16, 16), 1).save(p),
        "palette.png": lambda p: Image.new("RGB", (16, 16), (10, 200, 10)).quantize(4).save(p),
        "palette_alpha.png": lambda p: palette_with_alpha.save(p, transparency=0),
        "rgba.png": lambda p: Image.new("RGBA", (16, 16), (10, 20, 30, 0)).save(p),
        "sixteen_bit.png": lambda p: Image.fromarray((ramp * 257).astype(np.uint16)).save(p),
        "cmyk.jpg": lambda p: Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(p),
        "grey.jpg": lambda p: Image.new("L", (16, 16), 77).save(p),
        "cmyk.tif": lambda p: Image.new("CMYK", (16, 16), (255, 0, 0, 0)).save(p),
        "animated.gif": lambda p: frames[0].save(p, save_all=True, append_images=frames[1:], duration=50),
        "animated.png": lambda p: frames[0].save(p, save_all=True, append_images=frames[1:], duration=50),
        "image.webp": lambda p: frames[0].save(p, lossless=True),
        "image.bmp": lambda p: frames[0].save(p),
    }
    records = [_good(folder)]
    for file_name, write in writers.items():
        write(folder / file_name)
        records.append(_sample(file_name, image=file_name))
    return Case(name, _write_json(folder, records), "ok", ok_ids=frozenset({"good", *writers}))


# ---- HF messages and text-only ---------------------------------------------------------------------------


def _hf_unknown_content(name: str, folder: Path) -> Case:
    """HF messages with audio, video and untyped content blocks, a remote image, role `human` (an inline image
    path is legal).
    """
    _png(folder / "img.png")
    image_then_text = [{"type": "image"}, {"type": "text", "text": "What colour?"}]
    records = [
        _hf("good", image_then_text, images=["img.png"]),
        _hf("inline", [{"type": "image", "path": "img.png"}, {"type": "text", "text": "What colour?"}]),
        _hf("audio", [{"type": "audio", "audio": "a.wav"}, {"type": "text", "text": "What is said?"}]),
        _hf("video", [{"type": "video"}, {"type": "text", "text": "What happens?"}], images=[]),
        _hf("no_type", [{"text": "What colour?"}]),
        _hf(
            "remote", [{"type": "image", "url": "https://example.com/a.png"}, {"type": "text", "text": "Hm?"}]
        ),
        {
            "id": "human_role",
            "messages": [{"role": "human", "content": "Hi?"}, {"role": "assistant", "content": "Hi"}],
        },
    ]
    return _quarantine(
        name,
        _write_jsonl(folder, records),
        {
            "audio": {R.UNKNOWN_CONTENT_TYPE},
            "video": {R.UNKNOWN_CONTENT_TYPE},
            "no_type": {R.UNKNOWN_CONTENT_TYPE},
            "remote": {R.INVALID_IMAGE_REF},
            "human_role": {R.UNKNOWN_ROLE},
        },
        ok={"inline"},
    )


def _hf_without_ids(name: str, folder: Path) -> Case:
    """HF messages without any ids (legal: ids are optional there and come from positions)."""
    _png(folder / "img.png")
    records = [_hf(None, "<image>What colour?", images=["img.png"]), _hf(None, "Say hi.", "hi")]
    return Case(
        name, _write_jsonl(folder, records), "ok", ok_ids=frozenset({"__index_0", "__index_1"}), standalone=True
    )


def _hf_json_list(name: str, folder: Path) -> Case:
    """HF messages as a JSON list: image slots and images that do not match, content a number."""
    _png(folder / "img.png")
    records = [
        {
            "id": "good",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "<image>What colour?"},
                {"role": "assistant", "content": "red"},
            ],
            "images": ["img.png"],
        },
        _hf("one_slot_two_images", "<image>What colour?", images=["img.png", "img.png"]),
        _hf("slot_no_image", [{"type": "image"}, {"type": "text", "text": "What colour?"}]),
        _hf("image_no_slot", "What colour?", images=["img.png"]),
        _hf("content_number", 42),
    ]
    return _quarantine(
        name,
        _write_json(folder, records),
        {
            "one_slot_two_images": {R.PLACEHOLDER_COUNT_MISMATCH, R.TOO_MANY_IMAGES},
            "slot_no_image": {R.PLACEHOLDER_WITHOUT_IMAGE},
            "image_no_slot": {R.IMAGE_WITHOUT_PLACEHOLDER},
            "content_number": {R.NON_STRING_VALUE},
        },
    )


def _text_only(name: str, folder: Path) -> Case:
    """Text-only samples and a multi-turn conversation with a system prompt (legal)."""
    records = [
        _good(folder),
        _sample("text", image=None, question="What is two plus two?", answer="four"),
        _chat(
            ("system", "Be brief."),
            ("human", "Name a colour."),
            ("gpt", "red"),
            ("human", "Another?"),
            ("gpt", "blue"),
            sid="multi_turn",
        ),
    ]
    return Case(name, _write_json(folder, records), "ok", ok_ids=frozenset({"good", "text", "multi_turn"}))


# ---- screen runs -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScreenBatch:
    """One `poisonguard screen` run over one or more cases, with the outcome that run must give.

    expect "error": exit 2 with a message containing `error_mentions`. "verdicts": a verdict table whose ids are
    exactly those of `reasons` (quarantined with exactly those codes) and `ok_ids` (ok).
    """

    name: str
    path: Path
    image_folder: Path
    cases: tuple[str, ...]
    expect: Literal["error", "verdicts"]
    reasons: Mapping[str, frozenset[str]] = field(default_factory=dict)
    ok_ids: frozenset[str] = frozenset()
    error_mentions: tuple[str, ...] = ()


def screen_batches(cases: Sequence[Case], out_dir: str | Path, min_usable: int = 0) -> list[ScreenBatch]:
    """The cases as few screen runs: each error case and each standalone case alone, all others merged per
    format (LLaVA, HF messages) into `out_dir/merged_<format>.json[l]`, read with `out_dir/cases/` as image
    folder (every screen run loads a model, so merging is what keeps a CLI check of the corpus fast).

    Merging prefixes each string id and each relative image path with `<case name>/`, so every sample keeps its
    own image and its own expected reasons; a record that is not an object keeps its position-derived id,
    shifted by the number of records merged before its case. A standalone case with fewer than `min_usable`
    good samples (the least a screen can screen) gets copies of its good sample appended, so that its run
    shows the case's own outcome rather than "too few to screen" (a merged file likewise); appending moves no
    position-derived id.
    """
    out = Path(out_dir)
    batches: list[ScreenBatch] = []
    groups: dict[str, list[Case]] = {"llava": [], "hf": []}
    for case in cases:
        if case.expect == "error":
            batches.append(ScreenBatch(case.name, case.path, case.path.parent, (case.name,), "error",
                                       error_mentions=case.error_mentions))
        elif case.standalone:
            batches.append(_padded(case, out, min_usable - len(case.ok_ids)))
        else:
            groups[_case_format(case)].append(case)
    for fmt, members in groups.items():
        if members:
            batches.append(_merge(fmt, members, out, min_usable))
    return batches


def _records(path: Path) -> list:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return json.loads(text)


def _case_format(case: Case) -> str:
    return "hf" if any(isinstance(r, dict) and "messages" in r for r in _records(case.path)) else "llava"


def _merge(fmt: str, cases: Sequence[Case], out: Path, min_usable: int) -> ScreenBatch:
    records: list = []
    reasons: dict[str, frozenset[str]] = {}
    ok: set[str] = set()
    for case in cases:
        offset = len(records)
        records += [_prefix_record(r, case.name) for r in _records(case.path)]
        reasons.update({_merged_id(k, case.name, offset): v for k, v in case.reasons.items()})
        ok.update(_merged_id(k, case.name, offset) for k in case.ok_ids)
    ok = set(_pad(records, frozenset(ok), min_usable - len(ok)))
    name = f"merged_{fmt}"
    path = _write_records(out / (name + (".json" if fmt == "llava" else ".jsonl")), records)
    return ScreenBatch(name, path, out / "cases", tuple(c.name for c in cases), "verdicts", reasons,
                       frozenset(ok))


def _padded(case: Case, out: Path, n_more: int) -> ScreenBatch:
    if n_more <= 0:
        return ScreenBatch(case.name, case.path, case.path.parent, (case.name,), "verdicts", case.reasons,
                           case.ok_ids)
    records = _records(case.path)
    ok = _pad(records, case.ok_ids, n_more)
    path = _write_records(out / f"padded_{case.name}{case.path.suffix}", records)
    return ScreenBatch(case.name, path, case.path.parent, (case.name,), "verdicts", case.reasons, ok)


def _pad(records: list, ok_ids: frozenset[str], n_more: int) -> frozenset[str]:
    """Append `n_more` copies of the first good record (ids `pad<k>`, or none in a file without ids); returns
    the ok ids including the copies'."""
    n = len(records)
    good = next(r for i, r in enumerate(records) if isinstance(r, dict) and r.get("id", f"__index_{i}") in ok_ids)
    added = []
    for k in range(max(n_more, 0)):
        copy = json.loads(json.dumps(good))
        if "id" in good:
            copy["id"] = f"pad{k}"
        added.append(copy.get("id", f"__index_{n + k}"))
        records.append(copy)
    return frozenset(ok_ids | set(added))


def _write_records(path: Path, records: list) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    else:
        path.write_text(json.dumps(records, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def _merged_id(key: str, case: str, offset: int) -> str:
    position = re.fullmatch(r"__index_(\d+)", key)
    return f"__index_{offset + int(position.group(1))}" if position else f"{case}/{key}"


def _prefix_path(ref: object, case: str) -> object:
    """A relative path gets the case folder in front; anything else (URLs, absolute, non-strings) is kept."""
    if isinstance(ref, str) and ref.strip() and "://" not in ref and not os.path.isabs(ref):
        return f"{case}/{ref}"
    return ref


def _prefix_record(record: object, case: str) -> object:
    if not isinstance(record, dict):
        return record
    record = json.loads(json.dumps(record))  # a deep copy
    if isinstance(record.get("id"), str) and record["id"]:
        record["id"] = f"{case}/{record['id']}"
    for key in ("image", "images"):
        value = record.get(key)
        if isinstance(value, list):
            record[key] = [_prefix_path(ref, case) for ref in value]
        elif key in record:
            record[key] = _prefix_path(value, case)
    for message in record.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        for block in content if isinstance(content, list) else []:
            if isinstance(block, dict) and block.get("type") == "image":
                for key in ("image", "path"):
                    if key in block:
                        block[key] = _prefix_path(block[key], case)
    return record


# ---- the README table ------------------------------------------------------------------------------------


def outcomes_table(cases: Sequence[Case]) -> str:
    """Markdown: each case, what its input is, and what `poisonguard screen` gives it."""
    rows = ["| kind | input | what `poisonguard screen` gives |", "|---|---|---|"]
    for case in cases:
        rows.append(f"| `{case.name}` | {case.description} | {_outcome(case)} |")
    return "\n".join(rows) + "\n"


def _outcome(case: Case) -> str:
    from poisonguard.data.dataset import read_dataset
    from poisonguard.data.errors import DataError

    if case.expect == "error":
        try:
            read_dataset(case.path)
        except DataError as exc:
            message = str(exc).replace(str(case.path), case.path.name)
            return f"exit 2, `error: {message}`"
        raise AssertionError(f"case {case.name} should fail to read")
    counts: dict[str, int] = {}
    for codes in case.reasons.values():
        for code in sorted(codes):
            counts[code] = counts.get(code, 0) + 1
    ok = f"{len(case.ok_ids)} ok"
    if not counts:
        return f"all {ok}"
    listed = ", ".join(f"`{code}`" + (f" ×{n}" if n > 1 else "") for code, n in counts.items())
    return f"quarantined: {listed}; {ok}"


if __name__ == "__main__":  # python -m poisonguard.data.badcorpus [DIR]: print the README table
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        sys.stdout.write(outcomes_table(make_bad_corpus(sys.argv[1] if len(sys.argv) > 1 else tmp)))
