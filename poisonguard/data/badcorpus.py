"""A corpus of bad inputs with their expected outcomes, for tests and for checking the CLI end to end.

`make_bad_corpus(dir)` writes one small dataset file per case (plus its images) into `dir/<case name>/` and
returns the cases. A case expects a file-level `DataError` ("error"), specific quarantine reasons for named
samples ("quarantine"), or that every sample passes ("ok": awkward but legal input such as 16-bit or CMYK
images). Each file also holds at least one good sample, which must stay ok. Everything is generated, small and
deterministic; it takes well under a second.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
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
    limits: Limits = field(default_factory=Limits)
    error_mentions: tuple[str, ...] = ()  # text the DataError message must contain


def make_bad_corpus(out_dir: str | Path) -> list[Case]:
    """Write every case into `out_dir` (created if needed; rerunning over it is fine) and return them."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
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
        folder = out / name
        folder.mkdir(exist_ok=True)
        cases.append(build(name, folder))
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
    limits: Limits | None = None,
) -> Case:
    return Case(
        name,
        path,
        "quarantine",
        {k: frozenset(v) for k, v in reasons.items()},
        frozenset(ok | {"good"}),
        limits or Limits(),
    )


# ---- file-level errors -----------------------------------------------------------------------------------


def _malformed_json(name: str, folder: Path) -> Case:
    path = folder / "train.json"
    path.write_text(
        '[\n  {"id": "good", "conversations": [\n    {"from": "human" "value": "hi"}\n', encoding="utf-8"
    )
    return Case(name, path, "error", error_mentions=("train.json", "line 3"))


def _wrong_top_level(name: str, folder: Path) -> Case:
    path = _write_json(folder, {"data": [_good(folder)]})
    return Case(name, path, "error", error_mentions=("train.json", "top level", "an object"))


def _non_utf8(name: str, folder: Path) -> Case:
    path = folder / "train.json"
    text = json.dumps(
        [_good(folder), _sample("cafe", question="Is this a café?")], indent=2, ensure_ascii=False
    )
    path.write_bytes(text.encode("latin-1"))
    line = text[: text.index("é")].count("\n") + 1
    return Case(name, path, "error", error_mentions=("train.json", "UTF-8", f"line {line}"))


def _unknown_format(name: str, folder: Path) -> Case:
    path = _write_json(folder, [{"id": "good", "text": "a caption"}, {"id": "b", "prompt": "hi"}])
    return Case(name, path, "error", error_mentions=("train.json", "unknown format", "conversations"))


def _malformed_jsonl(name: str, folder: Path) -> Case:
    _png(folder / "img.png")
    path = folder / "train.jsonl"
    path.write_text(
        json.dumps(_hf("good", "<image>What?", images=["img.png"])) + '\n{"id": "b", \n', encoding="utf-8"
    )
    return Case(name, path, "error", error_mentions=("train.jsonl", "line 2"))


# ---- record and conversation shape -----------------------------------------------------------------------


def _missing_conversations(name: str, folder: Path) -> Case:
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
    good = _good(folder)
    _png(folder / "img2.png")
    two = _chat(("human", "<image>\n<image>\nSame colour?"), ("gpt", "yes"), sid="two_images")
    two["image"] = ["img.png", "img2.png"]
    return _quarantine(name, _write_json(folder, [good, two]), {"two_images": {R.TOO_MANY_IMAGES}})


def _long_conversation(name: str, folder: Path) -> Case:
    records = [_good(folder), _sample("long", question="Describe it. " * 3000)]  # 39,000 characters
    return _quarantine(name, _write_json(folder, records), {"long": {R.CONVERSATION_TOO_LONG}})


def _non_string_values(name: str, folder: Path) -> Case:
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
    )


def _missing_ids(name: str, folder: Path) -> Case:
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
    )


# ---- image paths -----------------------------------------------------------------------------------------


def _path_dotdot(name: str, folder: Path) -> Case:
    records = [
        _good(folder),
        _sample("dotdot", image="../outside.png"),
        _sample("sneaky", image="a/../../outside.png"),
    ]
    (folder / "a").mkdir(exist_ok=True)
    return _quarantine(
        name,
        _write_json(folder, records),
        {"dotdot": {R.IMAGE_OUTSIDE_ROOT}, "sneaky": {R.IMAGE_OUTSIDE_ROOT}},
    )


def _path_absolute(name: str, folder: Path) -> Case:
    inside = str((folder / "img.png").resolve())
    records = [
        _good(folder),
        _sample("absolute", image=str((folder.parent / "outside.png").resolve())),
        _sample("absolute_inside", image=inside),
    ]
    return _quarantine(
        name,
        _write_json(folder, records),
        {"absolute": {R.IMAGE_OUTSIDE_ROOT}, "absolute_inside": {R.IMAGE_OUTSIDE_ROOT}},
    )


def _path_symlink(name: str, folder: Path) -> Case:
    good = _good(folder)
    for link, target in (("link.png", "../outside.png"), ("inlink.png", "img.png"), ("dirlink", "..")):
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
    return _truncated(name, folder, "PNG", ".png")


def _truncated_jpeg(name: str, folder: Path) -> Case:
    return _truncated(name, folder, "JPEG", ".jpg")


def _zero_byte(name: str, folder: Path) -> Case:
    (folder / "zero.png").write_bytes(b"")
    records = [_good(folder), _sample("zero", image="zero.png")]
    return _quarantine(name, _write_json(folder, records), {"zero": {R.EMPTY_IMAGE}})


def _not_an_image(name: str, folder: Path) -> Case:
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


def write_bomb_png(path: Path, side: int) -> None:
    """A valid-looking PNG whose header claims side x side RGB pixels, with almost no pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def _decompression_bomb(name: str, folder: Path) -> Case:
    write_bomb_png(folder / "bomb.png", 100_000)
    records = [_good(folder), _sample("bomb", image="bomb.png")]
    return _quarantine(name, _write_json(folder, records), {"bomb": {R.DECOMPRESSION_BOMB}})


def _huge_image(name: str, folder: Path) -> Case:
    _png(folder / "big.png", (64, 64))
    records = [_good(folder), _sample("huge", image="big.png")]
    return _quarantine(
        name,
        _write_json(folder, records),
        {"huge": {R.DECOMPRESSION_BOMB}},
        limits=Limits(max_pixels=32 * 32),
    )


def _oversized_file(name: str, folder: Path) -> Case:
    _noise().save(folder / "heavy.png")  # about 12 KB
    records = [_good(folder), _sample("heavy", image="heavy.png")]
    return _quarantine(
        name, _write_json(folder, records), {"heavy": {R.FILE_TOO_LARGE}}, limits=Limits(max_bytes=4096)
    )


def _non_rgb_images(name: str, folder: Path) -> Case:
    """Legal images in every awkward mode; each must load as RGB, none may be quarantined."""
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
    """Ids are optional in HF messages: a file with none at all is fine (index ids, not quarantined)."""
    _png(folder / "img.png")
    records = [_hf(None, "<image>What colour?", images=["img.png"]), _hf(None, "Say hi.", "hi")]
    return Case(name, _write_jsonl(folder, records), "ok", ok_ids=frozenset({"__index_0", "__index_1"}))


def _hf_json_list(name: str, folder: Path) -> Case:
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
