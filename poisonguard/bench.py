"""`poisonguard bench`: attacks x poison rates x seeds on the embedded world, with controls.

For every cell it poisons the world's training set, fine-tunes the base model (default settings), measures
CP / ASR / poisoned-train fit, screens the fine-tuned model's training set with every detector on one shared
extraction, and scores each detector against the ground truth. Controls: the same trigger without relabelling
(no backdoor exists: a detector should stay silent) and a 0%-poison clean set (flag rate). Results are written
as JSON per cell and as Markdown tables that the README includes. Everything is resumable: finished cells are
skipped on rerun.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from poisonguard.train.finetune import FinetuneConfig


@dataclass
class BenchConfig:
    world: Path
    out: Path
    attacks: tuple[str, ...] = ("badnet", "blend", "sig", "wanet", "ftrojan", "text_prefix", "syntactic")
    rates: tuple[float, ...] = (0.1,)
    seeds: tuple[int, ...] = (0,)
    controls: tuple[str, ...] = ("badnet",)  # attacks whose no-relabel control is run
    clean: bool = True
    detectors: tuple[str, ...] = ("tcap", "tcap_plus", "fused", "projector", "bye", "spectral",
                                  "activation_clustering")
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    detector_params: dict = field(default_factory=dict)
    strata_k: int = 8
    screen: bool = True


def _cells(cfg: BenchConfig) -> list[dict]:
    cells = []
    for seed in cfg.seeds:
        for rate in cfg.rates:
            for attack in cfg.attacks:
                cells.append({"attack": attack, "rate": rate, "seed": seed, "relabel": True})
        for attack in cfg.controls:
            cells.append({"attack": attack, "rate": max(cfg.rates), "seed": seed, "relabel": False})
        if cfg.clean:
            cells.append({"attack": "clean", "rate": 0.0, "seed": seed, "relabel": True})
    return cells


def cell_name(c: dict) -> str:
    if c["attack"] == "clean":
        return f"clean_s{c['seed']}"
    return f"{c['attack']}_r{c['rate']:g}_s{c['seed']}" + ("" if c["relabel"] else "_norelabel")


def run_cell(cfg: BenchConfig, c: dict, *, log=print) -> dict:
    """One cell: poison -> fine-tune -> CP/ASR/fit -> screen with all detectors -> metrics. Resumable."""
    from poisonguard.attacks.files import poison_file
    from poisonguard.data.loading import load_checked
    from poisonguard.train.evaluate import evaluate_files
    from poisonguard.train.examples import to_examples
    from poisonguard.train.finetune import finetune, load_model, save_model

    name = cell_name(c)
    d = Path(cfg.out) / "cells" / name
    done = d / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    d.mkdir(parents=True, exist_ok=True)
    world = Path(cfg.world)
    res: dict = {"cell": name, **c}
    if c["attack"] == "clean":
        data = world / "train.json"
        truth_ids: list[str] = []
    else:
        poison_file(world / "train.json", d / "data", c["attack"], c["rate"], seed=c["seed"], relabel=c["relabel"])
        data = d / "data" / "train.json"
        truth_ids = json.loads((d / "data" / "poison_ids.json").read_text())["poison_ids"]
    res["n_poison"] = len(truth_ids)
    ft_dir = d / "finetuned"
    if not (ft_dir / "model.safetensors").exists():
        checked = load_checked(data)
        model, processor = load_model(world / "base_model")
        fcfg = FinetuneConfig(**{**asdict(cfg.finetune), "seed": c["seed"]})
        model, rep = finetune(model, processor, to_examples(checked.ok, checked.image_loader()), fcfg,
                              show_progress=False)
        save_model(model, processor, ft_dir, rep)
    res["finetune_seconds"] = json.loads((ft_dir / "finetune.json").read_text())["seconds"]
    attack = None if c["attack"] == "clean" else c["attack"]
    res["after"] = evaluate_files(ft_dir, world / "test.json", attack=attack or "badnet",
                                  train=data if truth_ids else None,
                                  poison_ids=(d / "data" / "poison_ids.json") if truth_ids else None,
                                  show_progress=False)
    log(f"[{name}] CP {res['after']['cp']:.3f} ASR {res['after'].get('asr', float('nan')):.3f} "
        f"fit {res['after'].get('poisoned_fit', float('nan'))} ({res['finetune_seconds']:.0f}s)")
    if cfg.screen:
        res["detection"] = screen_cell(cfg, data, ft_dir, d / "report", truth_ids, log=log)
    done.write_text(json.dumps(res, indent=2, default=float) + "\n")
    return res


def screen_cell(cfg: BenchConfig, data: Path, ft_dir: Path, report: Path, truth_ids: list[str], *, log=print) -> dict:
    from poisonguard.report.evaluation import binary_metrics
    from poisonguard.screening import run_screen

    t0 = time.perf_counter()
    res = run_screen(data, Path(cfg.world) / "base_model", report, finetuned=ft_dir, detectors=cfg.detectors,
                     default=cfg.detectors[0], detector_params=cfg.detector_params, strata_k=cfg.strata_k,
                     show_progress=False, log=lambda m: None)
    table = res.table[res.table["status"] == "ok"]
    y = table["id"].astype(str).isin(set(truth_ids)).to_numpy()
    out = {"screen_seconds": round(time.perf_counter() - t0, 1)}
    for det in cfg.detectors:
        if det == res.default:
            flags, p = table["flagged"].to_numpy(bool), table["p_poison"].to_numpy(float)
        else:
            flags, p = table[f"flag_{det}"].to_numpy(bool), table[f"p_{det}"].to_numpy(float)
        out[det] = binary_metrics(y, flags, p)
    log("   " + "  ".join(f"{k}: F1 {v['f1']:.2f} AUROC {v['auroc'] if v['auroc'] is None else round(v['auroc'], 2)} "
                          f"n={v['n_flagged']}" for k, v in out.items() if isinstance(v, dict)))
    return out


def base_reference(cfg: BenchConfig) -> dict:
    """CP of the base model, and its ASR on each attack's triggered test set (the 'before' columns)."""
    from poisonguard.train.evaluate import evaluate_files

    path = Path(cfg.out) / "base.json"
    ref = json.loads(path.read_text()) if path.exists() else {}
    missing = [a for a in cfg.attacks if a not in ref]
    for attack in missing:  # incremental: several bench processes may share one folder
        r = evaluate_files(Path(cfg.world) / "base_model", Path(cfg.world) / "test.json", attack=attack,
                           show_progress=False)
        ref[attack] = {"cp": r["cp"], "asr": r["asr"]}
    if missing:
        path.parent.mkdir(parents=True, exist_ok=True)
        current = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps({**current, **ref}, indent=2) + "\n")
    return ref


def run_bench(cfg: BenchConfig, *, log=print) -> dict:
    started = datetime.now(timezone.utc).isoformat(timespec="minutes")
    ref = base_reference(cfg)
    results = [run_cell(cfg, c, log=log) for c in _cells(cfg)]
    summary = {"started": started, "machine": f"{platform.node()} ({platform.processor() or platform.machine()}, "
               f"{__import__('os').cpu_count()} cores)", "config": _jsonable(asdict(cfg)), "base": ref,
               "cells": results}
    (Path(cfg.out) / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    (Path(cfg.out) / "tables.md").write_text(markdown_tables(summary))
    return summary


def _jsonable(x):
    return json.loads(json.dumps(x, default=str))


def _fmt(v, nd=2):
    return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{nd}f}"


def markdown_tables(summary: dict) -> str:
    """The attack table (issue 3) and the detection table (issue 4), from the cells of one run."""
    base = summary["base"]
    cells = summary["cells"]
    clean = next((c for c in cells if c["attack"] == "clean"), None)
    lines = ["| attack | poisoned | CP before → after | ASR before → after | poisoned-train fit | fine-tune s |",
             "|---|---|---|---|---|---|"]
    for c in cells:
        a = c["after"]
        if c["attack"] == "clean":
            lines.append(f"| clean fine-tune (0%) | 0 | {_fmt(base[next(iter(base))]['cp'], 3)} → {_fmt(a['cp'], 3)} | – | – | {c['finetune_seconds']:.0f} |")
            continue
        b = base.get(c["attack"], {})
        tag = c["attack"] + ("" if c["relabel"] else " (no relabel)")
        lines.append(f"| {tag} | {c['n_poison']} | {_fmt(b.get('cp'), 3)} → {_fmt(a['cp'], 3)} | "
                     f"{_fmt(b.get('asr'), 3)} → {_fmt(a.get('asr'), 3)} | {_fmt(a.get('poisoned_fit'), 3)} | "
                     f"{c['finetune_seconds']:.0f} |")
    out = "\n".join(lines) + "\n"
    if clean is not None:
        out += f"\nClean fine-tune CP: {_fmt(clean['after']['cp'], 3)} (the reference for 'CP within 2 points').\n"
    dets = summary["config"]["detectors"]
    if any("detection" in c for c in cells):
        head = "| cell | " + " | ".join(dets) + " |\n|---|" + "---|" * len(dets)
        rows = []
        for c in cells:
            if "detection" not in c:
                continue
            det = c["detection"]
            if c["attack"] == "clean" or not c["relabel"]:
                cells_txt = [f"{det[d]['n_flagged']} flagged ({det[d]['flag_rate']:.1%})" for d in dets]
                tag = "clean (0%)" if c["attack"] == "clean" else f"{c['attack']} no-relabel (control)"
            else:
                cells_txt = [f"{det[d]['f1']:.2f} / {_fmt(det[d]['auroc'])}" for d in dets]
                tag = f"{c['attack']} {c['rate']:.0%}"
            rows.append(f"| {tag} | " + " | ".join(cells_txt) + " |")
        out += "\nDetection, F1 / AUROC (controls: samples flagged):\n\n" + head + "\n" + "\n".join(rows) + "\n"
    return out
