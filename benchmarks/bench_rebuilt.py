"""The same cells on a rebuilt base model: a bench folder's cells beside the committed record's cells of the same
world settings, fine-tuned from an earlier build of that world.

Why: a world rebuilt with other CPU kernels (2026-12-06: the pins of `poisonguard.runtime.pin_cpu_kernels`) is
another base model with the same recipe and seed, so every fine-tune and every detection figure of the grid was
measured on a base the committed world no longer is. Rerunning a sample of the grid's cells on the new build
says whether its conclusions (learned or not, goal met or not, controls silent) carry over, cell by cell.

    python benchmarks/bench_rebuilt.py --record docs/bench-cells.csv --bench work/bench-p16

The record's rows are those of the grid's own world (no sibling `world`) and of other builds than the folder's
(the record keeps one row per build of a cell, `bench_grid.py`); a folder cell the record lacks is listed with
its figures alone. Nothing is written. The grid itself takes the folder too (`bench_grid.py --bench`): it
shows the build the world's folder holds now and marks cells measured only on another.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
from bench_grid import COLUMNS, cell_rows, goal_f1, read_record
from span_margins import world_record

from poisonguard.bench.tables import LEARNED_ASR

SIDES = ("before", "rebuilt")


def pair(record: pd.DataFrame, rebuilt: pd.DataFrame) -> pd.DataFrame:
    """One row per rebuilt cell: its figures and the record's for the same (kind, attack, rate, seed) on another
    build (the newest revision of them, then the later row)."""
    builds = set(rebuilt["build"])
    own = record[(record["world"] == "") & ~record["build"].isin(builds)]
    own = own.sort_values("revision").drop_duplicates(["kind", "attack", "rate", "seed"], keep="last")
    key = ["kind", "attack", "rate", "seed"]
    keep = key + ["source", "asr", "fit", "f1", "n_flagged", "n_poison"]
    out = rebuilt[keep].merge(own[keep], on=key, how="left", suffixes=("_rebuilt", "_before"))
    return out.sort_values(key).reset_index(drop=True)


def verdict(asr: float | None, f1: float | None, kind: str, rate: float, flagged: float | None) -> str:
    """What a cell says for the grid: a control silent or not; an attack cell learned and the goal met (or its
    distance), or not learned."""
    if kind != "attack":
        return "—" if pd.isna(flagged) else "silent" if flagged == 0 else f"{int(flagged)} flagged"
    if pd.isna(asr):
        return "—"
    if asr < LEARNED_ASR:
        return "not learned"
    goal = goal_f1(rate)
    return "met" if f1 >= goal else f"short {f1 - goal:+.2f}"


def _num(v, fmt: str = ".3f") -> str:
    return "–" if v is None or pd.isna(v) else format(v, fmt)


def markdown(t: pd.DataFrame) -> str:
    head = ("| cell | kind | before: ASR / fit / F1 / flagged (folder) | rebuilt: ASR / fit / F1 / flagged | "
            "before | rebuilt |")
    lines = [head, "|---|---|---|---|---|---|"]
    for _, r in t.iterrows():
        cell = f"{r['attack']} {r['rate'] * 100:g} % s{r['seed']}"
        sides = [" / ".join([_num(r[f"asr_{s}"]), _num(r[f"fit_{s}"]), _num(r[f"f1_{s}"], ".2f"),
                             _num(r[f"n_flagged_{s}"], ".0f")]) for s in SIDES]
        src = "" if pd.isna(r["source_before"]) else f" ({r['source_before']})"
        says = [verdict(r[f"asr_{s}"], r[f"f1_{s}"], r["kind"], r["rate"], r[f"n_flagged_{s}"]) for s in SIDES]
        lines.append(f"| {cell} | {r['kind']} | {sides[0]}{src} | {sides[1]} | {says[0]} | {says[1]} |")
    return "\n".join(lines)


def summary(t: pd.DataFrame) -> str:
    """Counts: cells whose verdict changed, learned rows on each side, goal met among the learned."""
    says = {s: [verdict(r[f"asr_{s}"], r[f"f1_{s}"], r["kind"], r["rate"], r[f"n_flagged_{s}"])
                for _, r in t.iterrows()] for s in SIDES}
    compared = [i for i, v in enumerate(says["before"]) if v != "—"]
    same = sum(says["before"][i] == says["rebuilt"][i] for i in compared)
    parts = [f"{len(t)} rebuilt cells, {len(compared)} with a recorded counterpart; same verdict on {same}"]
    for s in SIDES:
        learned = [v for v in says[s] if v == "met" or v.startswith("short")]
        parts.append(f"{s}: {len(learned)} learned, goal met on {learned.count('met')}")
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--record", type=Path, required=True, help="the grid's cell record (docs/bench-cells.csv)")
    ap.add_argument("--bench", type=Path, required=True, help="the folder of cells on the rebuilt world")
    ap.add_argument("--detector", default="span")
    args = ap.parse_args(argv)
    rec = world_record(args.bench)
    if rec is None:
        raise SystemExit(f"error: {args.bench} records no world (OUT/world.json): which build is it?")
    rebuilt = pd.DataFrame(cell_rows(args.bench, args.detector), columns=COLUMNS)
    if rebuilt.empty:
        raise SystemExit(f"error: {args.bench} has no screened cell")
    t = pair(read_record(args.record), rebuilt)
    base = json.dumps(rec.get("base_model_sha256")), json.dumps(rec.get("host"))
    text = (f"rebuilt world {rec.get('path')}: base model {base[0]}, host {base[1]}\n\n"
            f"{markdown(t)}\n\n{summary(t)}\n")
    print(text)
    return text


if __name__ == "__main__":
    main()
