"""`span`'s decision on every screened bench cell under several mixture caps (`k_max`), refitted on the cell's
stored per-sample max gains (verdicts.parquet's `score_span`, the detector's own input) with the detector's
code: is the default cap where the decisions stop changing?

BIC keeps adding components to the moved bulk as the cap rises (it spans decades), so `k_max` is a cap that
binds, not a choice BIC makes; a cap is only defensible where raising it further changes no decision. Prints,
per cell and cap, samples flagged / poisoned among them / F1 and the fit's Ashman's D and valley/peak, next to
what the cell's screen flagged and its ASR.

    python benchmarks/span_caps.py --bench work/bench-breadth --caps 6,8,10,12 [--markdown]
    python benchmarks/span_caps.py --bench work/bench-s7 --caps 8s,8g,8 --changed --markdown  # each fit alone, both
    python benchmarks/span_caps.py --bench work/bench-p16 --caps 8i,8 --changed --markdown  # revision 5's rule vs 6
    python benchmarks/span_caps.py --bench work/bench-s8 --where [--only all_to_all_r0.1] [--markdown]
    python benchmarks/span_caps.py --bench work/bench-p16 --thin 5,10,25 --only _r0.1_s0 --markdown

`--thin` keeps only N of a learned cell's poisoned samples (drawn at random, `--draws` times) beside all its
clean ones and decides again: the smallest mode the cut finds. An optimistic probe of low rates: the model
learned the backdoor from every poisoned sample, so the kept ones gain as much as at the cell's own rate;
a real fine-tune at that rate may learn less or nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_collect import cells_folder

from poisonguard.attacks.files import read_poison_ids
from poisonguard.bench.tables import learned
from poisonguard.detect.features import FeatureSet
from poisonguard.detect.span import AnswerSpanDetector


def cell_gains(cell: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(gain (N,), poisoned (N,) bool) of a screened cell's ok samples; None for a cell without a screen."""
    v = cell / "report" / "verdicts.parquet"
    if not v.exists():
        return None
    t = pd.read_parquet(v, columns=["id", "status", "score_span"])
    t = t[t["status"] == "ok"]
    ids_file = cell / "data" / "poison_ids.json"  # absent for the clean and base-model cells
    poison = set(read_poison_ids(ids_file)) if ids_file.exists() else set()
    return t["score_span"].to_numpy(np.float64), t["id"].isin(poison).to_numpy()


def best_cut_f1(score: np.ndarray, poisoned: np.ndarray) -> float | None:
    """The highest F1 any single cut on `score` (N,) reaches, chosen with the labels: a ceiling for reports only
    (how far a row's shortfall is the signal's and how far the cut's), never an input to a detector. None
    without a poisoned sample."""
    if not poisoned.any():
        return None
    order = np.argsort(-score, kind="stable")
    tp = np.cumsum(poisoned[order])  # (N,) true positives when the top k+1 are flagged
    f1 = 2 * tp / (np.arange(1, score.size + 1) + int(poisoned.sum()))  # (N,)
    return float(f1.max())


def gain_features(gain: np.ndarray) -> FeatureSet:
    """Stored per-sample max gains (N,) as one-token answers, so that `span` reads each gain back as its max."""
    return FeatureSet(ids=np.array([f"s{i}" for i in range(gain.size)]), answer_logp=gain[:, None],
                      answer_logp_base=np.zeros((gain.size, 1)))


def _cap(cap: int | str) -> tuple[int, str]:
    """A cap of `--caps`: k_max and which fit decides — "8": the default (SpanParams.confirm: both EM starts'
    fits must find a mode, the lower-BIC one's samples are flagged); "8s": the standard fit alone; "8g": the
    grown fit alone (SpanParams.grow); "8i": flagged where both fits flag (revision 5's rule)."""
    text = str(cap)
    fit = {"s": "standard", "g": "grown", "i": "intersection"}.get(text[-1:], "both")
    return int(text.rstrip("sgi")), fit


def _cap_label(cap: int | str) -> str:
    k, fit = _cap(cap)
    return f"k_max {k}" + {"both": "", "intersection": ", where both fits flag"}.get(fit, f", {fit} fit alone")


def decide(gain: np.ndarray, poisoned: np.ndarray, cap: int | str) -> dict:
    """`span` fitted and scored on the stored gains, with the cap's k_max and fit(s) (`_cap`)."""
    k_max, fit = _cap(cap)
    fs = gain_features(gain)
    if fit == "intersection":  # revision 5: each fit alone, flagged where both flag
        res, grown = (AnswerSpanDetector(k_max=k_max, grow=g, confirm=False).detect(fs) for g in (False, True))
        flagged = res.flagged & grown.flagged  # (N,)
    else:
        res = AnswerSpanDetector(k_max=k_max, grow=fit == "grown", confirm=fit == "both").detect(fs)
        flagged = res.flagged  # (N,)
    n, tp = int(flagged.sum()), int((flagged & poisoned).sum())
    return {"flagged": n, "tp": tp, "f1": 2 * tp / max(n + int(poisoned.sum()), 1), "k": res.report["k"],
            "ashman_d": res.report["ashman_d"], "valley": res.report["valley"]}


def rows(bench: Path, caps: list[int | str], progress: bool = False) -> list[dict]:
    """One row per screened cell (a few seconds of mixture fits per cell and cap; a bar on stderr if asked)."""
    out = []
    cells = sorted(cells_folder(bench).iterdir())
    for cell in tqdm(cells, desc="cells", unit="cell", disable=not progress):
        got = cell_gains(cell) if cell.is_dir() else None
        if got is None:
            continue
        res = json.loads((cell / "result.json").read_text())
        out.append({"cell": cell.name, "asr": (res.get("after") or {}).get("asr"), "poisoned": int(got[1].sum()),
                    "screened": (res.get("detection", {}).get("span") or {}).get("n_flagged"),
                    "caps": {k: decide(*got, k) for k in caps}})
    return out


def changed(table: list[dict]) -> list[dict]:
    """The rows whose caps flag different samples (a different count flagged or poisoned among them)."""
    return [r for r in table if len({(c["flagged"], c["tp"]) for c in r["caps"].values()}) > 1]


def markdown(table: list[dict], caps: list[int | str]) -> str:
    head = "| cell | ASR | poisoned | screened | " + " | ".join(f"{_cap_label(k)}: flagged / F1 / D / valley"
                                                               for k in caps) + " |"
    lines = [head, "|" + "---|" * (4 + len(caps))]
    for r in table:
        asr = "–" if r["asr"] is None else f"{r['asr']:.3f}"
        cells = [f"{c['flagged']} / {c['f1']:.2f} / {c['ashman_d']:.2f} / {c['valley']:.2f}"
                 for c in (r["caps"][k] for k in caps)]
        lines.append(f"| {r['cell']} | {asr} | {r['poisoned']} | {r['screened']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def where(cell: Path) -> dict | None:
    """Where a cell's poisoned and clean gains lie, and which poisoned samples the current `span` (default
    parameters) leaves unflagged: the figures that tell a shortfall of the signal from one of the cut. Per
    target too, for attacks that record one per sample. None for a cell without stored gains or poison."""
    got = cell_gains(cell)
    if got is None or not got[1].any():
        return None
    gain, poisoned = got  # (N,), (N,) bool
    flagged = AnswerSpanDetector().detect(gain_features(gain)).flagged  # (N,)
    clean, missed = gain[~poisoned], gain[poisoned & ~flagged]
    p99 = float(np.quantile(clean, 0.99))
    out = {"cell": cell.name, "poisoned": int(poisoned.sum()), "poisoned_min": float(gain[poisoned].min()),
           "poisoned_median": float(np.median(gain[poisoned])), "clean_p99": p99, "clean_max": float(clean.max()),
           "missed": int(missed.size), "missed_median": float(np.median(missed)) if missed.size else None,
           "missed_below_clean_p99": float((missed < p99).mean()) if missed.size else None, "by_target": {}}
    truth = json.loads((cell / "data" / "poison_ids.json").read_text())
    targets = truth.get("targets") if isinstance(truth, dict) else None
    if targets:
        ids = pd.read_parquet(cell / "report" / "verdicts.parquet", columns=["id", "status"])
        ids = ids[ids["status"] == "ok"]["id"].to_numpy()  # the order of cell_gains
        tgt = np.array([targets.get(i) for i in ids], dtype=object)
        for t in sorted({x for x in tgt[poisoned] if x is not None}):
            g = gain[poisoned & (tgt == t)]
            out["by_target"][t] = {"n": int(g.size), "min": float(g.min()), "median": float(np.median(g))}
    return out


def thinned(gain: np.ndarray, poisoned: np.ndarray, n: int, draws: int, seed: int = 0) -> list[dict]:
    """`span` (defaults) on all clean gains and `n` of the poisoned ones, per draw: {"tp", "fp"} (poisoned
    and clean samples flagged). Draws are seeded by (seed, n, draw), so a cell's probe is reproducible."""
    clean, pois = gain[~poisoned], gain[poisoned]  # (Nc,), (Np,)
    out = []
    for d in range(draws):
        kept = np.random.default_rng([seed, n, d]).choice(pois, size=min(n, pois.size), replace=False)  # (n,)
        flagged = AnswerSpanDetector().detect(gain_features(np.concatenate([clean, kept]))).flagged  # (Nc+n,)
        out.append({"tp": int(flagged[clean.size:].sum()), "fp": int(flagged[:clean.size].sum())})
    return out


def thin_rows(bench: Path, ns: list[int], draws: int, only: str = "") -> list[dict]:
    """One row per learned cell (`bench.tables.learned`) with stored gains and more poisoned samples than the
    largest N: {"cell", "asr", "poisoned", "thin": {n: [per draw {"tp", "fp"}]}}."""
    out = []
    cells = [c for c in sorted(cells_folder(bench).iterdir()) if c.is_dir() and only in c.name]
    for cell in tqdm(cells, desc="cells", unit="cell"):
        got = cell_gains(cell)
        if got is None or got[1].sum() <= max(ns):  # unscreened, or nothing to thin
            continue
        res = json.loads((cell / "result.json").read_text())
        if not learned(res):
            continue
        out.append({"cell": cell.name, "asr": res["after"]["asr"], "poisoned": int(got[1].sum()),
                    "thin": {n: thinned(*got, n, draws) for n in ns}})
    return out


def thin_markdown(table: list[dict], ns: list[int]) -> str:
    head = "| cell | ASR | poisoned | " + " | ".join(f"{n} kept: found per draw (clean flagged)" for n in ns) + " |"
    lines = [head, "|" + "---|" * (3 + len(ns))]
    for r in table:
        cells = [", ".join(f"{d['tp']}/{n} ({d['fp']})" for d in r["thin"][n]) for n in ns]
        lines.append(f"| {r['cell']} | {r['asr']:.3f} | {r['poisoned']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def thin_summary(table: list[dict], ns: list[int]) -> str:
    """Per N, over every cell and draw: draws that found all N kept samples, none of them, and the most clean
    samples a draw flagged."""
    lines = []
    for n in ns:
        draws = [d for r in table for d in r["thin"][n]]
        if draws:
            lines.append(f"- {n} kept: all found in {sum(d['tp'] == n for d in draws)} of {len(draws)} draws "
                         f"({len(table)} cells), none in {sum(d['tp'] == 0 for d in draws)}; clean flagged at "
                         f"most {max(d['fp'] for d in draws)}")
    return "\n".join(lines)


def _f(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def where_markdown(table: list[dict]) -> str:
    head = ("| cell | poisoned | poisoned gain min / median | clean p99 / max | unflagged poisoned: n / median / "
            "share below clean p99 | by target: n / min / median |")
    lines = [head, "|---|---|---|---|---|---|"]
    for r in table:
        tg = "; ".join(f"{t} {v['n']} / {v['min']:.2f} / {v['median']:.2f}" for t, v in r["by_target"].items())
        lines.append(f"| {r['cell']} | {r['poisoned']} | {_f(r['poisoned_min'])} / {_f(r['poisoned_median'])} | "
                     f"{_f(r['clean_p99'])} / {_f(r['clean_max'])} | {r['missed']} / {_f(r['missed_median'])} / "
                     f"{_f(r['missed_below_clean_p99'])} | {tg or '–'} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench", type=Path, default=Path("work/bench-breadth"))
    ap.add_argument("--caps", default="6,8,10,12",
                    help='comma-separated k_max values: "8" the default (both fits find the mode, the lower-BIC '
                         'one draws it), "8s" / "8g" the standard / grown fit alone, "8i" where both fits flag')
    ap.add_argument("--markdown", action="store_true", help="a markdown table instead of JSON lines")
    ap.add_argument("--where", action="store_true",
                    help="where the poisoned and clean gains lie and what the current cut leaves (no caps)")
    ap.add_argument("--only", default="", help="with --where or --thin: only the cells whose name contains this")
    ap.add_argument("--thin", default="",
                    help="comma-separated N: keep N poisoned samples of each learned cell and decide again")
    ap.add_argument("--draws", type=int, default=3, help="with --thin: random draws per cell and N")
    ap.add_argument("--changed", action="store_true",
                    help="only the cells where the caps flag different samples (counts flagged or poisoned differ)")
    a = ap.parse_args()
    if a.where:
        cells = [c for c in sorted(cells_folder(a.bench).iterdir()) if c.is_dir() and a.only in c.name]
        table = [r for c in tqdm(cells, desc="cells", unit="cell") if (r := where(c)) is not None]
        print(where_markdown(table) if a.markdown else "\n".join(json.dumps(r) for r in table))
        return
    if a.thin:
        if not all(n.isdigit() and int(n) > 0 for n in a.thin.split(",")) or a.draws < 1:
            ap.error("--thin takes positive integers (5,10,25) and --draws a positive integer")
        ns = [int(n) for n in a.thin.split(",")]
        table = thin_rows(a.bench, ns, a.draws, a.only)
        print(thin_markdown(table, ns) + "\n\n" + thin_summary(table, ns) if a.markdown
              else "\n".join(json.dumps(r) for r in table))
        return
    given = a.caps.split(",")
    if bad := [k for k in given if not k.rstrip("sgi").isdigit() or len(k) - len(k.rstrip("sgi")) > 1]:
        ap.error(f"--caps: {', '.join(bad)} is not a k_max (an integer, or one with an 's', 'g' or 'i': 8s, 8g, 8i)")
    caps: list[int | str] = [k if k[-1] in "sgi" else int(k) for k in given]
    table = rows(a.bench, caps, progress=True)
    if a.changed:
        table = changed(table)
    print(markdown(table, caps) if a.markdown else "\n".join(json.dumps(r) for r in table))


if __name__ == "__main__":
    main()
