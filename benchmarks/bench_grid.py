"""The breadth grid (issue 16's Must show): every attack × rate × seed, the default detector's F1 beside ASR.

    python benchmarks/bench_grid.py --bench work/bench-s7 --bench work/bench-s8 ... [--record docs/bench-cells.csv]
        [--refit] [--readme README.md] [--carrier work/bench-d0c --world work/world]

The benchmark is run in many `poisonguard bench` folders (one per session: a cell is a 2–4 min fine-tune plus a
screen on 2 cores), and a folder may be deleted later. This reads every finished cell of the given folders (one
world: cells fine-tuned from another world seed, or from one built with other settings, are refused: they
answer another question), keeps one row per (kind, attack, rate, seed) — the one screened with the newest
revision of the detector, then the folder given last — and prints:

1. the grid: per (attack, rate) the three seeds as `F1 / ASR` (F1 in brackets where the backdoor was not
   learned, ASR < `LEARNED_ASR`; `—` not measured), and whether the row meets the issue's goal (F1 ≥ 0.95 on
   every learned seed at ≥ 1 % poison, ≥ 0.8 at 0.5 %), with the distance where it does not; a row the
   world's training set cannot carry (no sample to poison, e.g. substitution without multi-word answers) says
   so, read from the world folder that OUT/world.json names; rows at rates beyond the issue's five (e.g.
   20 %) follow each attack's grid rows and are counted apart from the grid's cells;
2. the controls (clean fine-tunes, no-relabel, base model): samples flagged, where the goal is 0;
3. the defence loop where a cell ran it: ASR after retraining on the detector's cleaned set, beside the
   oracle's (exactly the poisoned samples removed) and the base model's (the attack's floor).

With `--record CSV` the rows are also merged into a small committed table (one line per cell, the figures the
grid prints), so cells measured in a folder that no longer exists stay in the grid: a row read from a folder
replaces the record's row of the same cell only when it was screened with the same or a newer revision.
With `--readme FILE` the same text (and the command that made it) replaces the file's GRID block.

With `--carrier FOLDER` a bench folder of a sibling world (the grid world's seed and recipe, built with other
data settings, e.g. `world.describe_frac` 0.25) fills the rows the grid's world cannot carry, and only those:
its other cells are left out (counted on stderr), its entries are marked and its rows name that world (the
record keeps the name in its `world` column, so the mark outlives the folder). Which rows the grid's world
cannot carry is read from the grid world's folder: the one the first `--bench` folder records, or `--world`.

Builds. A world rebuilt from the same recipe and seed can be another base model (other CPU kernels gave other
bytes and another clean accuracy, docs/bench-breadth.md), so a cell also records the build it was fine-tuned
from: the first 12 hex digits of the base model's sha256 that OUT/world.json holds (`build`; empty for folders
written before `poisonguard bench` recorded it). The record keeps one row per build of a cell; the grid shows
the row of the build the world's folder holds now (read from its `base_model/`) where one was measured, and
otherwise the newest other one, marked °. A folder read again fills in the build of its own recorded rows.

With `--refit` (the `span` grid only) a cell screened with an older revision of `span` is decided again with
the current code and the cell's own parameters, on its stored per-sample gains (verdicts.parquet's
`score_span`, the detector's input; a few seconds a cell, no model loaded): its P / R / F1 and count flagged
become the current code's, its `refit` column says so, and the cells whose decision changed are listed.
AUROC and TPR at 1 % FPR rank the gains themselves, so a revision of the cut leaves them as screened.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
from bench_collect import cells_folder
from span_caps import best_cut_f1, cell_gains, gain_features
from span_margins import CHOSE, CHOSE_WORLD_SEED, world_record, world_seed
from tqdm import tqdm
from update_readme import replace_block

from poisonguard.attacks import poison_counts
from poisonguard.bench.run import ALL_ATTACKS, base_model_sha256
from poisonguard.bench.tables import LEARNED_ASR, cell_kind
from poisonguard.data.dataset import read_dataset
from poisonguard.detect.registry import make_detectors
from poisonguard.detect.span import AnswerSpanDetector

RATES = (0.005, 0.01, 0.02, 0.05, 0.1)  # the rates; other rates a folder holds are listed after them
SEEDS = (0, 1, 2)
# The goal for the default detector on a learned row: F1 at least this, by poison rate.
GOAL_F1 = {0.005: 0.8}
GOAL_F1_DEFAULT = 0.95
GRID_START, GRID_END = "<!-- GRID:START -->", "<!-- GRID:END -->"
COLUMNS = ["source", "cell", "kind", "attack", "rate", "seed", "revision", "asr", "cp", "fit", "n_poison",
           "precision", "recall", "f1", "auroc", "tpr_at_1pct_fpr", "n_flagged",
           "retrained_asr", "retrained_cp", "oracle_asr", "base_asr", "refit", "best_cut_f1", "world", "build"]
CELL = ["world", "kind", "attack", "rate", "seed"]  # one cell of one world ("": the grid's own)
KEY = ["world", "build", "kind", "attack", "rate", "seed"]  # one row per build of a cell in the record
WORLD_SETTINGS = ("seed", "n_train", "n_test", "model", "pretrain", "describe_frac")  # what a build was asked for
CARRIER_MARK = "§"
BUILD_MARK = "°"
TEXT_COLUMNS = {"world": str, "build": str, "source": str, "cell": str}  # "" where not recorded, never NaN
COUNT_COLUMNS = ("seed", "revision", "n_poison", "n_flagged", "refit")


def goal_f1(rate: float) -> float:
    return GOAL_F1.get(round(rate, 6), GOAL_F1_DEFAULT)


def short_build(sha: dict | None) -> str:
    """A build's name: the first 12 hex digits of its base model's sha256 ({weight file: sha256}, the first file
    by name), or "" where none is recorded."""
    return str(sha[min(sha)])[:12] if sha else ""


def folder_build(bench: Path) -> str:
    """The build a bench folder's cells were fine-tuned from, as its OUT/world.json records it ("" if not)."""
    return short_build((world_record(bench) or {}).get("base_model_sha256"))


def world_build(world: Path | None) -> str | None:
    """The build a world's folder holds now (its base model's bytes), or None where the folder is not here."""
    if world is None or not (Path(world) / "base_model").is_dir():
        return None
    return short_build(base_model_sha256(Path(world))) or None


def refit_span(gain: np.ndarray, poisoned: np.ndarray, params: dict) -> dict:
    """`span` with the current code and the cell's parameters on the cell's stored gains (N,) and truth (N,):
    P / R / F1 and count flagged."""
    flagged = AnswerSpanDetector(**params).detect(gain_features(gain)).flagged
    n, tp, pos = int(flagged.sum()), int((flagged & poisoned).sum()), int(poisoned.sum())
    return {"n_flagged": n, "precision": tp / n if n else 0.0, "recall": tp / pos if pos else 0.0,
            "f1": 2 * tp / (n + pos) if n + pos else 0.0}


def cell_rows(bench: Path, detector: str, refit_below: int | None = None) -> list[dict]:
    """One row per finished, screened cell of a bench folder: the detector's figures beside ASR / CP / fit;
    `span` cells screened with a revision below `refit_below` decided again with the current code."""
    rows = []
    cells_dir = cells_folder(bench)
    base = json.loads((bench / "base.json").read_text()) if (bench / "base.json").is_file() else {}
    build = folder_build(bench)
    # refits take a few seconds a cell: a bar on stderr then
    for d in tqdm(sorted(cells_dir.iterdir()), desc=bench.name, unit="cell", disable=refit_below is None):
        path = d / "result.json"
        if not path.is_file():
            continue
        res = json.loads(path.read_text())
        det = (res.get("detection") or {}).get(detector)
        if det is None:
            continue  # not screened (--no-screen), or screened without this detector
        after = res.get("after") or {}
        retrains = json.loads((d / "retrain.json").read_text()) if (d / "retrain.json").is_file() else {}
        retrain, oracle = retrains.get(detector) or {}, retrains.get("oracle") or {}
        settings = res.get("screen_settings") or {}
        revision = (settings.get("revisions") or {}).get(detector, 1)
        got = cell_gains(d) if detector == "span" else None  # (gain (N,), poisoned (N,)); None: no stored gains
        refit = None
        if got is not None and refit_below is not None and revision < refit_below:
            params = (settings.get("effective_params") or {}).get(detector) or {}
            refit = refit_span(*got, params)
            det, revision = {**det, **refit}, refit_below
        ceiling = None if got is None else best_cut_f1(*got)
        rows.append({"source": bench.name, "cell": res["cell"], "kind": cell_kind(res), "attack": res["attack"],
                     "rate": float(res["rate"]), "seed": int(res["seed"]), "revision": int(revision),
                     "asr": after.get("asr"), "cp": after.get("cp"), "fit": after.get("poisoned_fit"),
                     "n_poison": res.get("n_poison"),
                     **{k: det.get(k) for k in ("precision", "recall", "f1", "auroc", "tpr_at_1pct_fpr",
                                                "n_flagged")},
                     "retrained_asr": retrain.get("asr"), "retrained_cp": retrain.get("cp"),
                     "oracle_asr": oracle.get("asr"), "base_asr": (base.get(res["attack"]) or {}).get("asr"),
                     "refit": None if refit is None else int(res["detection"][detector]["n_flagged"]),
                     "best_cut_f1": ceiling, "world": "", "build": build})
    return rows


def read_record(path: Path) -> pd.DataFrame:
    """The committed record, with its text columns as text ("" where a row has none: the grid's own world, or a
    build not recorded) and columns it was written without added empty."""
    t = pd.read_csv(path, dtype=TEXT_COLUMNS, keep_default_na=False, na_values={c: [""] for c in COLUMNS
                                                                                 if c not in TEXT_COLUMNS})
    t = t.reindex(columns=COLUMNS)
    for c in TEXT_COLUMNS:  # a column the record was written without reads back as float NaN
        t[c] = t[c].astype(object).where(t[c].notna(), "").astype(str)
    return t


def backfill(record: pd.DataFrame, folders: pd.DataFrame) -> pd.DataFrame:
    """The record without its rows of no recorded build that a folder read now holds (same folder, same cell):
    the folder's row, which names its build, stands in for them."""
    key = ["source"] + CELL
    held = set(map(tuple, folders[key].astype(str).values.tolist()))
    stale = (record["build"] == "") & pd.Series([tuple(r) in held for r in record[key].astype(str).values.tolist()],
                                                index=record.index, dtype=bool)
    return record[~stale]


def merge(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """One row per (world, build, kind, attack, rate, seed): the newest revision, then the frame given last."""
    t = pd.concat([f for f in frames if len(f)], ignore_index=True)
    if t.empty:
        raise SystemExit("error: no screened cell in the given folders or record")
    for c in ("world", "build"):  # a record written before the column existed: the grid's own, no build
        t[c] = t[c].fillna("").astype(str)
    t["_order"] = range(len(t))
    t = t.sort_values(["revision", "_order"]).drop_duplicates(KEY, keep="last")
    t = t.drop(columns="_order").sort_values(KEY).reset_index(drop=True)
    # counts stay integers in the record although a column with gaps reads back as float ("503", not "503.0")
    return t.astype({c: "Int64" for c in COUNT_COLUMNS})


def choose(t: pd.DataFrame, current: dict[str, str | None]) -> pd.DataFrame:
    """One row per cell for the tables: the row of the build its world's folder holds now (`current`: world
    name → build; None where that folder is not here) where one was measured, else the newest revision among
    the other builds (the later row of a tie)."""
    t = t.assign(_now=[current.get(w) is not None and b == current.get(w) for w, b in zip(t["world"], t["build"])],
                 _order=range(len(t)))
    t = t.sort_values(["_now", "revision", "_order"]).drop_duplicates(CELL, keep="last")
    return t.drop(columns=["_now", "_order"]).sort_values(CELL).reset_index(drop=True)


def _other_build(r: pd.Series, current: dict[str, str | None]) -> bool:
    """Whether the row was fine-tuned from another build of its world than the folder holds now."""
    now = current.get(r["world"])
    return now is not None and r["build"] != now


def _learned(r: pd.Series) -> bool | None:
    return None if pd.isna(r["asr"]) else bool(r["asr"] >= LEARNED_ASR)


def _entry(r: pd.Series | None, current: int, builds: dict[str, str | None]) -> str:
    if r is None:
        return "—"
    f1 = "–" if pd.isna(r["f1"]) else f"{r['f1']:.2f}"
    f1 = f"**{f1}**" if _learned(r) else f"({f1})"
    asr = "–" if pd.isna(r["asr"]) else f"{r['asr']:.2f}"
    changed = pd.notna(r["refit"]) and r["refit"] != r["n_flagged"]
    marks = "".join(m for m, on in (("†", r["revision"] < current), ("‡", changed), ("*", r["cell"] in CHOSE),
                                    (CARRIER_MARK, bool(r["world"])),
                                    (BUILD_MARK, _other_build(r, builds))) if on)
    return f"{f1} / {asr}{marks}"


def row_status(cells: list[pd.Series], rate: float, uncarried: str | None = None,
               builds: dict[str, str | None] | None = None) -> str:
    """Goal met, its distance, not learned, not measured, or not carried by the world (`uncarried`: why) —
    over the measured seeds, said with their count (and how many ran on another build than the world's folder
    holds now, `builds`)."""
    if not cells:
        return f"the world cannot carry it: {uncarried}" if uncarried else "not measured"
    learned = [r for r in cells if _learned(r)]
    worlds = sorted({r["world"] for r in cells if r["world"]})
    older = sum(_other_build(r, builds or {}) for r in cells)
    k = (f"{len(cells)} of {len(SEEDS)} seeds" + "".join(f", on {w}" for w in worlds)
         + (f", {older} on another build{BUILD_MARK}" if older else ""))
    if not learned:
        return f"not learned ({k})"
    goal = goal_f1(rate)
    worst = min(learned, key=lambda r: r["f1"])
    part = "" if len(learned) == len(cells) else f", learned on {len(learned)}"
    if worst["f1"] >= goal:
        return f"met ({k}{part})"
    ceiling = worst.get("best_cut_f1")
    signal = ("" if ceiling is None or pd.isna(ceiling)
              else f"; the best cut of its gains, chosen with the labels: {ceiling:.2f}")
    return f"**short**: F1 {worst['f1']:.2f} < {goal} (seed {worst['seed']}{signal}; {k}{part})"


def uncarried_rows(world: Path | None, attacks: list[str], rates: list[float]) -> dict[tuple[str, float], str]:
    """{(attack, rate): why} for the rows the world's training set cannot carry with the attack's defaults (an
    arm with no sample to poison, as `poisonguard bench` drops it: e.g. substitution without multi-word
    answers), so the grid says so instead of "not measured"; empty where the world's folder is not here."""
    if world is None or not (world / "train.json").is_file():
        return {}
    samples = read_dataset(world / "train.json").samples
    out = {}
    for a in attacks:
        for rate in rates:
            empty = [k or a for k, n in poison_counts(samples, a, rate).items() if n == 0]
            if empty:
                out[(a, rate)] = f"no sample to poison for {', '.join(empty)}"
    return out


def grid_markdown(t: pd.DataFrame, current: int, world: Path | None = None,
                  builds: dict[str, str | None] | None = None) -> str:
    builds = builds or {}
    attacks = t[t["kind"] == "attack"]
    rates = list(RATES) + sorted(set(attacks["rate"]) - set(RATES))
    names = list(ALL_ATTACKS) + sorted(set(attacks["attack"]) - set(ALL_ATTACKS))
    index = {(r["attack"], r["rate"], r["seed"]): r for _, r in attacks.iterrows()}
    lines = ["| attack | rate | " + " | ".join(f"seed {s}" for s in SEEDS) + " | row (goal) |",
             "|---|---|" + "---|" * (len(SEEDS) + 1)]
    in_grid = attacks["rate"].isin(RATES)
    counts = {"measured": 0, "rows met": 0, "rows short": 0, "rows learned": 0, "uncarried": 0,
              "other build": int(sum(_other_build(r, builds) for _, r in attacks[in_grid].iterrows()))}
    extra = {"measured": 0, "rows met": 0, "rows short": 0, "rows learned": 0}  # rates beyond the issue's
    uncarried = uncarried_rows(world, names, list(RATES))
    for a in names:
        for rate in rates:
            cells = [index[(a, rate, s)] for s in SEEDS if (a, rate, s) in index]
            if rate not in RATES and not cells:
                continue
            status = row_status(cells, rate, uncarried.get((a, rate)), builds)
            c = counts if rate in RATES else extra
            c["measured"] += len(cells)
            counts["uncarried"] += status.startswith("the world cannot")
            c["rows learned"] += status.startswith(("met", "**short"))
            c["rows met"] += status.startswith("met")
            c["rows short"] += status.startswith("**short")
            entries = [_entry(index.get((a, rate, s)), current, builds) for s in SEEDS]
            lines.append(f"| {a} | {rate:.1%} | " + " | ".join(entries) + f" | {status} |")
    n_grid = len(names) * len(RATES) * len(SEEDS)
    head = (f"{counts['measured']} attack cells of the {len(names)} × {len(RATES)} × {len(SEEDS)} = {n_grid} "
            f"grid measured" + (f" ({counts['measured'] - counts['other build']} on the build the world's folder "
                                f"holds now)" if counts["other build"] else "")
            + f"; {counts['rows learned']} (attack, rate) rows learned on at least one seed: goal met "
            f"on {counts['rows met']}, short on {counts['rows short']}"
            + (f"; {counts['uncarried']} rows the world cannot carry" if counts["uncarried"] else "")
            + (f"; beyond the grid's rates, {extra['measured']} cells, {extra['rows learned']} rows learned: "
               f"goal met on {extra['rows met']}, short on {extra['rows short']}" if extra["measured"] else "")
            + f". Entries: F1 / ASR; F1 in bold where "
            f"learned (ASR ≥ {LEARNED_ASR}), in brackets where not (no miss); † screened with an older revision "
            f"of the detector than the current {current}; ‡ decided again with the current code (`--refit`), "
            f"which changed the count flagged (listed below); * a cell that chose a constant"
            + (f"; {CARRIER_MARK} measured on a sibling world that carries the row (named in the row), since "
               "the grid's world cannot" if attacks["world"].astype(bool).any() else "")
            + (f"; {BUILD_MARK} fine-tuned from another build of its world (same recipe and seed, another base "
               "model) than the world's folder holds now, where that build has no run of the cell"
               if counts["other build"] else "") + ".\n\n")
    return head + "\n".join(lines) + "\n"


def controls_markdown(t: pd.DataFrame, current: int, builds: dict[str, str | None] | None = None) -> str:
    c = t[t["kind"] != "attack"]
    if c.empty:
        return "No control cell measured.\n"
    lines = ["| control | attack | rate | seed | flagged | of poisoned (trigger carriers) |",
             "|---|---|---|---|---|---|"]
    for _, r in c.iterrows():
        rev = (("†" if r["revision"] < current else "") + (CARRIER_MARK if r["world"] else "")
               + (BUILD_MARK if _other_build(r, builds or {}) else ""))
        rate = "–" if r["kind"] == "clean" else f"{r['rate']:.1%}"
        attack = "–" if r["kind"] == "clean" else r["attack"]
        flagged = "–" if pd.isna(r["n_flagged"]) else f"{int(r['n_flagged'])}{rev}"
        carriers = "–" if r["kind"] == "clean" or pd.isna(r["n_poison"]) else int(r["n_poison"])
        lines.append(f"| {r['kind']} | {attack} | {rate} | {r['seed']} | {flagged} | {carriers} |")
    bad = c[c["n_flagged"].fillna(0) > 0]
    worlds = sorted(w for w in set(c["world"]) if w)
    head = (f"{len(c)} controls; goal 0 flagged: met on {len(c) - len(bad)}"
            + (f", failed on {', '.join(bad['cell'] + bad['world'].map(lambda w: CARRIER_MARK if w else ''))}"
               if len(bad) else "")
            + "".join(f"; {CARRIER_MARK} on {w}" for w in worlds) + ".\n\n")
    return head + "\n".join(lines) + "\n"


def defence_markdown(t: pd.DataFrame, builds: dict[str, str | None] | None = None) -> str:
    """ASR after retraining on the detector's cleaned set, beside the floor: the oracle's (exactly the poisoned
    samples removed) and the base model's (an attack whose target the base already gives on some triggered
    inputs cannot go below it). `t`: one row per cell that ran the loop (`choose` among the rows with one, so a
    cell run again on another build without the loop keeps its earlier loop, marked °)."""
    d = t[(t["kind"] == "attack") & t["retrained_asr"].notna()]
    if d.empty:
        return "Defence loop: not run on any cell.\n"

    def num(v: float) -> str:
        return "–" if pd.isna(v) else f"{v:.3f}"

    lines = ["| cell | ASR before | ASR after retraining | CP after | oracle ASR | base-model ASR |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['cell']}{BUILD_MARK if _other_build(r, builds or {}) else ''} | {num(r['asr'])} | {num(r['retrained_asr'])} | {num(r['retrained_cp'])} | "
              f"{num(r['oracle_asr'])} | {num(r['base_asr'])} |" for _, r in d.iterrows()]
    ok = int((d["retrained_asr"] <= 0.01).sum())
    return f"Defence loop: ASR ≤ 1 % after retraining on {ok} of {len(d)} cells.\n\n" + "\n".join(lines) + "\n"


def refit_markdown(t: pd.DataFrame) -> str:
    """Which cells were decided again with the current code, and where that changed the count flagged."""
    r = t[t["refit"].notna()]
    if r.empty:
        return ""
    changed = r[r["refit"] != r["n_flagged"]]
    lines = [f"{len(r)} cells decided again with the current code on their stored gains (`--refit`); the count "
             f"flagged changed on {len(changed)}" + (":" if len(changed) else ".")]
    lines += [f"- {c['cell']} ({c['source']}): {int(c['refit'])} flagged as screened → {int(c['n_flagged'])}, "
              f"F1 {c['f1']:.2f}" for _, c in changed.iterrows()]
    return "\n".join(lines) + "\n"


def read_folders(benches: list[Path], detector: str,
                 refit_below: int | None = None) -> tuple[pd.DataFrame, Path | None]:
    """Every folder's rows and the world's folder, refusing a folder fine-tuned from another world than the
    grid's: another seed, or the same seed built with other settings (e.g. describe answers). Another build of
    the same settings is the same world (what the build measured, e.g. its clean accuracy, may differ): its
    cells name their build."""
    frames, first = [], None
    for b in benches:
        rec = _same_seed(b)
        if rec is not None and first is not None and settings(rec) != settings(first[1]):
            raise SystemExit(f"error: {b} holds cells of another world than {first[0]} (same seed, other "
                             "settings): report a held-out world apart, or pass it as --carrier for the rows "
                             "the grid's world cannot carry")
        if rec is not None and first is None:
            first = (b, rec)
        frames.append(pd.DataFrame(cell_rows(b, detector, refit_below), columns=COLUMNS))
    world = Path(first[1]["path"]) if first is not None and first[1].get("path") else None
    return (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)), world


def settings(rec: dict) -> dict:
    """What a world's build was asked for (`WORLD_SETTINGS`), from a folder's OUT/world.json."""
    world = rec.get("world") or {}
    return {k: world.get(k) for k in WORLD_SETTINGS}


def _same_seed(bench: Path) -> dict | None:
    """The folder's world record, refusing a folder fine-tuned from a world of another seed (held out)."""
    seed = world_seed(bench)
    if seed is not None and seed != CHOSE_WORLD_SEED:
        raise SystemExit(f"error: {bench} holds cells of world seed {seed}; the grid is the committed world's "
                         f"(seed {CHOSE_WORLD_SEED}): report a held-out world apart")
    return world_record(bench)


def world_name(carrier: dict, grid_world: dict) -> str:
    """A sibling world named by its folder and the build settings in which it differs from the grid's world,
    e.g. "world-d0c (describe_frac 0.25)"."""
    mine = carrier.get("world") or {}
    diff = [f"{k} {mine.get(k)}" for k in WORLD_SETTINGS if mine.get(k) != grid_world.get(k)]
    return Path(carrier.get("path") or "?").name + (f" ({', '.join(diff)})" if diff else "")


def read_carriers(carriers: list[Path], world: Path | None, detector: str,
                  refit_below: int | None = None) -> tuple[pd.DataFrame, dict[str, str | None]]:
    """The cells of sibling-world folders that fill rows the grid's world cannot carry (attack and control
    cells of those rows, and the sibling's clean fine-tunes, its own control), named by their world; and each
    such world's build now (`world_build` of the folder its cells name)."""
    if not carriers:
        return pd.DataFrame(columns=COLUMNS), {}
    if world is None or not (world / "world.json").is_file():
        raise SystemExit("error: --carrier needs the grid world's folder to know which rows it cannot carry: "
                         "give a --bench folder that records it, or --world")
    grid_world = json.loads((world / "world.json").read_text())
    uncarried = uncarried_rows(world, list(ALL_ATTACKS), list(RATES))
    frames, builds = [], {}
    for b in carriers:
        rec = _same_seed(b)
        if rec is None:
            raise SystemExit(f"error: {b} records no world (OUT/world.json): a carrier must name the world it "
                             "was fine-tuned from")
        rows = pd.DataFrame(cell_rows(b, detector, refit_below), columns=COLUMNS)
        keep = (rows["kind"] == "clean") | pd.Series(
            [(a, round(float(r), 6)) in uncarried for a, r in zip(rows["attack"], rows["rate"])], dtype=bool)
        if (~keep).any():
            n = int((~keep).sum())
            print(f"{b}: {n} cell{'s' if n > 1 else ''} left out (rows the grid's world carries itself)",
                  file=sys.stderr)
        name = world_name(rec, grid_world)
        frames.append(rows[keep].assign(world=name))
        builds[name] = world_build(Path(rec["path"])) if rec.get("path") else None
    return pd.concat(frames, ignore_index=True), builds


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", type=Path, action="append", default=[], help="a bench folder (repeatable)")
    ap.add_argument("--record", type=Path, default=None, help="merge into (and read from) this CSV")
    ap.add_argument("--detector", default="span", help="the detector of the grid (default: span, the default)")
    ap.add_argument("--readme", type=Path, default=None,
                    help=f"also write the grid into this file, between {GRID_START} and {GRID_END}")
    ap.add_argument("--carrier", type=Path, action="append", default=[],
                    help="a bench folder of a sibling world, for the rows the grid's world cannot carry "
                         "(repeatable)")
    ap.add_argument("--world", type=Path, default=None,
                    help="the grid world's folder (default: the one the first --bench folder records)")
    ap.add_argument("--refit", action="store_true",
                    help="decide `span` cells screened with an older revision again with the current code")
    args = ap.parse_args(argv)
    if args.refit and args.detector != "span":
        raise SystemExit("error: --refit decides `span` from its stored gains; other detectors are re-screened "
                         "by rerunning `poisonguard bench` on the folder")
    current = make_detectors({args.detector: None})[args.detector].revision
    refit_below = current if args.refit else None
    rows, world = read_folders(args.bench, args.detector, refit_below)
    world = args.world or world
    carried, builds = read_carriers(args.carrier, world, args.detector, refit_below)
    builds[""] = world_build(world)
    frames = [rows, carried]
    if args.record is not None and args.record.is_file():  # folders come last: they win a tie of revisions
        frames.insert(0, backfill(read_record(args.record), pd.concat(frames, ignore_index=True)))
    t = merge(frames)
    if args.record is not None:
        t[COLUMNS].to_csv(args.record, index=False, float_format="%.6g")
    shown = choose(t, builds)
    text = "\n".join([grid_markdown(shown, current, world, builds), controls_markdown(shown, current, builds),
                      defence_markdown(choose(t[t["retrained_asr"].notna()], builds), builds),
                      refit_markdown(shown)])
    if args.readme is not None:
        cmd = "python benchmarks/bench_grid.py " + " ".join(argv if argv is not None else sys.argv[1:])
        note = f"Generated {date.today().isoformat()} by `{cmd}`."
        args.readme.write_text(replace_block(args.readme.read_text(), GRID_START, GRID_END,
                                             f"{GRID_START}\n{note}\n\n{text}{GRID_END}"))
    print(text)
    return text


if __name__ == "__main__":
    main()
