"""Insert the benchmark tables (work/bench/tables.md from `poisonguard bench`) into README.md.

Usage: python benchmarks/update_readme.py [--bench work/bench] [--block NAME]
The tables sit between the markers `<!-- BENCH:START -->` and `<!-- BENCH:END -->` (with `--block NAME`:
`<!-- BENCH-NAME:START -->` … `<!-- BENCH-NAME:END -->`, e.g. a second run's copy of summary.json and
tables.md); the run's date, machine and command are written above them, so every number in the README traces
to a command anyone can rerun.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def markers(block: str) -> tuple[str, str]:
    tag = f"BENCH-{block}" if block else "BENCH"
    return f"<!-- {tag}:START -->", f"<!-- {tag}:END -->"


def replace_block(text: str, start: str, end: str, block: str) -> str:
    """`text` with everything from `start` to `end` (markers included) replaced by `block`; a one-line error
    when the markers are missing."""
    if start not in text or end not in text:
        raise SystemExit(f"error: README.md has no {start} … {end} markers: add them where the tables belong")
    a, b = text.index(start), text.index(end) + len(end)
    return text[:a] + block + text[b:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", type=Path, default=ROOT / "work" / "bench")
    ap.add_argument("--block", default="", help="named marker pair in the README (default: BENCH)")
    args = ap.parse_args()
    START, END = markers(args.block)
    summary = json.loads((args.bench / "summary.json").read_text())
    cfg = summary["config"]
    cmd = summary.get("command") or (  # runs before the command was recorded: rebuilt from the config
        f"poisonguard bench --attacks {','.join(cfg['attacks'])} --rates {','.join(map(str, cfg['rates']))} "
        f"--seeds {','.join(map(str, cfg['seeds']))} --controls {','.join(cfg['controls'])}")
    block = (f"{START}\nRun {summary['started']} UTC on {summary['machine']}; command: `{cmd}` "
             f"(then `python benchmarks/update_readme.py`). Fine-tune: {cfg['finetune']['mode']}, "
             f"{cfg['finetune']['epochs']} epochs, lr {cfg['finetune']['lr']}.\n\n"
             + (args.bench / "tables.md").read_text() + f"\n{END}")
    readme = ROOT / "README.md"
    text = readme.read_text()
    if START in text or args.block:
        text = replace_block(text, START, END, block)
    else:
        text = text.replace("BENCH_TABLES_PLACEHOLDER", block)
    readme.write_text(text)
    print(f"README updated from {args.bench / 'summary.json'}")


if __name__ == "__main__":
    main()
