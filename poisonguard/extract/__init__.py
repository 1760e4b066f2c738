"""Attention capture at the decision position, span split per model family, and sharded storage.

Public API:
    extract(model, processor, examples, *, batch_size, backend, show_progress) -> Extraction
    extract_to_dir / extract_shard / load_extraction   (sharded, resumable, atomic)
"""

from __future__ import annotations

from poisonguard.extract.capture import capture_rows, decision_row, lm_attention
from poisonguard.extract.extraction import BACKENDS, Extraction, extract
from poisonguard.extract.spans import PAD, SYS, TXT, VIS, token_roles
from poisonguard.extract.storage import ensure_manifest, extract_shard, extract_to_dir, load_extraction

__all__ = [
    "BACKENDS",
    "PAD",
    "SYS",
    "TXT",
    "VIS",
    "Extraction",
    "capture_rows",
    "decision_row",
    "ensure_manifest",
    "extract",
    "extract_shard",
    "extract_to_dir",
    "lm_attention",
    "load_extraction",
    "token_roles",
]
