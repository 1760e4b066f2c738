"""What the flagged samples share, in numbers an approver can read: the evidence section of the report.

A backdoor leaves the same marks on all of its samples, whatever detector found them:
- one answer (the attacker's target) dominates the flagged samples and is rare among the released ones;
- a text trigger is a word (or phrase) that appears in nearly every flagged question and almost never
  elsewhere;
- an image trigger (a patch, a blended pattern) sits at the same place in every flagged image, so the mean
  flagged image minus the mean released image is bright exactly there.
Each summary here is a pure function of plain inputs (strings, image arrays), so it can be checked on
synthetic data where the answer is known. Nothing here reads labels: the comparison is flagged vs released.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?", re.UNICODE)
_SPACE = re.compile(r"\s+")


def normalise_answer(text: str) -> str:
    """Answers compared as a person would: case, surrounding punctuation and inner runs of spaces ignored."""
    return _SPACE.sub(" ", str(text)).strip().strip(".!?,;:\"'").strip().lower()


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters and digits; an inner apostrophe kept)."""
    return _WORD.findall(str(text).lower())


def question_type(question: str, n_words: int = 2) -> str:
    """A coarse question type: its first `n_words` words ("how many", "what colour", "is there").

    Label-free and format-free; enough to see whether flagged samples are one kind of question (a clean
    sub-task the fine-tune changed) or spread over all kinds (a trigger does not care what is asked). A text
    trigger placed at the front of the question shows up here too.
    """
    w = words(question)
    return " ".join(w[:n_words]) if w else "(no question)"


def share_table(flagged: Iterable[str], released: Iterable[str], *, top: int = 10,
                key: str = "value") -> pd.DataFrame:
    """Counts and shares of each value among flagged and released samples, most flagged first.

    Columns: `key`, n_flagged, share_flagged, n_released, share_released, lift (share_flagged /
    share_released, with half a count added to both so a value never seen in the release gets a finite,
    large lift). Rows: the `top` values with the most flagged samples, then (to fill up to `top`) the most
    common released values, so a table with nothing flagged still shows what the release answers.
    """
    cf, cr = Counter(flagged), Counter(released)
    nf, nr = sum(cf.values()), sum(cr.values())
    order = [v for v, _ in cf.most_common()]
    order += [v for v, _ in cr.most_common() if v not in cf]
    rows = []
    for v in order[:top]:
        a, b = cf.get(v, 0), cr.get(v, 0)
        sf, sr = a / nf if nf else 0.0, b / nr if nr else 0.0
        lift = ((a + 0.5) / (nf + 1)) / ((b + 0.5) / (nr + 1)) if nf else float("nan")
        rows.append({key: v, "n_flagged": a, "share_flagged": sf, "n_released": b, "share_released": sr,
                     "lift": lift})
    cols = [key, "n_flagged", "share_flagged", "n_released", "share_released", "lift"]
    return pd.DataFrame(rows, columns=cols)


def overrepresented_words(flagged: Sequence[str], released: Sequence[str], *, top: int = 10,
                          min_count: int = 2, prior: float = 0.5) -> pd.DataFrame:
    """Words that appear in more flagged texts than the released texts would predict, strongest first.

    Per word, with a = flagged texts containing it (of nf) and b = released texts containing it (of nr):
    the smoothed log-odds ratio

        delta = log((a + p) / (nf - a + p)) - log((b + p) / (nr - b + p)),   p = `prior`

    and its z-score delta / sqrt(sum of the four 1/(count + p)). Counting *texts containing* a word (document
    frequency), not occurrences, makes a trigger inserted once per question score like a trigger, and a word
    repeated inside one long question not. Words in fewer than `min_count` flagged texts are left out (one
    odd question is not evidence). Ranked by z, so a word must be both frequent among the flagged and rare
    elsewhere to come first.
    """
    nf, nr = len(flagged), len(released)
    cols = ["word", "n_flagged", "share_flagged", "n_released", "share_released", "log_odds", "z"]
    if nf == 0:
        return pd.DataFrame(columns=cols)
    df_f = Counter(w for t in flagged for w in set(words(t)))
    df_r = Counter(w for t in released for w in set(words(t)))
    rows = []
    for w, a in df_f.items():
        if a < min_count:
            continue
        b = df_r.get(w, 0)
        delta = (math.log((a + prior) / (nf - a + prior)) - math.log((b + prior) / (nr - b + prior)))
        var = 1 / (a + prior) + 1 / (nf - a + prior) + 1 / (b + prior) + 1 / (nr - b + prior)
        rows.append({"word": w, "n_flagged": a, "share_flagged": a / nf, "n_released": b,
                     "share_released": b / nr if nr else 0.0, "log_odds": delta, "z": delta / math.sqrt(var)})
    out = pd.DataFrame(rows, columns=cols)
    out = out[out["z"] > 0].sort_values(["z", "n_flagged", "word"], ascending=[False, False, True])
    return out.head(top).reset_index(drop=True)


def as_array(img, size: int) -> np.ndarray:
    """(size, size, 3) float32 in [0, 1] of a PIL image or an (H, W[, C]) uint8/float array, resized with a
    box filter so that a small patch keeps its mean brightness instead of being sampled away."""
    from PIL import Image

    if not isinstance(img, Image.Image):
        a = np.asarray(img)
        if a.dtype != np.uint8:
            a = (np.clip(a, 0, 1) * 255).round().astype(np.uint8) if a.max(initial=0) <= 1 else a.astype(np.uint8)
        img = Image.fromarray(a)
    img = img.convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.float32) / 255.0


@dataclass
class MeanDifference:
    """Where the flagged images differ, on average, from the released ones.

    `magnitude` (S, S) is the per-pixel Euclidean norm over RGB of mean(flagged) − mean(released), in [0, √3];
    `signed` (S, S, 3) the difference itself; n_flagged / n_released how many images went into each mean.
    """

    magnitude: np.ndarray
    signed: np.ndarray
    n_flagged: int
    n_released: int

    def peak(self, window: int | None = None) -> tuple[int, int, int, int]:
        """(row, col, height, width) of the brightest `window`-sized square of `magnitude` (default 1/8 of
        the side): where a patch trigger sits."""
        s = self.magnitude.shape[0]
        w = max(1, window or s // 8)
        c = np.pad(self.magnitude, ((1, 0), (1, 0))).cumsum(0).cumsum(1)  # summed-area table, (S+1, S+1)
        box = c[w:, w:] - c[:-w, w:] - c[w:, :-w] + c[:-w, :-w]  # (S-w+1, S-w+1)
        r, col = np.unravel_index(int(np.argmax(box)), box.shape)
        return int(r), int(col), w, w

    def concentration(self) -> float:
        """Share of the total difference inside the peak square, over that square's share of the area:
        about 1 for a difference spread evenly (a global pattern, or noise), large for a local patch."""
        r, c, h, w = self.peak()
        total = float(self.magnitude.sum())
        if total <= 0:
            return 0.0
        inside = float(self.magnitude[r:r + h, c:c + w].sum())
        return (inside / total) / (h * w / self.magnitude.size)

    def where(self) -> str:
        """The peak's position in words ("top left", "centre", ...)."""
        r, c, h, w = self.peak()
        s = self.magnitude.shape[0]
        y, x = (r + h / 2) / s, (c + w / 2) / s
        row = "top" if y < 1 / 3 else "bottom" if y > 2 / 3 else "middle"
        col = "left" if x < 1 / 3 else "right" if x > 2 / 3 else "centre"
        return "centre" if (row, col) == ("middle", "centre") else f"{row} {col}"


def mean_difference(flagged: Iterable, released: Iterable, *, size: int = 64) -> MeanDifference | None:
    """Mean flagged image minus mean released image at `size`×`size` (see `MeanDifference`); None when either
    side has no image. Streams: one image in memory at a time, so the caller bounds the cost by how many it
    passes (a random subset of each side is enough for a mean)."""
    sums, counts = [], []
    for images in (flagged, released):
        acc, n = np.zeros((size, size, 3), dtype=np.float64), 0
        for img in images:
            acc += as_array(img, size)
            n += 1
        sums.append(acc)
        counts.append(n)
    if min(counts) == 0:
        return None
    signed = sums[0] / counts[0] - sums[1] / counts[1]  # (S, S, 3)
    return MeanDifference(np.linalg.norm(signed, axis=2), signed.astype(np.float32), counts[0], counts[1])


def difference_png(diff: MeanDifference, scale: int = 3) -> bytes:
    """The magnitude as a PNG heat image (black → red → yellow → white), scaled by its own maximum, with the
    peak square outlined in cyan; `scale`× nearest-neighbour enlarged so single pixels stay visible."""
    import io

    from PIL import Image, ImageDraw

    m = diff.magnitude
    v = m / m.max() if m.max() > 0 else m
    rgb = np.stack([np.clip(3 * v, 0, 1), np.clip(3 * v - 1, 0, 1), np.clip(3 * v - 2, 0, 1)], axis=2)
    img = Image.fromarray((rgb * 255).round().astype(np.uint8)).resize(
        (m.shape[1] * scale, m.shape[0] * scale), Image.Resampling.NEAREST)
    r, c, h, w = diff.peak()
    ImageDraw.Draw(img).rectangle([c * scale, r * scale, (c + w) * scale - 1, (r + h) * scale - 1],
                                  outline=(0, 220, 255))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def histogram(values: np.ndarray, flagged: np.ndarray, bins: int = 30) -> dict:
    """Counts per bin of a score, split into flagged and not flagged (NaN left out); for a small inline chart."""
    v = np.asarray(values, dtype=np.float64)
    f = np.asarray(flagged, dtype=bool)
    ok = np.isfinite(v)
    v, f = v[ok], f[ok]
    if v.size == 0:
        return {"edges": np.zeros(0), "flagged": np.zeros(0, int), "other": np.zeros(0, int), "n": 0}
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    return {"edges": edges, "flagged": np.histogram(v[f], edges)[0], "other": np.histogram(v[~f], edges)[0],
            "n": int(v.size)}
