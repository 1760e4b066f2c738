"""Where each flagged sample's answer-likelihood gain peaks: the answer token `span` scored it by.

    python benchmarks/span_tokens.py --bench work/bench-breadth [--world work/world] [--top 3] [--markdown]

`span` scores a sample by the max over its answer tokens of log p_ft − log p_base (detect/span.py). A learned
backdoor should peak on its payload: the target word, the first words of an injected sentence, a refusal. A
flag that peaks on the end-of-turn token instead says the fine-tune learned where the answer *stops*, not
what it says (the held-out no-relabel control of docs/bench-breadth.md was read that way by hand; this prints
it per cell). Per screened cell, from its stored arrays only (report/extract/{base,finetuned}/span.npz and
report/verdicts.parquet; nothing is recomputed): how many samples `span` flagged, how many of them are
poisoned, the share whose peak sits on the last scored token (the end of the turn), the median peak gain, and
the tokens the flagged peaks sit on most often (decoded with the world's tokenizer), and how likely the base
model found the flagged samples' peak tokens (median log p_base there): a backdoor's target is a word the
base never gives in that place (near the floor of its log-probabilities), a corrected answer is one it already
gives to the same question elsewhere.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_collect import cells_folder

from poisonguard.attacks.files import read_poison_ids
from poisonguard.extract.span import SPAN_FILE, load_span
from poisonguard.report.evaluation import detector_columns

ROOT = Path(__file__).resolve().parents[1]


def peaks(logp: np.ndarray, logp_base: np.ndarray, tokens: np.ndarray) -> dict[str, np.ndarray]:
    """Per sample, from (N, T) teacher-forced log-probabilities (NaN beyond the answer) and token ids:
    "gain" (N,) the max gain, "token" (N,) the token id it sits on (-1 without an answer), "base" (N,) log p_base
    of that token (0 without an answer), "at_end" (N,) bool: the peak is the last scored token (the end-of-turn
    token closes every answer span)."""
    g = np.asarray(logp, np.float64) - np.asarray(logp_base, np.float64)  # (N, T)
    valid = ~np.isnan(g)  # (N, T)
    has = valid.any(axis=1)  # (N,)
    t_star = np.where(valid, g, -np.inf).argmax(axis=1)  # (N,)
    last = valid.shape[1] - 1 - valid[:, ::-1].argmax(axis=1)  # (N,) index of the last valid token
    rows = np.arange(g.shape[0])
    return {"gain": np.where(has, g[rows, t_star], 0.0),
            "token": np.where(has, tokens[rows, t_star], -1),
            "base": np.where(has, np.asarray(logp_base, np.float64)[rows, t_star], 0.0),
            "at_end": has & (t_star == last)}


def cell_tokens(cell: Path, decode, top: int = 3) -> dict | None:
    """The peak summary of one screened cell's flagged samples; None for a cell without span arrays."""
    rep = cell / "report"
    ft, base = rep / "extract" / "finetuned" / SPAN_FILE, rep / "extract" / "base" / SPAN_FILE
    if not (ft.is_file() and base.is_file() and (rep / "verdicts.parquet").is_file()):
        return None
    table = pd.read_parquet(rep / "verdicts.parquet")
    default = json.loads((rep / "manifest.json").read_text())["default_detector"]
    flag_col = detector_columns(table, "span", default)[0]
    flagged_ids = set(table.loc[(table["status"] == "ok") & table[flag_col].astype(bool), "id"].astype(str))
    a, b = load_span(ft), load_span(base)
    if a.ids != b.ids:
        raise ValueError(f"{cell}: the two span.npz files hold different samples")
    pk = peaks(a.logp, b.logp, a.tokens)
    ids = np.asarray(a.ids, dtype=str)
    sel = np.isin(ids, list(flagged_ids))  # (N,)
    ids_file = cell / "data" / "poison_ids.json"  # absent for the clean and base-model cells
    poison = set(read_poison_ids(ids_file)) if ids_file.exists() else set()
    n = int(sel.sum())
    common = Counter(pk["token"][sel].tolist()).most_common(top)
    is_poison = np.isin(ids, list(poison))  # (N,)
    missed = pk["gain"][is_poison & ~sel]  # peak gains of the poisoned samples span left
    clean = pk["gain"][~is_poison]
    return {"cell": cell.name, "flagged": n, "poisoned": int((is_poison & sel).sum()),
            "at_end": float(pk["at_end"][sel].mean()) if n else None,
            "median_gain": float(np.median(pk["gain"][sel])) if n else None,
            "median_base_logp": float(np.median(pk["base"][sel])) if n else None,
            "tokens": [(decode(t), c) for t, c in common],
            "missed": int(missed.size),
            "missed_gain": [float(q) for q in np.quantile(missed, [0, 0.5, 1])] if missed.size else None,
            "clean_max_gain": float(clean.max()) if clean.size else None}


def tokenizer_decoder(world: Path):
    """token id -> its text, with the world base model's tokenizer (loaded once)."""
    from poisonguard.models import load_processor

    tok = getattr(load_processor(world / "base_model"), "tokenizer", None)
    if tok is None:
        raise ValueError(f"{world / 'base_model'} has no tokenizer to decode the answer tokens with")
    return lambda t: tok.convert_ids_to_tokens(int(t))


def rows(bench: Path, decode, top: int = 3) -> list[dict]:
    return [r for c in sorted(cells_folder(bench).iterdir())
            if c.is_dir() and (r := cell_tokens(c, decode, top)) is not None]


def markdown(rs: list[dict]) -> str:
    head = ("| cell | span flagged | poisoned among them | peak on the end-of-turn token | median peak gain (nats) "
            "| median log p_base at the peak | commonest peak tokens (flagged samples) | poisoned left | their peak gain min / median / max "
            "| largest clean peak gain |")
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rs:
        toks = ", ".join(f"`{t}` {c}" for t, c in r["tokens"]) or "–"
        left = "–" if r["missed_gain"] is None else " / ".join(f"{g:.2f}" for g in r["missed_gain"])
        lines.append(f"| {r['cell']} | {r['flagged']} | {r['poisoned']} | {_num(r['at_end'])} | "
                     f"{_num(r['median_gain'])} | {_num(r['median_base_logp'])} | {toks} | {r['missed']} | {left} "
                     f"| {_num(r['clean_max_gain'])} |")
    return "\n".join(lines)


def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench", type=Path, default=ROOT / "work" / "bench-breadth")
    ap.add_argument("--world", type=Path, default=None,
                    help="the world whose tokenizer decodes the tokens (default: the one the bench folder records)")
    ap.add_argument("--top", type=int, default=3, help="peak tokens listed per cell")
    ap.add_argument("--markdown", action="store_true", help="a markdown table instead of JSON lines")
    args = ap.parse_args(argv)
    world = args.world
    if world is None:
        rec = args.bench / "world.json"
        if not rec.is_file():
            ap.error(f"{rec} does not say which world the cells came from: pass --world")
        world = Path(json.loads(rec.read_text())["path"])
    rs = rows(args.bench, tokenizer_decoder(world), args.top)
    text = markdown(rs) if args.markdown else "\n".join(json.dumps(r) for r in rs)
    print(text)
    return text


if __name__ == "__main__":
    main()
