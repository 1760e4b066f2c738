"""Safe image loading: the one way every later stage (training, extraction) opens a dataset image.

Image references come from untrusted data, so a reference may point outside the image folder, at a device
or a FIFO, at a multi-gigabyte file, or at a small file whose header claims billions of pixels. `load_image`
refuses all of these with an `ImageError` whose `code` is the quarantine reason, decodes the whole image
(truncation only shows while decoding) and returns a detached RGB image whose file is already closed.
"""

from __future__ import annotations

import io
import os
import re
import stat
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from poisonguard.data.errors import ImageError, ReasonCode
from poisonguard.data.limits import Limits

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})

# Pillow keeps its bomb threshold and truncation policy in module globals; they are changed only under this
# lock and always restored, so no caller's settings leak out or in.
_PIL_SETTINGS_LOCK = threading.Lock()


def resolve_image_path(ref: str, image_root: str | Path) -> Path:
    """The real path of `ref` inside `image_root`, or `ImageError` if it is invalid or leaves the folder.

    Symlinks are followed before the containment check, so a link inside the folder that points outside is
    refused like `../x.png`. Absolute references are refused even when they point inside: the contract is
    "relative to the image folder", and honouring absolute paths would defeat `--image-folder`.
    """
    if not isinstance(ref, str) or not ref.strip():
        raise ImageError(ReasonCode.INVALID_IMAGE_REF, f"image reference {ref!r} is not a non-empty path")
    if "\0" in ref:
        raise ImageError(ReasonCode.INVALID_IMAGE_REF, f"image reference {ref!r} contains a NUL byte")
    if "://" in ref:
        raise ImageError(
            ReasonCode.INVALID_IMAGE_REF,
            f"image reference {ref!r} is a URL; images are never fetched, put them in the image folder",
        )
    root = Path(image_root).resolve()
    if os.path.isabs(ref):
        raise ImageError(
            ReasonCode.IMAGE_OUTSIDE_ROOT,
            f"path {ref!r} is absolute; image paths must be relative to the image folder {root}",
        )
    try:
        resolved = (root / ref).resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise ImageError(ReasonCode.UNREADABLE_IMAGE, f"path {ref!r} cannot be resolved: {exc}") from None
    if not resolved.is_relative_to(root):
        via_link = Path(os.path.normpath(root / ref)).is_relative_to(root)
        how = f"resolves through a symlink to {resolved}, outside" if via_link else "escapes"
        raise ImageError(ReasonCode.IMAGE_OUTSIDE_ROOT, f"path {ref!r} {how} the image folder {root}")
    return resolved


def load_image(ref: str, image_root: str | Path, limits: Limits | None = None) -> Image.Image:
    """Open `ref` (relative to `image_root`) as a fully decoded RGB image, or raise `ImageError`.

    Greyscale, palette, alpha and CMYK images are converted with Pillow's `convert("RGB")` (alpha is dropped,
    as LLaVA-style training does, so screening sees the pixels the model is trained on); 16-bit images are
    scaled to 8 bits rather than clipped; animated images give their first frame.
    """
    limits = limits or Limits()
    return _decode_rgb(read_image_bytes(ref, image_root, limits), ref, limits)


def read_image_bytes(ref: str, image_root: str | Path, limits: Limits | None = None) -> bytes:
    """The raw bytes of `ref` under the same path and size checks as `load_image`, without decoding
    (for fingerprints: a resumed run must notice an image replaced under the same name)."""
    limits = limits or Limits()
    return _read_bounded(resolve_image_path(ref, image_root), ref, limits.max_bytes)


def _read_bounded(path: Path, ref: str, max_bytes: int) -> bytes:
    """The file's bytes, refusing non-regular files, empty files and files over `max_bytes`.

    O_NOFOLLOW keeps a symlink swapped in after `resolve_image_path` from being followed; O_NONBLOCK keeps a
    FIFO from hanging the open, so the regular-file check below gets to refuse it.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise ImageError(ReasonCode.MISSING_IMAGE, f"image file {ref!r} does not exist ({path})") from None
    except OSError as exc:
        raise ImageError(
            ReasonCode.UNREADABLE_IMAGE, f"image file {ref!r} cannot be opened: {exc.strerror}"
        ) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ImageError(ReasonCode.UNREADABLE_IMAGE, f"{ref!r} is not a regular file")
        if info.st_size == 0:
            raise ImageError(ReasonCode.EMPTY_IMAGE, f"image file {ref!r} is empty (0 bytes)")
        if info.st_size > max_bytes:
            raise ImageError(
                ReasonCode.FILE_TOO_LARGE,
                f"image file {ref!r} has {info.st_size:,} bytes, over the limit of {max_bytes:,}",
            )
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)  # bounded even if the file grows after fstat
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise ImageError(
            ReasonCode.FILE_TOO_LARGE, f"image file {ref!r} grew past the limit of {max_bytes:,} bytes"
        )
    return data


@contextmanager
def _pillow_guard(max_pixels: int) -> Iterator[None]:
    """Pillow refuses (not just warns about) images over `max_pixels` and never pads truncated files."""
    with _PIL_SETTINGS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        saved = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = max_pixels, False
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = saved


def _decode_rgb(data: bytes, ref: str, limits: Limits) -> Image.Image:
    allowed = sorted(limits.formats)
    with _pillow_guard(limits.max_pixels):
        try:
            with Image.open(io.BytesIO(data), formats=allowed) as img:
                img.load()  # the first frame of an animation; decoding is where truncation shows
                return _to_rgb(img)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            claimed = re.search(r"\((\d+) pixels\)", str(exc))  # Pillow states the size; say it if it does
            size = f"{int(claimed.group(1)):,} pixels" if claimed else "more pixels"
            raise ImageError(
                ReasonCode.DECOMPRESSION_BOMB,
                f"image {ref!r} claims {size}, over the limit of {limits.max_pixels:,}; refused before "
                "decoding (decompression-bomb guard)",
            ) from None
        except UnidentifiedImageError:
            raise ImageError(
                ReasonCode.CORRUPT_IMAGE,
                f"{ref!r} is not a readable image in an allowed format ({', '.join(allowed)})",
            ) from None
        # Pillow signals bad data with OSError, SyntaxError, ValueError, struct.error, ...: any of them means
        # this file cannot be used, and the run must go on.
        except Exception as exc:  # noqa: BLE001
            raise ImageError(
                ReasonCode.CORRUPT_IMAGE, f"image {ref!r} cannot be decoded: {type(exc).__name__}: {exc}"
            ) from None


def _to_rgb(img: Image.Image) -> Image.Image:
    """A new, detached RGB copy of `img`."""
    if img.mode in _SIXTEEN_BIT_MODES:
        # Pillow's convert clips 16-bit values at 255 (a mostly white image); scale the full range instead.
        wide = np.clip(np.asarray(img).astype(np.int64), 0, 65535)  # (H, W)
        eight = ((wide * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(eight).convert("RGB")
    return img.convert("RGB")
