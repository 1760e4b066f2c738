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


# Files up to this size are hashed whole; larger ones (weight shards) by size and evenly spaced chunks.
_WHOLE_FILE_BYTES = 64 << 20
_CHUNKS, _CHUNK_BYTES = 32, 1 << 20


def model_digest(model_dir: str | Path) -> str:
    """Identify a model folder by its content, so that stored extractions of another model are never reused
    and two copies of the same model (a fresh clone's rebuild, a copy to another disk) share them.

    Every file's relative name and size; small files (configs, tokenizer, a LoRA adapter) hashed whole; a
    large weight file by `_CHUNKS` chunks spread evenly over it, so a full fine-tune, which changes the
    language model's tensors throughout the file, changes the digest. No timestamps: the digest must not
    change when the same weights are written again. Blind spot: a large file edited only between chunks.
    """
    root = Path(model_dir)
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        size = p.stat().st_size
        h.update(f"{p.relative_to(root).as_posix()}\0{size}\0".encode())
        with open(p, "rb") as f:
            if size <= _WHOLE_FILE_BYTES:
                h.update(f.read())
                continue
            step = (size - _CHUNK_BYTES) // (_CHUNKS - 1)
            for k in range(_CHUNKS):
                f.seek(k * step)
                h.update(f.read(_CHUNK_BYTES))
    return h.hexdigest()[:16]
