"""How far each bench cell's `span` fit lies from the detector's cuts (issue 16, Build 4: the cut's provenance).

    python benchmarks/span_margins.py [--bench work/bench-breadth] [--markdown]

`span` accepts an upper mode of answer-likelihood gain when Ashman's D ≥ `min_ashman_d`, the mixture's valley
before it is at most `max_valley` of its height there, and its weight ≤ `max_weight` (detect/span.py). A cut
that only just separates learned backdoors from clean fine-tunes would be tuned to the benchmark, so this prints,
per screened cell, the statistics the cut compared (read from the cell's stored fit, report/gmm/detectors.json,
nothing refitted), the decision, the number flagged and the cell's ASR, and marks the cells whose valley chose
`max_valley` (world seed 0, see docs/detectors.md) apart from those that only check it, on that world or on a
held-out one (the world seed the bench folder records).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench_collect import cells_folder

from poisonguard.bench.tables import LEARNED_ASR, cell_kind

ROOT = Path(__file__).resolve().parent.parent
# The bench cells whose fits were looked at when `max_valley` (clean_s0, inject_image 5 %) and `k_max` (dual_key
# 5 %, then BadNet 1 %) were chosen, and the three 0.5 % cells that led to revision 2's peeling rule (the
# deepest step behind a gap; inject_text, refusal_text, syntactic), and the two 10 % seed-1 cells that led to
# revision 3 (the minority among all screened samples; two targets) and revision 4 (flagged past the valley;
# all-to-all), all world seed 0 (docs/detectors.md, "span"); the demo drop, not a bench cell, chose too.
CHOSE = {"clean_s0", "inject_image_r0.05_s0", "dual_key_r0.05_s0", "badnet_r0.01_s0",
         "inject_text_r0.005_s0", "refusal_text_r0.005_s0", "syntactic_r0.005_s0",
         "multi_target_r0.1_s1", "all_to_all_r0.1_s1"}
CHOSE_WORLD_SEED = 0


def world_record(bench: Path) -> dict | None:
    """The bench folder's OUT/world.json (written by `poisonguard bench`: the world's folder and settings), or
    None where the folder does not record it."""
    path = bench / "world.json"
    return json.loads(path.read_text()) if path.is_file() else None


def world_seed(bench: Path) -> int | None:
    """The seed of the world the bench folder's cells were fine-tuned from, or None where it is not recorded."""
    world = (world_record(bench) or {}).get("world")
    return None if world is None else world.get("seed")


def role(name: str, seed: int | None) -> str:
    """Whether a cell chose the constants, checks them on the world that chose them, or checks them on another
    world (held out: none of its cells was looked at when a constant was set)."""
    if seed is None:
        return "checks (world not recorded)"
    if seed != CHOSE_WORLD_SEED:
        return f"held-out world (seed {seed})"
    return "chose" if name in CHOSE else "checks"


def cell_row(cell: Path, seed: int | None = CHOSE_WORLD_SEED) -> dict | None:
    """The span fit of one screened cell, or None when the cell has no stored span fit."""
    fits = cell / "report" / "gmm" / "detectors.json"
    result = cell / "result.json"
    if not (fits.is_file() and result.is_file()):
        return None
    span = json.loads(fits.read_text()).get("span")
    if span is None:
        return None
    res = json.loads(result.read_text())
    f, p = span["fitted"], span["params"]
    asr = (res.get("after") or {}).get("asr")
    kind = cell_kind(res)
    return {
        "cell": cell.name, "kind": kind,
        "asr": None if kind != "attack" else asr,
        "learned": None if kind != "attack" or asr is None else asr >= LEARNED_ASR,
        "n_moved": f["n_moved"], "k": f["k"], "ashman_d": f["ashman_d"], "valley": f.get("valley", 1.0),
        # what `max_weight` is compared with: the share of every screened sample (revision 3 on), or of the
        # moved samples in fits stored before it
        "weight": f.get("share", f["weight"]), "accepted": f["accepted"],
        # every peeling step's D, and the valley/peak of the steps taken (stored from revision 2 on)
        "steps": {step: {"d": d, "valley": (f.get("valleys") or {}).get(step)}
                  for step, d in f.get("peels", {}).items()},
        "flagged": (res.get("detection") or {}).get("span", {}).get("n_flagged"),
        "role": role(cell.name, seed),
        "cuts": {"min_ashman_d": p["min_ashman_d"], "max_valley": p["max_valley"], "max_weight": p["max_weight"]},
    }


def rows(bench: Path) -> list[dict]:
    seed = world_seed(bench)
    return [r for c in sorted(cells_folder(bench).iterdir()) if c.is_dir() and (r := cell_row(c, seed)) is not None]


def markdown(rs: list[dict]) -> str:
    head = ["cell", "kind", "ASR", "learned", "moved", "K", "Ashman's D", "valley/peak", "upper share",
            "accepted", "flagged", "constants", "peeling steps: D / valley (– not taken)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rs:
        learned = "–" if r["learned"] is None else ("yes" if r["learned"] else "not learned")
        asr = "–" if r["asr"] is None else f"{r['asr']:.3f}"
        lines.append(f"| {r['cell']} | {r['kind']} | {asr} | {learned} | {r['n_moved']} | {r['k']} | "
                     f"{r['ashman_d']:.2f} | {r['valley']:.2g} | {r['weight']:.3f} | "
                     f"{'yes' if r['accepted'] else 'no'} | {r['flagged']} | {r['role']} | {_steps(r['steps'])} |")
    if rs:
        c = rs[0]["cuts"]
        lines.append(f"\nCuts: D ≥ {c['min_ashman_d']:g}, valley/peak ≤ {c['max_valley']:g}, "
                     f"upper share ≤ {c['max_weight']:g} (of every screened sample; of the moved samples in "
                     "fits stored before `span` revision 3).")
    return "\n".join(lines)


def _steps(steps: dict) -> str:
    """'6:7 18.59 / 1e-08; 4:5 2.31 / 0.89; 3:4 0.62 / –' (a step not taken has no valley)."""
    return "; ".join(f"{k} {v['d']:.2f} / {'–' if v['valley'] is None else format(v['valley'], '.2g')}"
                     for k, v in steps.items()) or "–"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", type=Path, default=ROOT / "work" / "bench-breadth")
    ap.add_argument("--markdown", action="store_true", help="a markdown table instead of JSON lines")
    args = ap.parse_args()
    rs = rows(args.bench)
    print(markdown(rs) if args.markdown else "\n".join(json.dumps(r) for r in rs))


if __name__ == "__main__":
    main()
