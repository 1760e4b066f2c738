"""Safe image loading: every refusal has its reason code; every legal mode becomes correct RGB."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image, ImageFile

from poisonguard.data import ImageError, Limits, ReasonCode, load_image, resolve_image_path
from tests.fixtures.badcorpus import write_bomb_png
from tests.data.helpers import png


@pytest.fixture
def root(tmp_path):
    folder = tmp_path / "imgs"
    png(folder / "a.png")
    png(tmp_path / "outside.png")
    return folder


def code_of(ref, root, limits=None) -> str:
    with pytest.raises(ImageError) as err:
        load_image(ref, root, limits)
    return err.value.code


def test_a_plain_image_loads_detached_as_rgb(root):
    img = load_image("a.png", root)
    assert (img.mode, img.size, img.getpixel((0, 0))) == ("RGB", (8, 8), (200, 30, 30))
    assert getattr(img, "fp", None) is None  # fully decoded, nothing left open


@pytest.mark.parametrize("ref", ["../outside.png", "sub/../../outside.png"])
def test_traversal_is_refused(root, ref):
    with pytest.raises(ImageError, match="escapes the image folder") as err:
        resolve_image_path(ref, root)
    assert err.value.code == ReasonCode.IMAGE_OUTSIDE_ROOT


def test_absolute_paths_are_refused_even_inside_the_folder(root):
    assert code_of(str(root.parent / "outside.png"), root) == ReasonCode.IMAGE_OUTSIDE_ROOT
    assert code_of(str(root / "a.png"), root) == ReasonCode.IMAGE_OUTSIDE_ROOT


def test_symlinks_are_followed_before_the_containment_check(root):
    os.symlink(root.parent / "outside.png", root / "out.png")
    os.symlink(root.parent, root / "up")
    os.symlink("a.png", root / "in.png")
    with pytest.raises(ImageError, match="through a symlink"):
        resolve_image_path("out.png", root)
    assert code_of("up/outside.png", root) == ReasonCode.IMAGE_OUTSIDE_ROOT
    assert resolve_image_path("in.png", root) == (root / "a.png").resolve()
    assert load_image("in.png", root).size == (8, 8)


@pytest.mark.parametrize("ref", ["", "   ", "a\0.png", "http://example.com/a.png", 3])
def test_invalid_references(root, ref):
    assert code_of(ref, root) == ReasonCode.INVALID_IMAGE_REF


def test_file_problems_have_their_codes(root):
    (root / "zero.png").write_bytes(b"")
    (root / "dir.png").mkdir()
    os.mkfifo(root / "fifo.png")  # opening must not block waiting for a writer
    assert code_of("nope.png", root) == ReasonCode.MISSING_IMAGE
    assert code_of("zero.png", root) == ReasonCode.EMPTY_IMAGE
    assert code_of("dir.png", root) == ReasonCode.UNREADABLE_IMAGE
    assert code_of("fifo.png", root) == ReasonCode.UNREADABLE_IMAGE
    assert code_of("a.png", root, Limits(max_bytes=10)) == ReasonCode.FILE_TOO_LARGE


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_images_are_corrupt(root, fmt):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, fmt)
    (root / "cut").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    assert code_of("cut", root) == ReasonCode.CORRUPT_IMAGE


def test_non_images_and_disallowed_formats_are_refused(root):
    (root / "text.png").write_text("hello")
    Image.new("RGB", (8, 8)).save(root / "icon.ico")
    assert code_of("text.png", root) == ReasonCode.CORRUPT_IMAGE
    assert code_of("icon.ico", root) == ReasonCode.CORRUPT_IMAGE
    assert load_image("icon.ico", root, Limits(formats=frozenset({"ICO"}))).mode == "RGB"


def test_decompression_bombs_are_refused_before_decoding(root):
    write_bomb_png(root / "bomb.png", 100_000)
    with pytest.raises(ImageError, match="10,000,000,000 pixels") as err:
        load_image("bomb.png", root)
    assert err.value.code == ReasonCode.DECOMPRESSION_BOMB
    # A real image just over a configured limit: Pillow only warns there, the loader refuses.
    png(root / "big.png", (33, 32))
    assert code_of("big.png", root, Limits(max_pixels=32 * 32)) == ReasonCode.DECOMPRESSION_BOMB
    assert load_image("big.png", root, Limits(max_pixels=33 * 32)).size == (33, 32)


def test_pillow_settings_are_restored_and_do_not_leak_in(root, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 12345)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # someone else's lenient setting
    data = (root / "a.png").read_bytes()
    (root / "cut.png").write_bytes(data[: len(data) // 2])
    assert code_of("cut.png", root) == ReasonCode.CORRUPT_IMAGE
    load_image("a.png", root)
    assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES) == (12345, True)


def test_sixteen_bit_images_are_scaled_not_clipped(root):
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(root / "deep.png")
    assert Image.open(root / "deep.png").mode == "I;16"
    rgb = np.asarray(load_image("deep.png", root))
    assert rgb.shape == (1, 4, 3)
    assert rgb[0, :, 0].tolist() == [0, 1, 128, 255] and (rgb[..., 0] == rgb[..., 2]).all()


@pytest.mark.parametrize(
    ("name", "make", "pixel"),
    [
        ("grey.png", lambda: Image.new("L", (4, 4), 77), (77, 77, 77)),
        ("bilevel.png", lambda: Image.new("1", (4, 4), 1), (255, 255, 255)),
        ("palette.png", lambda: Image.new("RGB", (4, 4), (10, 200, 10)).quantize(4), (10, 200, 10)),
        ("rgba.png", lambda: Image.new("RGBA", (4, 4), (10, 20, 30, 0)), (10, 20, 30)),  # alpha dropped
        ("grey_alpha.png", lambda: Image.new("LA", (4, 4), (90, 128)), (90, 90, 90)),
        ("cmyk.tif", lambda: Image.new("CMYK", (4, 4), (0, 255, 255, 0)), (255, 0, 0)),
    ],
)
def test_other_modes_become_rgb(root, name, make, pixel):
    make().save(root / name)
    img = load_image(name, root)
    assert (img.mode, img.getpixel((0, 0))) == ("RGB", pixel)


def test_cmyk_jpeg_becomes_rgb(root):
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(root / "cmyk.jpg")
    r, g, b = load_image("cmyk.jpg", root).getpixel((4, 4))
    assert r > 200 and g < 60 and b < 60


@pytest.mark.parametrize("name", ["anim.gif", "anim.png", "anim.webp"])
def test_animations_give_their_first_frame(root, name):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(root / name, save_all=True, append_images=frames[1:], duration=50, lossless=True)
    img = load_image(name, root)
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (255, 0, 0)


def test_limits_are_validated_at_construction():
    with pytest.raises(ValueError, match="max_pixels"):
        Limits(max_pixels=0)
    with pytest.raises(ValueError, match="NOPE"):
        Limits(formats=frozenset({"PNG", "NOPE"}))
