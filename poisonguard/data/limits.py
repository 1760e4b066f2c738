"""The configurable bounds a sample must stay within; one object shared by `validate` and `load_image`."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

# Formats real instruction-tuning images come in. Pillow can parse dozens more, each a parser an attacker can
# aim at; refusing the rest keeps that surface small.
DEFAULT_FORMATS = frozenset({"PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF"})


@dataclass(frozen=True)
class Limits:
    """Per-sample limits. Pixel and byte bounds defend the loader; the rest follow the model.

    `max_pixels` defaults to Pillow's own warning threshold (about 0.25 GiB decoded as RGB), but unlike Pillow
    an image over it is refused, not merely warned about. `max_prompt_chars` bounds the whole conversation
    (all turns) in characters: a cheap stand-in until a tokenizer-based context check is plugged into
    `validate(..., checks=...)`.
    """

    max_pixels: int = 89_478_485
    max_bytes: int = 64 * 2**20
    max_images: int = 1
    max_prompt_chars: int = 32_768
    formats: frozenset[str] = DEFAULT_FORMATS

    def __post_init__(self) -> None:
        for name in ("max_pixels", "max_bytes", "max_prompt_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"Limits.{name} must be at least 1, got {getattr(self, name)}")
        if self.max_images < 0:
            raise ValueError(f"Limits.max_images must be non-negative, got {self.max_images}")
        if not self.formats:
            raise ValueError("Limits.formats must name at least one image format")
        Image.init()
        unknown = set(self.formats).difference(Image.OPEN)
        if unknown:
            raise ValueError(f"Limits.formats names formats Pillow cannot open: {sorted(unknown)}")
