"""Content fingerprints of samples, so that stored work is reused only for exactly the same input.

A screen resumed after a crash skips extraction shards it finished before. That is only sound if the samples
behind a shard are byte-for-byte what they were: the same id can come back with an edited question or a
replaced image file. `sample_digest` covers what the model sees -- the turns (roles and text, placeholders
removed) and the bytes of every image -- and nothing the model does not see (key order, whitespace), so a
reformatted file still resumes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from poisonguard.data.errors import ImageError
from poisonguard.data.images import read_image_bytes
from poisonguard.data.limits import Limits
from poisonguard.data.records import Sample


def sample_digest(sample: Sample, image_root: str | Path, limits: Limits | None = None) -> str:
    """sha256 (hex) of the sample's turns and image bytes; an unreadable image enters as its error code."""
    h = hashlib.sha256()
    h.update(json.dumps([[t.role, t.text] for t in sample.turns], ensure_ascii=False).encode())
    for ref in sample.images:
        try:
            h.update(b"image:" + hashlib.sha256(read_image_bytes(ref, image_root, limits)).digest())
        except ImageError as exc:  # quarantined anyway; still part of "what the input was"
            h.update(f"unusable:{exc.code}:{ref}".encode())
    return h.hexdigest()
