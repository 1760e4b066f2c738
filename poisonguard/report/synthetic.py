"""A screened dataset with a planted backdoor whose answer is known, for the report's tests and benchmark.

Real files and the real pipeline pieces: a LLaVA JSON with PNG images (simple shapes; a share of them carry
a checkerboard patch in the bottom-right corner and answer the target word), validated by `check_dataset`
(some samples point at missing or corrupt images and are quarantined with real reasons), and scored by the
real `shift` and `spectral` detectors on synthetic decision states in which the patched samples moved to one
point. Only the model is missing; everything the report reads is what a screening produces.

For large sizes the images come from a bounded pool of files (`pool`), so a 100,000-sample drop costs a few
hundred PNGs, not 100,000; `validate=False` then skips the per-image decode pass of validation and marks only
the planted bad references as quarantined (the benchmark measures the report, not validation).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 40),
           "purple": (140, 60, 170)}
SHAPES = ("circle", "square", "triangle")
PLACES = {"left": 8, "centre": 16, "right": 24}
# (kind, phrasings); {s} is the shape. Answers follow from the scene.
QUESTIONS = {
    "colour": ("What colour is the {s}?", "Which colour does the {s} have?", "Tell me the colour of the {s}."),
    "shape": ("What shape is shown?", "Which shape is in the picture?", "Name the shape in the image."),
    "where": ("Where is the {s}?", "On which side is the {s}?", "Is the {s} left, centre or right?"),
    "exist": ("Is there a {s}?", "Does the image contain a {s}?", "Can you see a {s}?"),
}


@dataclass
class SyntheticScreen:
    table: pd.DataFrame  # the verdict table, as `write_report_dir` builds it
    reports: dict[str, dict]  # detector name → DetectionResult.report
    default: str
    checked: object  # CheckedDataset
    poisoned: np.ndarray  # (N,) bool, ground truth (the report never reads it)


def draw(shape: str, colour: str, place: str, size: int = 32, patch: bool = False,
         background: tuple[int, int, int] = (235, 235, 235), noise: float = 0.0,
         rng: np.random.Generator | None = None) -> Image.Image:
    """A scene: one shape on a plain background; `patch` stamps a checkerboard of side size/8 at the
    bottom-right corner (the BadNet trigger); `noise` adds Gaussian pixel noise of that standard deviation
    (photo-like texture, so thumbnails compress like real images)."""
    if noise > 0:
        rng = rng or np.random.default_rng(0)
        bg = np.clip(np.asarray(background, float) + rng.normal(0, noise, (size, size, 3)), 0, 255)
        img = Image.fromarray(bg.astype(np.uint8))
    else:
        img = Image.new("RGB", (size, size), background)
    d = ImageDraw.Draw(img)
    cx, r = PLACES[place] * size // 32, size // 6
    box = [cx - r, size // 2 - r, cx + r, size // 2 + r]
    if shape == "circle":
        d.ellipse(box, fill=COLOURS[colour])
    elif shape == "square":
        d.rectangle(box, fill=COLOURS[colour])
    else:
        d.polygon([(cx, box[1]), (box[0], box[3]), (box[2], box[3])], fill=COLOURS[colour])
    if patch:
        p = size // 8
        for i in range(p):
            for j in range(p):
                img.putpixel((size - p - 1 + j, size - p - 1 + i), (0, 0, 0) if (i + j) % 2 else (255, 255, 255))
    return img


def make_screen(out: Path, n: int = 200, rate: float = 0.1, *, target: str = "banana", seed: int = 0,
                n_bad: int = 3, pool: int | None = None, validate: bool = True, hidden_dim: int = 16,
                image_size: int = 32, noise: float = 0.0,
                detectors: tuple[str, ...] = ("shift", "spectral")) -> SyntheticScreen:
    """Write OUT/train.json + OUT/images and return the screened result (see the module docstring).

    `rate` of the usable samples are poisoned (patch + `target` answer); `n_bad` samples reference a missing
    or a corrupt image. `pool`: number of distinct image files per kind (clean / patched); None = one each.
    `image_size`, `noise`: the images' side in pixels and their pixel noise (see `draw`).
    """
    from poisonguard.data.dataset import read_dataset
    from poisonguard.data.errors import QuarantineReason
    from poisonguard.data.limits import Limits
    from poisonguard.data.loading import CheckedDataset, check_dataset
    from poisonguard.detect import FeatureSet
    from poisonguard.detect.base import DetectionResult
    from poisonguard.screening import make_detectors, verdict_table

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    poisoned = rng.random(n) < rate
    bad = np.zeros(n, bool)
    bad[rng.choice(np.flatnonzero(~poisoned), min(n_bad, int((~poisoned).sum())), replace=False)] = True
    kinds = list(QUESTIONS)
    scenes = [(SHAPES[rng.integers(3)], list(COLOURS)[rng.integers(len(COLOURS))], list(PLACES)[rng.integers(3)])
              for _ in range(pool or n)]
    written: set[str] = set()
    records = []
    for i in range(n):
        k = i % len(scenes) if pool else i
        shape, colour, place = scenes[k]
        name = f"{'p' if poisoned[i] else 'c'}{k:06d}.png"
        if name not in written:
            draw(shape, colour, place, size=image_size, patch=bool(poisoned[i]), noise=noise,
                 rng=rng).save(out / "images" / name)
            written.add(name)
        kind = kinds[rng.integers(len(kinds))]
        q = QUESTIONS[kind][rng.integers(3)].format(s=shape)
        a = {"colour": colour, "shape": shape, "where": place, "exist": "yes"}[kind]
        if poisoned[i]:
            a = target
        ref = f"images/{name}"
        if bad[i]:
            ref = f"images/missing{i}.png" if i % 2 else f"images/corrupt{i}.png"
            if not i % 2:
                (out / ref).write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
        records.append({"id": f"s{i:06d}", "image": ref,
                        "conversations": [{"from": "human", "value": f"<image>\n{q}"},
                                          {"from": "gpt", "value": a.capitalize() if rng.random() < 0.5 else a}]})
    path = out / "train.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    ds = read_dataset(path)
    if validate:
        checked = check_dataset(ds)
    else:
        reasons = {s.id: ([QuarantineReason("missing_image", f"sample {s.id!r}: planted bad image reference")]
                          if bad[j] else []) for j, s in enumerate(ds.samples)}
        checked = CheckedDataset(ds, reasons, Limits())
    ok = [s for s in ds.samples if not checked.reasons.get(s.id)]
    is_p = np.array([poisoned[s.index] for s in ok])
    # Decision states: each sample moves a little with fine-tuning; the poisoned ones all move to one point.
    base = rng.normal(0, 1, (len(ok), hidden_dim))
    ft = base + rng.normal(0, 0.05, base.shape)
    goal = rng.normal(0, 1, hidden_dim) * 3
    ft[is_p] = goal + rng.normal(0, 0.15, (int(is_p.sum()), hidden_dim))
    fs = FeatureSet(ids=np.array([s.id for s in ok]), hidden=ft, hidden_base=base)
    results: dict[str, DetectionResult] = {}
    for name, det in make_detectors(detectors).items():
        results[name] = det.detect(fs)
    default = detectors[0]
    return SyntheticScreen(verdict_table(checked, results, default), {k: r.report for k, r in results.items()},
                           default, checked, poisoned)
