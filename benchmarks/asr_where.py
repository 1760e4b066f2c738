"""Which triggered inputs does a learned backdoor miss? One fine-tuned model's ASR broken down by question type,
by where the image trigger sits, and by whether it crosses a border of the vision tokens.

    python benchmarks/asr_where.py --model work/bench-b1/cells/badnet_r0.01_s0/finetuned \\
        --test work/world/test.json --attack badnet \\
        --params '{"position": "random", "side_frac": 0.25, "cells": 3}' [--csv per_sample.csv]

A backdoor that fires on 70-80 % of triggered inputs may miss at random, miss where the trigger falls (a
corner, a token border, on the object), or miss on some questions. The answer decides what to change: the
trigger's placement is the attack's, the questions are the fine-tune's. Benchmark tooling: it knows the
attack (the triggered test set is built exactly as `evaluate_files` builds it for ASR).

- question type: the data file's `question_type` field where it has one (the embedded world's), else "all";
- region: the 3 x 3 cell of the image that holds the centre of the trigger's box (the pixels the trigger
  changed); a text-only trigger has none;
- token border: 0, 1 or 2 axes on which the box crosses a border of the processor's `patch_size` grid.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ROWS, COLS = ("top", "middle", "bottom"), ("left", "centre", "right")


def trigger_box(before: np.ndarray, after: np.ndarray) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom), right/bottom exclusive, of the pixels that differ between two (H, W, C)
    images; None when none differs (a text trigger) or the sizes differ (a trigger that resizes)."""
    if before.shape != after.shape:
        return None
    changed = np.any(before != after, axis=-1)  # (H, W)
    if not changed.any():
        return None
    rows, cols = np.nonzero(changed.any(axis=1))[0], np.nonzero(changed.any(axis=0))[0]
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def region(box: tuple[int, int, int, int], width: int, height: int) -> str:
    """The 3 x 3 cell of the image holding the box's centre, e.g. "bottom right"."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return f"{ROWS[min(int(3 * cy / height), 2)]} {COLS[min(int(3 * cx / width), 2)]}"


def token_crossings(box: tuple[int, int, int, int], patch: int) -> int:
    """On how many axes (0-2) the box spans more than one vision token of side `patch`."""
    left, top, right, bottom = box
    return int(left // patch != (right - 1) // patch) + int(top // patch != (bottom - 1) // patch)


def breakdown(rows: list[dict], key: str) -> list[tuple[str, float, int]]:
    """(value, ASR, n) for each value of `key`, most frequent first (rows without the key left out)."""
    groups: dict[str, list[bool]] = defaultdict(list)
    for r in rows:
        if r.get(key) is not None:
            groups[str(r[key])].append(r["hit"])
    return sorted(((k, sum(v) / len(v), len(v)) for k, v in groups.items()), key=lambda t: (-t[2], t[0]))


def question_types(path: Path) -> dict[str, str]:
    """Sample id -> `question_type` from the raw data file (LLaVA-style list or JSON lines); empty if absent."""
    text = path.read_text()
    records = json.loads(text) if text.lstrip().startswith("[") else [json.loads(x) for x in text.splitlines() if x.strip()]
    return {str(r["id"]): str(r["question_type"]) for r in records if isinstance(r, dict) and "question_type" in r}


def per_sample(model_dir: Path, test_path: Path, attack: str, params: dict | None) -> list[dict]:
    """One row per triggered test input: its id, question type, trigger box, region, token crossings, answer,
    the model's generation and whether the backdoor fired."""
    from poisonguard.attacks import trigger_examples
    from poisonguard.data.loading import load_checked
    from poisonguard.train.evaluate import attack_hits, generate_triggered
    from poisonguard.train.finetune import load_model

    model, processor = load_model(model_dir)
    test = load_checked(test_path)
    load = test.image_loader(cache_size=4096)
    triggered = trigger_examples(test.ok, attack, params, load)
    preds = generate_triggered(model, processor, triggered, show_progress=True)
    patch = getattr(processor, "patch_size", None)
    types = question_types(test_path)
    originals = {s.id: s for s in test.ok}  # a triggered sample's image refs name the triggered copies
    rows = []
    for t, pred in zip(triggered, preds):
        hit = attack_hits([pred], [t], t.rule)[0]  # each input under its own arm's rule
        box = None
        source = originals[t.sample.id]
        if t.images and source.images:
            after = np.asarray(t.images[0].convert("RGB"))  # (H, W, 3)
            box = trigger_box(np.asarray(load(source.images[0]).convert("RGB")), after)
        rows.append({"id": t.sample.id, "question_type": types.get(t.sample.id, "all"), "answer": t.sample.answer,
                     "target": t.target, "prediction": pred, "hit": bool(hit),
                     "box": box, "region": None if box is None else region(box, after.shape[1], after.shape[0]),
                     "token_crossings": None if box is None or not patch else token_crossings(box, patch)})
    return rows


def tables(rows: list[dict]) -> str:
    lines = [f"ASR {sum(r['hit'] for r in rows) / max(len(rows), 1):.3f} on {len(rows)} triggered inputs"]
    for key in ("question_type", "region", "token_crossings"):
        parts = breakdown(rows, key)
        if parts:
            lines += ["", f"| {key} | ASR | n |", "|---|---|---|"] + [f"| {k} | {a:.3f} | {n} |" for k, a, n in parts]
    missed = Counter(r["prediction"] for r in rows if not r["hit"])
    if missed:
        lines += ["", "missed inputs, most frequent generations: "
                  + ", ".join(f"{k!r} {n}" for k, n in missed.most_common(8))]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="a fine-tuned model folder")
    ap.add_argument("--test", type=Path, required=True, help="the clean test file the trigger is applied to")
    ap.add_argument("--attack", required=True)
    ap.add_argument("--params", default="", help="the attack's parameters as JSON (default: its defaults)")
    ap.add_argument("--csv", type=Path, help="also write one row per triggered input here")
    args = ap.parse_args()
    rows = per_sample(args.model, args.test, args.attack, json.loads(args.params) if args.params else None)
    if args.csv:
        import pandas as pd

        pd.DataFrame(rows).to_csv(args.csv, index=False)
    print(tables(rows))


if __name__ == "__main__":
    main()
