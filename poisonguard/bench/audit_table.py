"""The projector-audit table of a benchmark folder (issue 5's must-show), one row per fine-tuned bench cell.

Why a separate pass over a finished `poisonguard bench` folder: the bench already paid for the expensive parts
(poisoning, fine-tuning, screening with every detector); the audit only needs the cell's fine-tuned model, the
world's base model, the cell's training data and the world's test set. So for every cell that fine-tuned a
model (attacks and ProjLens variants, the no-relabel control, the clean cell; the base-model control has no
fine-tune to audit) this runs `audit_models` and gathers, per cell:

- ΔW spectrum (ProjLens §3.2): energy share of the top-1 and top-4 singular components per projector layer;
- norm law (ProjLens §4.3): Pearson r of each token's coordinate on the shared drift direction against the
  norm of the base projector's output ‖E0_t‖, for the tokens of clean and of truly poisoned samples, next to
  the paper's r > 0.95; and the paper's own per-image statistic (median over images of the r of ũ_1 vs ‖E0_t‖);
- detection F1 / AUROC of `projector`, `tcap_plus` (the TCAP variant the detector issue kept) and `fused`,
  read from the cell's result.json as the bench measured them (controls: samples flagged, i.e. the clean-set
  flag rate);
- rank-k repair (ProjLens §3.1, `repair`): ASR and CP after removing the top-k components of ΔW from every
  projector layer, and ASR after putting only the top-k back into the base projector (reconstruction);
- the fusion check: `fused` refitted on the cell's stored extraction with two sets of drift annotators, the
  bench's (the pipeline's `audit_projector.scores`) and `ALT_FUSED_SCORES`, both label-free; ground truth is used only
  to score them. The first must reproduce the bench's fused numbers (checked and reported).

Each cell's work lands in OUT/cells/<cell>/ (audit.json, plots, drift_scores.csv, row.json written last), so a
rerun skips finished cells unless the settings or the fine-tuned model changed. The table goes to
OUT/audit_table.md and OUT/audit_table.json.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from poisonguard.atomic import atomic_write_text
from poisonguard.attacks.files import read_poison_ids
from poisonguard.audit.projector import AuditInputError
from poisonguard.data.fingerprint import model_digest
from poisonguard.detect.registry import make_detector
from poisonguard.extract.features import build_features
from poisonguard.extract.storage import load_extraction
from poisonguard.pipeline.config import AuditConfig
from poisonguard.report.evaluation import binary_metrics

PAPER_R = 0.95  # ProjLens: r = 0.97–0.98 on its one plotted image pair (research/projlens.md §4.3)
TABLE_DETECTORS = ("projector", "tcap_plus", "fused")
ALT_FUSED_SCORES = ("drift_max_rel", "drift_mean_rel")
ENERGY_KS = (1, 4)
ROW_FILE = "row.json"
README_START, README_END = "<!-- AUDIT:START -->", "<!-- AUDIT:END -->"
_KIND_ORDER = {"attack": 0, "no_relabel": 1, "clean": 2}


@dataclass
class TableConfig:
    """What the audit of every cell depends on (a change re-audits the cells).

    ks: rank-k removal / reconstruction ranks; max_eval: test prompts per CP / ASR evaluation (None: the
    whole test set, as the bench's own CP / ASR); max_samples: samples in the activation analysis (None: the
    whole training set; the fusion check needs all of them and is skipped otherwise).
    """

    bench: Path
    out: Path | None = None  # default: BENCH/audit
    world: Path | None = None  # default: the bench's summary.json config
    ks: tuple[int, ...] = (1, 2, 4)
    max_eval: int | None = None
    max_samples: int | None = None
    batch_size: int = 64
    alt_fused_scores: tuple[str, ...] = ALT_FUSED_SCORES
    cells: tuple[str, ...] | None = None  # restrict to these cell names
    force: bool = False  # re-audit finished cells
    show_progress: bool = False

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out is not None else Path(self.bench) / "audit"

    def settings(self) -> dict[str, Any]:
        return {
            "ks": list(self.ks),
            "max_eval": self.max_eval,
            "max_samples": self.max_samples,
            "alt_fused_scores": list(self.alt_fused_scores),
        }


# ------------------------------------------------------------------------------------------- bench folder
def _kind(res: dict) -> str:
    """attack | no_relabel | base_model | clean, also for result.json files written before `kind` existed."""
    if "kind" in res:
        return str(res["kind"])
    if res.get("attack") == "clean":
        return "clean"
    return "attack" if res.get("relabel", True) else "no_relabel"


@dataclass(frozen=True)
class CellFiles:
    """Everything the audit of one bench cell reads."""

    name: str
    kind: str
    attack: str | None  # None for the clean cell
    result: dict
    finetuned: Path
    data: Path
    truth: Path | None
    test: Path
    base_model: Path
    extract: Path  # the screen's extraction folder (attention of both models, drift scores)
    screen: dict  # detector_params and strata_k of the bench's screening of this cell


def bench_world(bench: Path, world: Path | None) -> Path:
    """The world folder the bench ran on: `world` if given, else its summary.json's config."""
    if world is not None:
        return Path(world)
    summary = Path(bench) / "summary.json"
    if not summary.exists():
        raise AuditInputError(
            f"{summary} not found (the bench has not finished a run): pass the world folder"
        )
    return Path(json.loads(summary.read_text())["config"]["world"])


def bench_cells(bench: Path, world: Path) -> tuple[list[CellFiles], list[str]]:
    """The auditable cells of a bench folder in table order (attacks in registry order, then the no-relabel
    controls, then the clean cell), and one line per cell left out and why."""
    from poisonguard.attacks import ATTACKS

    cells_dir = Path(bench) / "cells"
    if not cells_dir.is_dir():
        raise AuditInputError(f"{cells_dir} not found: not a `poisonguard bench` folder")
    summary = Path(bench) / "summary.json"
    run_cfg = json.loads(summary.read_text()).get("config", {}) if summary.exists() else {}
    # result.json files written before they carried `screen_settings` fall back to the run's config
    fallback = {"effective_params": {}, "strata_k": run_cfg.get("strata_k", 8)}
    cells, skipped = [], []
    for path in sorted(cells_dir.glob("*/result.json")):
        d = path.parent
        res = json.loads(path.read_text())
        kind = _kind(res)
        if kind == "base_model":
            skipped.append(f"{d.name}: base-model control (no fine-tune to audit)")
            continue
        if not (d / "finetuned" / "finetune.json").exists():
            skipped.append(f"{d.name}: no fine-tuned model")
            continue
        settings = res.get("settings") or {}
        sub = Path(bench) / "world"
        train = sub / "train.json" if settings.get("max_train") is not None else world / "train.json"
        test = sub / "test.json" if settings.get("max_test") is not None else world / "test.json"
        attack = None if kind == "clean" else str(res["attack"])
        data = train if kind == "clean" else d / "data" / train.name
        truth = None if kind == "clean" else d / "data" / "poison_ids.json"
        for need in (data, test, world / "base_model", *([truth] if truth else [])):
            if not need.exists():
                raise AuditInputError(f"{need} not found (cell {d.name})")
        cells.append(
            CellFiles(
                d.name,
                kind,
                attack,
                res,
                d / "finetuned",
                data,
                truth,
                test,
                world / "base_model",
                d / "report" / "extract",
                res.get("screen_settings") or fallback,
            )
        )
    order = {name: i for i, name in enumerate(ATTACKS)}
    cells.sort(
        key=lambda c: (
            _KIND_ORDER.get(c.kind, 3),
            order.get(c.attack or "", 99),
            float(c.result.get("rate", 0)),
            int(c.result.get("seed", 0)),
            c.name,
        )
    )
    return cells, skipped


# --------------------------------------------------------------------------------------------- one cell
def fusion_check(cell: CellFiles, drift_csv: Path, variants: dict[str, Sequence[str]]) -> dict[str, Any]:
    """F1 / AUROC of `fused` refitted on the cell's stored extraction with each set of drift annotators.

    Same detector parameters and strata as the bench's screen (`CellFiles.screen`); the drift scores
    are the audit's, matched by sample id (samples the audit did not score abstain).
    """
    import pandas as pd

    if not (cell.extract / "finetuned").is_dir() or not (cell.extract / "base").is_dir():
        return {"skipped": f"no stored extraction in {cell.extract} (the cell was not screened)"}
    params = (cell.screen.get("effective_params") or {}).get("fused") or {}
    strata_k = int(cell.screen.get("strata_k", 8))
    ids = [str(i) for i in load_extraction(cell.extract / "finetuned").ids]
    drift = pd.read_csv(drift_csv, dtype={"id": str}).set_index("id").reindex(ids)
    truth = set() if cell.truth is None else set(read_poison_ids(cell.truth))
    y = np.isin(ids, list(truth))
    out: dict[str, Any] = {"n": len(ids), "n_unscored": int(drift["drift_max"].isna().sum())}
    for name, cols in variants.items():
        missing = [c for c in cols if c not in drift]
        if missing:
            raise AuditInputError(f"drift scores {missing} not in {drift_csv}")
        extra = {c: drift[c].to_numpy(np.float64) for c in cols}
        features = replace(build_features(cell.extract, strata_k=strata_k), extra_scores=extra)
        det = make_detector("fused", params)
        det.fit(features)
        res = det.score(features)
        out[name] = {"scores": list(cols), **binary_metrics(y, res.flagged, res.p_poison)}
    return out


def _row(cell: CellFiles, report: dict, fusion: dict, seconds: dict[str, float]) -> dict[str, Any]:
    """The table's numbers for one cell, pulled out of its audit report and result.json."""
    layers = [
        {
            "layer": lay["layer"].rsplit(".", 1)[-1],
            **{f"top{k}": lay["energy"][f"top{k}"] for k in ENERGY_KS},
            "effective_rank": lay["effective_rank"],
        }
        for lay in report["weights"]["layers"]
    ]
    act = report.get("activations") or {}
    truth = act.get("truth") or {}
    law = truth.get("norm_law") or {"clean": (act.get("norm_law") or {}).get("all")}
    per_image = truth.get("image_norm_r") or {"clean": (act.get("image_norm_r") or {}).get("all")}
    energy = (act.get("energy") or {}).get("all") or {}
    detection = cell.result.get("detection") or {}
    bench = report.get("benchmark") or {}
    rows = bench.get("rank_k") or []
    joint = "joint" if any(r["layers"] == "joint" for r in rows) else (rows[0]["layers"] if rows else None)

    def pick(mode: str) -> dict[str, dict[str, float]]:
        """k → ASR / CP of the edit of every projector layer at once (what `repair` does)."""
        return {
            str(r["k"]): {"asr": r["asr"], "cp": r["cp"]}
            for r in rows
            if r["mode"] == mode and r["layers"] == joint
        }

    return {
        "cell": cell.name,
        "kind": cell.kind,
        "attack": cell.attack,
        "rate": cell.result.get("rate"),
        "seed": cell.result.get("seed"),
        "n_poison": cell.result.get("n_poison"),
        "finetuned": bench.get("reference", {}).get("finetuned"),
        "base": bench.get("reference", {}).get("base"),
        "bench_after": {k: cell.result.get("after", {}).get(k) for k in ("cp", "asr", "poisoned_fit")},
        "spectrum": layers,
        "norm_law_r": {g: (law.get(g) or {}).get("r") for g in ("clean", "poisoned")},
        "norm_law_n_tokens": {g: (law.get(g) or {}).get("n") for g in ("clean", "poisoned")},
        "image_r": {g: per_image.get(g) for g in ("clean", "poisoned")},
        "image_energy_top1": (energy.get("mean") or [None])[0],
        "detection": {d: detection.get(d) for d in TABLE_DETECTORS},
        "remove": pick("remove"),
        "reconstruct": pick("reconstruct"),
        "fusion": fusion,
        "subsample": act.get("subsample"),
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }


def audit_cell(cfg: TableConfig, cell: CellFiles, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Audit one cell (or return its stored row when it is finished with the same settings and model)."""
    from poisonguard.audit.report import audit_models

    out = cfg.out_dir / "cells" / cell.name
    stamp = {**cfg.settings(), "finetuned": model_digest(cell.finetuned)}
    done = out / ROW_FILE
    if done.exists() and not cfg.force:
        row = json.loads(done.read_text())
        if row.get("settings") == stamp:
            return row
        log(f"[{cell.name}] settings or model changed since the last audit: re-auditing")
    t0 = time.perf_counter()
    report = audit_models(
        cell.base_model,
        cell.finetuned,
        cell.data,
        test=cell.test,
        attack=cell.attack
        or "badnet",  # the clean cell: CP only (the bench also uses BadNet's trigger there)
        ks=cfg.ks,
        out_dir=out,
        truth=cell.truth,
        repair_k=max(cfg.ks),
        max_eval=cfg.max_eval,
        max_samples=cfg.max_samples,
        batch_size=cfg.batch_size,
        layer_sets="joint",
        show_progress=cfg.show_progress,
    )
    seconds = {**report["timings"], "audit_s": time.perf_counter() - t0}
    t1 = time.perf_counter()
    if report["activations"] is None or "skipped" in report["activations"]:
        fusion = {"skipped": "no drift scores (no data with images)"}
    elif report["activations"].get("subsample"):
        fusion = {
            "skipped": "the activation analysis was subsampled (--max-samples); the fusion check needs all"
        }
    else:
        variants = {"bench": AuditConfig().scores, "alt": cfg.alt_fused_scores}
        fusion = fusion_check(cell, out / report["activations"]["scores_file"], variants)
        bench_fused = (cell.result.get("detection") or {}).get("fused")
        if bench_fused is not None and "bench" in fusion:
            mine, theirs = fusion["bench"], bench_fused
            same_auroc = (mine["auroc"] is None) == (theirs["auroc"] is None) and (
                mine["auroc"] is None or abs(mine["auroc"] - theirs["auroc"]) < 1e-6
            )
            fusion["reproduces_bench"] = bool(
                abs(mine["f1"] - theirs["f1"]) < 1e-9
                and mine["n_flagged"] == theirs["n_flagged"]
                and same_auroc
            )
    seconds["fusion_s"] = time.perf_counter() - t1
    row = {**_row(cell, report, fusion, seconds), "settings": stamp}
    atomic_write_text(done, json.dumps(row, indent=2, default=float) + "\n")
    return row


# --------------------------------------------------------------------------------------------- the table
def run_table(cfg: TableConfig, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Audit every finished cell of `cfg.bench` (resumable) and write audit_table.md / audit_table.json."""
    if min(cfg.ks, default=0) < 1:
        raise AuditInputError(f"ks must be positive integers, got {cfg.ks}")
    if not (Path(cfg.bench) / "cells").is_dir():
        raise AuditInputError(f"{Path(cfg.bench) / 'cells'} not found: not a `poisonguard bench` folder")
    world = bench_world(cfg.bench, cfg.world)
    cells, skipped = bench_cells(cfg.bench, world)
    if cfg.cells is not None:
        unknown = sorted(set(cfg.cells) - {c.name for c in cells})
        if unknown:
            raise AuditInputError(f"cells not found or not auditable: {unknown}")
        cells = [c for c in cells if c.name in set(cfg.cells)]
    if not cells:
        raise AuditInputError(f"no finished fine-tuned cell in {cfg.bench}/cells")
    for line in skipped:
        log(f"skipped {line}")
    t0 = time.perf_counter()
    rows = []
    for i, cell in enumerate(cells, 1):
        log(f"cell {i}/{len(cells)}: {cell.name} ({time.perf_counter() - t0:.0f}s elapsed)")
        row = audit_cell(cfg, cell, log=log)
        log(
            f"[{cell.name}] audited in {row['seconds'].get('audit_s', 0) + row['seconds'].get('fusion_s', 0):.0f}s"
        )
        rows.append(row)
    summary = {
        "created": datetime.now(UTC).isoformat(timespec="minutes"),
        "bench": str(cfg.bench),
        "world": str(world),
        "settings": {**cfg.settings(), "detectors": list(TABLE_DETECTORS), "paper_r": PAPER_R},
        "skipped": skipped,
        "rows": rows,
    }
    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "audit_table.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    (out / "audit_table.md").write_text(markdown_table(summary))
    return summary


def _f(v: Any, nd: int = 2) -> str:
    return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{nd}f}"


def _pair(a: Any, b: Any, nd: int = 2) -> str:
    return f"{_f(a, nd)} / {_f(b, nd)}"


def _tag(row: dict) -> str:
    if row["kind"] == "clean":
        return "clean fine-tune (0%)"
    rate = f"{row['rate']:.0%}" if row.get("rate") is not None else ""
    tag = f"{row['attack']} {rate}".strip()
    return f"{tag} no-relabel (control)" if row["kind"] == "no_relabel" else tag


def _metrics_cell(row: dict, m: dict | None) -> str:
    """F1 / AUROC on an attack row; the samples flagged on a control or clean row (nothing there to find)."""
    if not m:
        return "–"
    if row["kind"] != "attack":
        return f"{m['n_flagged']} flagged ({m['flag_rate']:.1%})"
    return _pair(m.get("f1"), m.get("auroc"))


def _detection(row: dict, det: str) -> str:
    return _metrics_cell(row, row["detection"].get(det))


def _asr(row: dict, entry: dict | None) -> str:
    """'ASR / CP' of a model; the clean cell has no backdoor, so only its CP is shown."""
    if not entry:
        return "–"
    if row["kind"] == "clean":
        return f"– / {_f(entry.get('cp'), 3)}"
    return _pair(entry.get("asr"), entry.get("cp"), 3)


def _fused(row: dict, variant: str) -> str:
    return _metrics_cell(row, row["fusion"].get(variant))


def markdown_table(summary: dict) -> str:
    """The must-show table, then the supplementary one (per-image r, reconstruction, fusion check)."""
    rows = summary["rows"]
    ks = summary["settings"]["ks"]
    layer_names = [lay["layer"] for lay in rows[0]["spectrum"]] if rows else []
    head = (
        [
            "cell",
            "fine-tune ASR / CP",
            f"ΔW energy top-1 / top-4 ({'; '.join(layer_names)})",
            f"norm–magnitude r, clean / poisoned (paper: r > {summary['settings']['paper_r']})",
        ]
        + [f"{d} F1 / AUROC" for d in summary["settings"]["detectors"]]
        + [f"remove top-{k}: ASR / CP" for k in ks]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        energy = "; ".join(_pair(lay["top1"], lay["top4"]) for lay in r["spectrum"])
        cells = [
            _tag(r),
            _asr(r, r["finetuned"]),
            energy,
            _pair(r["norm_law_r"]["clean"], r["norm_law_r"]["poisoned"]),
        ]
        cells += [_detection(r, d) for d in summary["settings"]["detectors"]]
        cells += [_asr(r, r["remove"].get(str(k))) for k in ks]
        lines.append("| " + " | ".join(cells) + " |")
    out = "\n".join(lines) + "\n"
    clean = [r for r in rows if r["kind"] == "clean"]
    if clean:
        rates = ", ".join(
            f"{d} {clean[0]['detection'][d]['flag_rate']:.1%}"
            for d in summary["settings"]["detectors"]
            if clean[0]["detection"].get(d)
        )
        out += (
            f"\nClean-set flag rate ({clean[0]['cell']}): {rates or '– (the clean cell was not screened)'}.\n"
        )

    k_max = str(max(ks))
    sup = [
        "cell",
        "per-image r median, clean / poisoned",
        f"images with r > {summary['settings']['paper_r']}, clean / poisoned",
        "per-image ΔE top-1 energy",
        f"reconstruct top-{k_max}: ASR / CP",
        "fused, bench annotators: F1 / AUROC",
        "fused, alt annotators: F1 / AUROC",
        "audit s",
    ]
    lines = ["| " + " | ".join(sup) + " |", "|" + "---|" * len(sup)]
    alt_names = ", ".join(summary["settings"]["alt_fused_scores"])
    for r in rows:
        img = {g: r["image_r"].get(g) or {} for g in ("clean", "poisoned")}

        secs = r["seconds"].get("audit_s", 0) + r["seconds"].get("fusion_s", 0)
        lines.append(
            "| "
            + " | ".join(
                [
                    _tag(r),
                    _pair(img["clean"].get("median"), img["poisoned"].get("median")),
                    _pair(img["clean"].get("share_above_paper"), img["poisoned"].get("share_above_paper")),
                    _f(r["image_energy_top1"]),
                    _asr(r, r["reconstruct"].get(k_max)),
                    _fused(r, "bench"),
                    _fused(r, "alt"),
                    f"{secs:.0f}",
                ]
            )
            + " |"
        )
    out += "\nProjLens's per-image statistic, rank-k reconstruction and the fusion check "
    out += f"(alt drift annotators: {alt_names}):\n\n" + "\n".join(lines) + "\n"
    notes = [r["cell"] for r in rows if r["fusion"].get("reproduces_bench") is False]
    if notes:
        out += f"\nThe refit with the bench's annotators did NOT reproduce the bench's fused verdicts for: {', '.join(notes)}.\n"
    sub = [r for r in rows if r.get("subsample")]
    if sub:
        s = sub[0]["subsample"]
        out += f"\nActivation statistics on {s['n']} of {s['of']} samples ({s['rule']}).\n"
    return out


def update_readme(readme: Path, markdown: str, note: str) -> None:
    """Replace the block between the README's AUDIT markers with `note` and the table."""
    text = Path(readme).read_text()
    if README_START not in text or README_END not in text:
        raise AuditInputError(f"{readme} has no {README_START} ... {README_END} block")
    a, b = text.index(README_START), text.index(README_END) + len(README_END)
    block = f"{README_START}\n{note}\n\n{markdown}{README_END}"
    Path(readme).write_text(text[:a] + block + text[b:])
