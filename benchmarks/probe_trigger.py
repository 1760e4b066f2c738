"""Does the world's frozen vision tower see an image trigger? A linear probe on its output tokens.

    python benchmarks/probe_trigger.py --world work/world                       # BadNet, random vs corner
    python benchmarks/probe_trigger.py --world work/world --attack sig --params '{}'

Issue 16, Build item 1: the default fine-tune keeps the vision tower frozen, so the projector and the LM can
learn a trigger only from what the tower's nine output tokens keep of it. This script measures that directly,
without a fine-tune: fresh scenes (not the world's data) are rendered clean and triggered, the tower's last
hidden state is pooled over its tokens (max and mean: a probe that does not know where the trigger is, as a
random-position patch requires), and a logistic probe separates triggered from clean images. Two training
sets: the view a 1 % fine-tune gets (50 triggered among 4,950 clean, `--positives` first value) and a
balanced one; AUROC on 1,000 + 1,000 fresh images. A trigger the probe cannot separate with thousands of
examples is one no recipe with this tower frozen can be expected to learn from fifty.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from poisonguard.attacks.registry import get_attack, make_params
from poisonguard.models import load_full
from poisonguard.world.scenes import render, sample_scene


def tower_features(model, processor, images) -> np.ndarray:
    """(N, 2H): the vision tower's last hidden state over its patch tokens, max- and mean-pooled."""
    tower = model.model.vision_tower
    out = []
    for i in range(0, len(images), 256):
        x = processor.image_processor(images[i:i + 256], return_tensors="pt")["pixel_values"]  # (B, 3, S, S)
        with torch.no_grad():
            h = tower(pixel_values=x, output_hidden_states=True).hidden_states[-1][:, 1:]  # (B, T, H), no CLS
        out.append(torch.cat([h.max(1).values, h.mean(1)], -1).float().numpy())  # (B, 2H)
    return np.concatenate(out)


def draw(n: int, rng: np.random.Generator, trigger=None) -> list:
    """n fresh scene images, each through `trigger(image, rng)` when given."""
    images = [render(sample_scene(rng)) for _ in range(n)]
    return [trigger(im, rng) for im in images] if trigger is not None else images


def probe_auroc(clean_tr: np.ndarray, trig_tr: np.ndarray, clean_te: np.ndarray, trig_te: np.ndarray) -> float:
    """AUROC on the test images of a standardised, class-balanced logistic probe fit on the training ones."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate([clean_tr, trig_tr])
    y = np.r_[np.zeros(len(clean_tr)), np.ones(len(trig_tr))]
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000, class_weight="balanced"))
    clf.fit(x, y)
    scores = clf.decision_function(np.concatenate([clean_te, trig_te]))
    return float(roc_auc_score(np.r_[np.zeros(len(clean_te)), np.ones(len(trig_te))], scores))


def run(world: Path, attack: str, variants: dict[str, dict], positives: list[int], n_clean: int, n_test: int,
        seed: int) -> list[dict]:
    spec = get_attack(attack)
    if spec.kind != "image" or spec.apply is None:
        raise SystemExit(f"{attack} is not a single image trigger: nothing for the vision tower to see")
    model, processor = load_full(world / "base_model")
    rng = np.random.default_rng(seed)
    clean_tr = tower_features(model, processor, draw(n_clean, rng))
    clean_te = tower_features(model, processor, draw(n_test, rng))
    rows = []
    for name, overrides in tqdm(variants.items(), desc="trigger variants", leave=False):
        params = make_params(attack, overrides)
        trigger = lambda im, r, p=params: spec.apply(im, p, r)
        trig_tr = tower_features(model, processor, draw(max(positives), rng, trigger))
        trig_te = tower_features(model, processor, draw(n_test, rng, trigger))
        for k in positives:
            rows.append({"variant": name, "params": overrides, "triggered_train": k, "clean_train": n_clean,
                         "auroc": round(probe_auroc(clean_tr, trig_tr[:k], clean_te, trig_te), 3)})
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", type=Path, default=ROOT / "work" / "world")
    ap.add_argument("--attack", default="badnet")
    ap.add_argument("--params", default='{"random": {"position": "random"}, "corner": {}}',
                    help="JSON: variant name -> parameter overrides of the attack (default: BadNet at a random "
                         "position and at its default corner)")
    ap.add_argument("--positives", default="50,2000", help="triggered training images per probe")
    ap.add_argument("--n-clean", type=int, default=4950)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=123, help="scene draw (the world's own data is not used)")
    args = ap.parse_args(argv)
    try:
        variants = json.loads(args.params)
        positives = [int(k) for k in args.positives.split(",")]
    except ValueError as e:
        ap.error(f"--params must be a JSON object and --positives comma-separated integers ({e})")
    if not variants or not all(isinstance(v, dict) for v in variants.values()):
        variants = {"default": variants if isinstance(variants, dict) else {}}
    torch.manual_seed(args.seed)
    rows = run(args.world, args.attack, variants, positives, args.n_clean, args.n_test, args.seed)
    print(f"| {args.attack} variant | parameters | triggered / clean probe-training images | AUROC |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | `{json.dumps(r['params'])}` | {r['triggered_train']} / {r['clean_train']} "
              f"| {r['auroc']:.3f} |")


if __name__ == "__main__":
    main()
