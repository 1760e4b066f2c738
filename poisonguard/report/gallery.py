"""The report's gallery: which samples to show, and each as a small card (thumbnail, question, answer, score).

A person believes a backdoor when they see it: a page of flagged images that all carry the same patch and all
answer the same word. The gallery shows three bounded lists, so a report of 100,000 samples stays small and
opens fast (the full list is verdicts.csv):
- flagged: the highest-ranked flagged samples, most suspicious first;
- borderline: the highest-ranked samples that were *not* flagged, i.e. just below the cut (if they look like
  the flagged ones, the cut is too strict);
- quarantined: samples refused before screening, with their reasons.
Thumbnails are embedded as small JPEG data URIs (no file beside the report, nothing fetched from outside).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from poisonguard.data.records import Sample

TEXT_LIMIT = 240  # characters of a question or answer shown on a card; the full text is in the dataset


@dataclass
class Card:
    """One sample as the gallery shows it. `thumb` is a data URI, or "" (no dataset, text-only sample, or an
    image that could not be read: `note` says which)."""

    id: str
    score: float | None
    question: str = ""
    answer: str = ""
    reason: str = ""
    thumb: str = ""
    note: str = ""

    def to_json(self) -> dict:
        d = asdict(self)
        d["score"] = None if self.score is None or not np.isfinite(self.score) else round(float(self.score), 4)
        return d


def thumbnail_uri(img, size: int = 64, quality: int = 80) -> str:
    """A PIL image as a JPEG data URI no larger than `size` px on its longer side (smaller images kept)."""
    from PIL import Image

    img = img.convert("RGB")
    if max(img.size) > size:
        img = img.copy()
        img.thumbnail((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def ranking(table: pd.DataFrame, default: str) -> pd.Series:
    """How suspicious each row is, for sorting: p_poison, ties broken by the default detector's raw score
    (a posterior saturates at 0 and 1; the score behind it still orders). NaN (quarantined) ranks last."""
    p = table["p_poison"].astype(float).fillna(-1.0)
    raw = score_column(table, default)
    if raw is None or raw == "p_poison":
        return p
    r = table[raw].astype(float)
    span = float(np.nanmax(r) - np.nanmin(r)) if r.notna().any() else 0.0
    tie = ((r - np.nanmin(r)) / span).fillna(0.0) if span > 0 else 0.0
    return p + 1e-6 * tie  # p_poison decides; within equal p the raw score orders


def score_column(table: pd.DataFrame, name: str) -> str | None:
    """The verdict-table column that holds detector `name`'s per-sample score, if any."""
    for col in (f"score_{name}", f"vote_{name}", f"p_{name}"):
        if col in table.columns and table[col].notna().any():
            return col
    return None


def select(table: pd.DataFrame, default: str, *, n_flagged: int = 300, n_borderline: int = 60,
           n_quarantined: int = 100) -> dict[str, pd.DataFrame]:
    """The rows of each gallery list, most suspicious first (quarantined: in input order)."""
    rank = ranking(table, default)
    ok = table["status"] == "ok"
    flagged = table["flagged"].astype(bool) & ok
    return {
        "flagged": table[flagged].assign(_rank=rank[flagged]).sort_values("_rank", ascending=False,
                                                                           kind="stable").head(n_flagged),
        "borderline": table[ok & ~flagged].assign(_rank=rank[ok & ~flagged]).sort_values(
            "_rank", ascending=False, kind="stable").head(n_borderline),
        "quarantined": table[~ok].head(n_quarantined),
    }


def cards(rows: pd.DataFrame, samples: Mapping[str, Sample] | None,
          load_image: Callable[[str], object] | None, *, size: int = 64) -> list[Card]:
    """A card per row; thumbnails only when `samples` and `load_image` are given."""
    out = []
    for r in rows.itertuples(index=False):
        sid = str(r.id)
        score = float(r.p_poison) if pd.notna(r.p_poison) else None
        card = Card(id=sid, score=score, reason=str(r.reason or "") if pd.notna(r.reason) else "")
        s = samples.get(sid) if samples is not None else None
        if s is not None:
            card.question, card.answer = _clip(s.question), _clip(s.answer)
            if not s.images:
                card.note = "text only"
            elif load_image is not None:
                try:
                    card.thumb = thumbnail_uri(load_image(s.images[0]), size)
                except (ValueError, OSError) as exc:  # ImageError is a ValueError; shown, never fatal
                    card.note = f"image not shown: {type(exc).__name__}"
        out.append(card)
    return out


def _clip(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= TEXT_LIMIT else text[:TEXT_LIMIT - 1] + "…"
