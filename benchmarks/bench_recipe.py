"""Fine-tune recipes of the embedded world: does the world learn a small random-position patch at 1 %?

    python benchmarks/bench_recipe.py                       # every cell below, resumable, then the table
    python benchmarks/bench_recipe.py --cells base_bn1_s0   # some cells only (comma-separated names)
    python benchmarks/bench_recipe.py --table               # only print the table of the finished cells

Issue 16, Build item 1. A cell = (recipe, attack, rate, seed): poison the world's training set (BadNet with
`position: random` and its default `side_frac`, or another attack), fine-tune the base model with the recipe,
then measure on the world's test set CP (clean accuracy), ASR (triggered test images answered with the
target) and the fit of the poisoned training samples (the share of them the fine-tuned model answers with
the target). A clean cell (rate 0) fine-tunes the same recipe on the clean training set: its CP is the
reference the recipe's CP must stay within 1 point of. Every step goes through the library
(`poison_file`, `pipeline.finetuning.finetune`, `evaluate_files`) with the attack's parameters passed
explicitly: `poisonguard bench` poisons and evaluates with each attack's *default* parameters (it does not
read `poison.attacks`), so it cannot run BadNet at a random position.

Cells are resumable (OUT/cells/<name>/result.json is written last; a cell's settings are checked on resume).
Cells marked `chooser` chose the recipe (seed 0); `check` cells test the winner on a fresh seed (poison draw
and fine-tune seed) and on an attack that already worked with the old recipe.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from poisonguard.atomic import atomic_write_json
from poisonguard.attacks.files import poison_file
from poisonguard.params import load_params
from poisonguard.pipeline.finetuning import finetune
from poisonguard.runtime import resolve_runtime, set_threads
from poisonguard.train.evaluate import evaluate_files
from poisonguard.train.finetune import FinetuneConfig

BADNET_RANDOM = {"position": "random"}  # default side_frac (1/8: a 6 px checkerboard on a 48 px image)
# The same checkerboard at 1/4 of the side (12 px, 2 px cells): `benchmarks/probe_trigger.py` finds the 6 px
# patch at a random position nearly invisible to the frozen tower (probe AUROC 0.66 from 50 examples), the
# 12 px one visible (0.91); these cells ask whether a visible random-position patch is learned at 1 %.
BADNET_RANDOM_12PX = {"position": "random", "side_frac": 0.25}
# The 12 px patch with 4 px cells: the most visible random-position checkerboard the probe found on
# 2026-12-07 (AUROC 0.974 from 50 examples; 2 px cells 0.903; cell size does not help a 6 px patch: 0.69)
BADNET_RANDOM_12PX_4PXCELLS = {"position": "random", "side_frac": 0.25, "cells": 3}

# Recipes: overrides of params.yaml's `finetune:` section (the "base" recipe is that section as it is).
RECIPES: dict[str, dict] = {
    "base": {},                                              # default mode (vision tower frozen), 5 ep, lr 5e-4
    "vision": {"mode": "train_vision"},                      # the vision tower trains too
    "ep10": {"epochs": 10.0},
    "lr1e-3": {"lr": 1e-3},
    "vision_lr1e-3": {"mode": "train_vision", "lr": 1e-3},
    "vision_lr2e-3": {"mode": "train_vision", "lr": 2e-3},
    "ep20": {"epochs": 20.0},
    "vision_ep10": {"mode": "train_vision", "epochs": 10.0},
    # LoRA on the LM (rank 8) with the projector fully trained: less LM capacity to memorise single images,
    # and the projector, one MLP applied to every image token alike, is position-invariant by construction
    "lora_lr2e-3_ep10": {"mode": "lora", "lr": 2e-3, "epochs": 10.0},
    # every training image moved by up to N px per axis, afresh each epoch (`augment_shift`): a poisoned
    # image can no longer be fitted by remembering its pixels, only through what the poisoned samples share
    "ep10_shift1": {"epochs": 10.0, "augment_shift": 1},
    "ep10_shift3": {"epochs": 10.0, "augment_shift": 3},
    "ep10_shift2": {"epochs": 10.0, "augment_shift": 2},
    "ep15_shift1": {"epochs": 15.0, "augment_shift": 1},
    "ep10_shift1_lr1e-3": {"epochs": 10.0, "augment_shift": 1, "lr": 1e-3},
    "ep10_shift1_lr2e-3": {"epochs": 10.0, "augment_shift": 1, "lr": 2e-3},
    "ep10_shift1_lr1e-3_bs32": {"epochs": 10.0, "augment_shift": 1, "lr": 1e-3, "batch_size": 32},
}


@dataclass(frozen=True)
class Cell:
    recipe: str
    attack: str  # "clean" for the 0 % reference
    rate: float
    seed: int
    params: dict = field(default_factory=dict)
    role: str = "chooser"  # chooser (seed 0, picks the recipe) | check (held out: seed 1, another attack)

    @property
    def data_name(self) -> str:
        """The poisoned data's name (attack, rate, seed): shared by every recipe."""
        if self.attack == "clean":
            return f"clean_s{self.seed}"
        tag = {"badnet": "bn"}.get(self.attack, self.attack)
        if self.params.get("position") == "random":
            tag += "rand"
        side = f"_side{self.params['side_frac']:g}" if "side_frac" in self.params else ""
        side += f"_cells{self.params['cells']}" if "cells" in self.params else ""
        return f"{tag}{self.rate * 100:g}{side}_s{self.seed}"

    @property
    def name(self) -> str:
        return f"{self.recipe}_{self.data_name}"


def _cells(which: str = "measured") -> list[Cell]:
    """`measured`: the cells of docs/recipe.md, in the order they were run (2026-12-04); `next`: the cells
    planned after them and not yet run (the budget of the session ran out), in the intended order."""
    bn = {"attack": "badnet", "rate": 0.01, "params": BADNET_RANDOM}
    measured = [
        Cell("base", seed=0, **bn),
        Cell("vision", seed=0, **bn),
        Cell("vision_lr2e-3", seed=0, **bn),
        Cell("ep10", seed=0, **bn),
        Cell("base", "clean", 0.0, 0),
        Cell("lr1e-3", seed=0, **bn),
    ]
    following = [
        Cell("vision_lr1e-3", seed=0, **bn),
        Cell("ep20", seed=0, **bn),
        # for the winner (`base` stands in for it here): its clean reference, a second seed, an attack that
        # already worked with the old recipe
        Cell("base", seed=1, role="check", **bn), Cell("base", "clean", 0.0, 1, role="check"),
        Cell("base", "text_prefix", 0.1, 0, role="check"),
    ]
    # 2026-12-06: after the probe (module docstring of probe_trigger.py), the visible 12 px patch at a random
    # position and the corner patch (visible: probe AUROC 0.999) under the base recipe and 10 epochs
    bn12 = {"attack": "badnet", "rate": 0.01, "params": BADNET_RANDOM_12PX}
    visible = [
        Cell("base", seed=0, **bn12),
        Cell("ep10", seed=0, **bn12),
        Cell("ep10", "badnet", 0.01, 0),
        Cell("ep10", "clean", 0.0, 0),
        Cell("vision", seed=0, **bn12),
        Cell("vision_ep10", seed=0, **bn12),
        Cell("lora_lr2e-3_ep10", seed=0, **bn12),
    ]
    # 2026-12-07 evening (a world rebuilt on another host, docs/recipe.md), in the order run: shift augmentation
    # against the memorisation the cells above show, on the most visible random patch (and the issue's own
    # 6 px one), beside the same patch under 5, 10 and 20 epochs and with the tower training
    bn12c = {"attack": "badnet", "rate": 0.01, "params": BADNET_RANDOM_12PX_4PXCELLS}
    augment = [
        Cell("ep10_shift3", seed=0, **bn12c),
        Cell("ep10", seed=0, **bn12c),
        Cell("ep10_shift3", seed=0, **bn),
        Cell("ep20", seed=0, **bn12c),
        Cell("ep10_shift1", seed=0, **bn12c),
        Cell("vision_ep10", seed=0, **bn12c),
        Cell("base", seed=0, **bn12c),
    ]
    # 2026-12-07 night: around the shift-1 recipe (more epochs, a larger shift, a larger step)
    around = [
        Cell("ep10_shift1_lr1e-3", seed=0, **bn12c),
        Cell("ep15_shift1", seed=0, **bn12c),
        Cell("ep10_shift2", seed=0, **bn12c),
        Cell("ep10_shift1_lr2e-3", seed=0, **bn12c),
        Cell("ep10_shift1_lr1e-3_bs32", seed=0, **bn12c),
        Cell("ep10_shift1_lr1e-3", "clean", 0.0, 0),
        Cell("ep10_shift1_lr1e-3", "badnet", 0.02, 0, params=BADNET_RANDOM_12PX_4PXCELLS),
    ]
    # 2026-12-07 night, on a world whose tower was pretrained with textures (world.texture_frac 0.5, its own
    # --world and --out): the 6 px patch at a random position, under the default and shift-1 recipes
    texture = [Cell("base", seed=0, **bn), Cell("ep10_shift1", seed=0, **bn)]
    sets = {"measured": measured, "next": following, "visible": visible, "augment": augment, "around": around,
            "texture": texture}
    if which != "all":
        return sets[which]
    unique: dict[str, Cell] = {}  # a set may repeat another's cell for another world (texture: measured's base)
    for c in measured + following + visible + augment + around + texture:
        if unique.setdefault(c.name, c) != c:
            raise ValueError(f"two different cells are named {c.name}")
    return list(unique.values())


def finetune_config(params_file: Path, recipe: str, seed: int) -> FinetuneConfig:
    section = dict(load_params(params_file).get("finetune") or {})
    return replace(FinetuneConfig(**{**section, **RECIPES[recipe]}), seed=seed)


def run_cell(cell: Cell, world: Path, out: Path, params_file: Path, runtime, log=print) -> dict:
    d = out / "cells" / cell.name
    done = d / "result.json"
    cfg = finetune_config(params_file, cell.recipe, cell.seed)
    settings = {"finetune": asdict(cfg), "attack": cell.attack, "rate": cell.rate, "seed": cell.seed,
                "attack_params": cell.params, "world": str(world)}
    if done.exists():
        res = json.loads(done.read_text())
        if res["settings"] != json.loads(json.dumps(settings)):
            raise ValueError(f"{d} was computed with other settings: use another --out")
        return res
    train, test = world / "train.json", world / "test.json"
    poison_ids = None
    if cell.attack != "clean":
        data_dir = out / "data" / cell.data_name  # shared by the recipes: same attack, rate, seed
        if not (data_dir / "poison_ids.json").exists():
            log(f"[{cell.name}] poisoning")
            poison_file(train, data_dir, cell.attack, cell.rate, seed=cell.seed, params=cell.params or None)
        train, poison_ids = data_dir / "train.json", data_dir / "poison_ids.json"
    model_dir = d / "model"
    log(f"[{cell.name}] fine-tuning ({cfg.mode}, {cfg.epochs:g} epochs, lr {cfg.lr:g}, seed {cfg.seed})")
    ft = finetune(train, world / "base_model", model_dir, cfg, runtime=runtime, show_progress=False,
                  log=lambda m: None)
    log(f"[{cell.name}] evaluating ({ft.seconds:.0f}s fine-tune, final loss {ft.report['final_loss']:.3f})")
    t0 = time.perf_counter()
    # the clean cell is evaluated under the BadNet-random trigger too (the clean fine-tune's ASR reference)
    attack = "badnet" if cell.attack == "clean" else cell.attack
    params = BADNET_RANDOM if cell.attack == "clean" else (cell.params or None)
    ev = evaluate_files(model_dir, test, attack=attack, params=params, train=train if poison_ids else None,
                        poison_ids=poison_ids, show_progress=False, runtime=runtime)
    res = {"cell": cell.name, "role": cell.role, "settings": settings, "finetune_seconds": round(ft.seconds, 1),
           "steps": ft.report["steps"], "final_loss": ft.report["final_loss"],
           "eval_seconds": round(time.perf_counter() - t0, 1),
           **{k: ev.get(k) for k in ("cp", "asr", "poisoned_fit", "n_poisoned_train", "n_triggered")}}
    atomic_write_json(done, res)
    for f in model_dir.glob("*.safetensors"):  # the weights are not needed again; keep the folder's reports
        f.unlink()
    log(f"[{cell.name}] CP {res['cp']:.3f} ASR {res['asr']:.3f} fit {_f(res['poisoned_fit'])}")
    return res


def _f(v, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def table(out: Path, cells: list[Cell]) -> str:
    """One row per recipe and poisoned cell, with the CP of the same recipe's clean fine-tune (same seed)."""
    res = {c.name: json.loads((out / "cells" / c.name / "result.json").read_text())
           for c in cells if (out / "cells" / c.name / "result.json").exists()}
    rows = [("| recipe | cell | role | ASR | poisoned-train fit | CP | clean CP (same recipe, seed) | ΔCP | "
             "clean ASR | fine-tune s | steps |"),
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        r = res.get(c.name)
        if r is None or c.attack == "clean":
            continue
        clean = res.get(Cell(c.recipe, "clean", 0.0, c.seed).name)
        cp0 = None if clean is None else clean["cp"]
        fit = r["poisoned_fit"]
        rows.append(f"| {c.recipe} | {c.name} | {c.role} | {_f(r['asr'])} | {_f(fit)} "
                    f"({round(fit * r['n_poisoned_train'])}/{r['n_poisoned_train']}) | {_f(r['cp'])} | {_f(cp0)} | "
                    f"{'–' if cp0 is None else format(100 * (r['cp'] - cp0), '+.1f')} | "
                    f"{'–' if clean is None else _f(clean['asr'])} | {r['finetune_seconds']:.0f} | {r['steps']} |")
    clean_rows = [r for r in res.values() if "_clean_" in r["cell"]]
    if clean_rows:
        rows += ["", "| clean fine-tune | CP | ASR (BadNet-random trigger) | fine-tune s |", "|---|---|---|---|"]
        rows += [f"| {r['cell']} | {_f(r['cp'])} | {_f(r['asr'])} | {r['finetune_seconds']:.0f} |" for r in clean_rows]
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", type=Path, default=ROOT / "work" / "world")
    ap.add_argument("--out", type=Path, default=ROOT / "work" / "recipe")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml", help="its `finetune:` section is the base recipe")
    ap.add_argument("--cells", default="", help="comma-separated cell names (default: the chosen set, in order)")
    ap.add_argument("--set", choices=("measured", "next", "visible", "augment", "around", "texture", "all"), default="measured",
                    help="measured: the cells of docs/recipe.md's first table; next: the planned ones not yet "
                         "run; visible: patches the frozen tower sees (probe_trigger.py), 2026-12-06; augment: "
                         "shift augmentation (augment_shift), 2026-12-07; around: variations of its shift-1 recipe; texture: "
                         "the issue's patch on a world built with world.texture_frac (pass its --world, --out)")
    ap.add_argument("--table", action="store_true", help="only print the table of finished cells")
    args = ap.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    cells = _cells(args.set)
    if args.cells:
        want = set(args.cells.split(","))
        cells = _cells("all")
        unknown = want - {c.name for c in cells}
        if unknown:
            ap.error(f"unknown cells {sorted(unknown)}; known: {[c.name for c in cells]}")
        todo = [c for c in cells if c.name in want]
    else:
        todo = cells
    if not args.table:
        runtime = resolve_runtime("cpu", "float32")
        set_threads(runtime)
        for c in todo:
            run_cell(c, args.world, args.out, args.params, runtime, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(table(args.out, cells))


if __name__ == "__main__":
    main()
