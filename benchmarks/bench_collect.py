"""Every finished cell of a bench folder in one set of tables, without running anything.

    python benchmarks/bench_collect.py [--bench work/bench-breadth] [--out FILE]

`poisonguard bench` is resumable and each run rewrites tables.md with the cells *it* was asked for, so a folder
filled by several runs (other attacks, rates or seeds added later) has no table of all its cells. This reads
every `cells/<name>/result.json` (with the defence loop's `retrain.json` and `asr_by_attack.json`) plus
`base.json`, orders the rows as the benchmark does (its attack list, then rate and seed) and writes the same
tables (`bench.tables`) to `--out` (default BENCH/tables-all.md), so the README's breadth numbers come from one
rerunnable command.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from poisonguard.bench.run import ALL_ATTACKS
from poisonguard.bench.tables import markdown_tables

ROOT = Path(__file__).resolve().parent.parent


def cells_folder(bench: Path) -> Path:
    """BENCH/cells, or a one-line error when BENCH is no bench folder."""
    cells_dir = bench / "cells"
    if not cells_dir.is_dir():
        raise SystemExit(f"error: {bench} has no cells/ folder (run `poisonguard bench --out {bench}`)")
    return cells_dir


def collect(bench: Path) -> dict:
    """A summary of the folder's finished cells, shaped as `run_bench` writes one."""
    cells_dir = cells_folder(bench)
    cells = []
    for d in sorted(cells_dir.iterdir()):
        if not (d / "result.json").is_file():
            continue  # a cell still running, or stopped before its first result
        res = json.loads((d / "result.json").read_text())
        for key, name in (("retrain", "retrain.json"), ("asr_by_attack", "asr_by_attack.json")):
            if (d / name).is_file():  # the defence loop's retrains; the clean fine-tune under each trigger
                res[key] = json.loads((d / name).read_text())
        cells.append(res)
    if not cells:
        raise SystemExit(f"error: no finished cell under {cells_dir}")
    cells.sort(key=lambda c: (float(c["rate"]), c["seed"], c["cell"]))
    first = next((c["detection"] for c in cells if c.get("detection")), {})
    detectors = [name for name, v in first.items() if isinstance(v, dict)]  # not e.g. screen_seconds
    base = json.loads((bench / "base.json").read_text()) if (bench / "base.json").is_file() else {}
    attacks = [a for a in ALL_ATTACKS if any(c["attack"] == a for c in cells)]
    return {"config": {"attacks": attacks, "detectors": [d for d in detectors if d != "vote"]},
            "base": base, "cells": cells}


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", type=Path, default=ROOT / "work" / "bench-breadth")
    ap.add_argument("--out", type=Path, default=None, help="default: BENCH/tables-all.md")
    args = ap.parse_args(argv)
    summary = collect(args.bench)
    text = markdown_tables(summary)
    out = args.out or args.bench / "tables-all.md"
    out.write_text(text)
    print(f"{len(summary['cells'])} cells → {out}")
    return text


if __name__ == "__main__":
    main()
