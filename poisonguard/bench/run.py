"""`poisonguard bench`: attacks x poison rates x seeds on the embedded world, with controls and a defence loop.

Cells (each a folder OUT/cells/<name>/, resumable: finished work is never redone):
- attack      poison the world's training set → fine-tune the base model → CP / ASR / fit of the poisoned
              samples → screen the fine-tuned model's training data with every detector → P / R / F1 / AUROC;
- no_relabel  the same trigger with correct labels: no backdoor exists, a detector must stay silent;
- base_model  the poisoned data screened with the *base* model in place of the fine-tuned one: a backdoor
              fingerprint only exists after fine-tuning, so a detector that flags here reads the trigger
              pattern (or content), not the backdoor (DESIGN §7);
- clean       the world's clean training set (0% poison): the flag rate on clean data.
With `retrain`, the defence loop (TCAP's CP/ASR table): per attack cell and detector, fine-tune again on the
detector's cleaned set (flagged samples removed) and measure CP / ASR, next to vanilla fine-tuning, the clean
fine-tune and the oracle (the truly poisoned samples removed). Identical cleaned sets share one fine-tune, and
a detector that removes nothing reuses the vanilla model.
Outputs: summary.json, tables.md (mean ± std over seeds; `benchmarks/update_readme.py` pastes it into the
README) and report/index.html with plots (`poisonguard.bench.html`).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from poisonguard.atomic import atomic_write_json
from poisonguard.attacks.files import poison_file, read_poison_ids
from poisonguard.bench.tables import cell_kind, markdown_tables
from poisonguard.detect.registry import make_detectors
from poisonguard.gate.report import file_sha256
from poisonguard.pipeline.config import PipelineConfig
from poisonguard.pipeline.finetuning import finetune
from poisonguard.pipeline.screen import run_screen
from poisonguard.report.evaluation import binary_metrics, detector_columns
from poisonguard.runtime import cpu_kernels
from poisonguard.train.evaluate import evaluate_attacks, evaluate_files

ALL_ATTACKS = ("badnet", "blend", "sig", "wanet", "ftrojan", "text_prefix", "syntactic",
               # BackdoorVLM's goals (issue 16); `substitute` needs multi-word answers (world describe_frac > 0)
               # and is skipped, with its reason in the summary, on a world without them.
               "inject_image", "inject_text", "inject_bimodal", "refusal_image", "refusal_text", "substitute",
               "multi_target", "all_to_all", "conservatism", "dual_key")
# --quick: the attacks the embedded base learns with default settings (README: badnet, sig, text prefix), so
# the smoke run exercises a fingerprint, not only a failed backdoor.
QUICK_ATTACKS = ("badnet", "sig", "text_prefix")
QUICK_MAX_TRAIN, QUICK_MAX_TEST = 1000, 200
ORACLE = "oracle"


@dataclass
class BenchConfig:
    world: Path
    out: Path
    attacks: tuple[str, ...] = ALL_ATTACKS
    rates: tuple[float, ...] = (0.1,)
    seeds: tuple[int, ...] = (0,)
    controls: tuple[str, ...] = ("badnet",)  # attacks whose no-relabel control is run (at the largest rate)
    base_controls: tuple[str, ...] = ("badnet",)  # attacks screened with the base model (at the largest rate)
    clean: bool = True
    # the screening pipeline's settings (params.yaml); its fit_gmm detectors are the benchmark's columns and
    # its em_vote.decide the deciding one
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    screen: bool = True
    retrain: bool = False  # the defence loop: one fine-tune per attack cell and distinct cleaned set
    # The defence loop's scope (None: all). Every retrain is a full fine-tune, so a 2-core run limits it, e.g. to
    # one seed and rate, and to the detectors whose cleaned sets differ; the tables say which cells were retrained.
    retrain_seeds: tuple[int, ...] | None = None
    retrain_rates: tuple[float, ...] | None = None
    retrain_detectors: tuple[str, ...] | None = None
    max_train: int | None = None  # use the first N training samples of the world (None: all)
    max_test: int | None = None  # and the first N test samples for CP / ASR
    html: bool = True
    # Per-attack parameter overrides (params.yaml's `poison.attacks`, as the poison stage reads them); an
    # attack not named here runs with its defaults.
    attack_params: dict = field(default_factory=dict)

    @property
    def detectors(self) -> tuple[str, ...]:
        return tuple(self.pipeline.fit_gmm.detectors)

    @property
    def runtime(self):
        """The pipeline's runtime on this machine: every model the benchmark loads runs there."""
        return self.pipeline.runtime.resolve()


def quick_config(cfg: BenchConfig) -> BenchConfig:
    """`--quick`: one seed, one rate, three attacks, a 1,000-sample training subset (a short fine-tune at the
    default epochs) and 200 test samples -- a smoke run in minutes, not a measurement."""
    def one(controls: tuple[str, ...]) -> tuple[str, ...]:  # one control of each kind, if any was asked for
        return (tuple(a for a in controls if a in QUICK_ATTACKS)[:1] or ("badnet",)) if controls else ()

    return replace(cfg, attacks=QUICK_ATTACKS, seeds=cfg.seeds[:1], rates=cfg.rates[:1],
                   controls=one(cfg.controls), base_controls=one(cfg.base_controls), max_train=cfg.max_train or QUICK_MAX_TRAIN, max_test=cfg.max_test or QUICK_MAX_TEST)


# ------------------------------------------------------------------------------------------------- the world
@dataclass(frozen=True)
class WorldFiles:
    train: Path
    test: Path
    base_model: Path


def prepare_world(cfg: BenchConfig) -> WorldFiles:
    """The world's files, or a prefix subset of its train/test sets written under OUT/world (images hard-linked,
    the base model used in place)."""
    world = Path(cfg.world)
    for need in ("train.json", "test.json", "base_model"):
        if not (world / need).exists():
            raise FileNotFoundError(f"{world / need} not found: build the world first (`poisonguard world --out "
                                    f"{world}`)")
    if cfg.max_train is None and cfg.max_test is None:
        return WorldFiles(world / "train.json", world / "test.json", world / "base_model")
    out = Path(cfg.out) / "world"
    return WorldFiles(_subset(world / "train.json", out, cfg.max_train), _subset(world / "test.json", out, cfg.max_test),
                      world / "base_model")


def _subset(path: Path, out: Path, n: int | None) -> Path:
    from poisonguard.data.dataset import read_dataset
    from poisonguard.data.images import resolve_image_path
    from poisonguard.data.writer import write_dataset

    ds = read_dataset(path)
    keep = ds.ids if n is None else ds.ids[:n]
    target = out / path.name
    if target.exists() and read_dataset(target).ids == keep:
        return target
    out.mkdir(parents=True, exist_ok=True)
    kept = set(keep)
    for s in ds.samples:
        if s.id in kept:
            for ref in s.images:
                _link(resolve_image_path(ref, ds.image_root), out / ref)
    write_dataset(ds, target, keep_ids=keep)
    return target


def _link(src: Path, dst: Path) -> None:
    if dst.exists():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        import shutil

        shutil.copy2(src, dst)


def drop_unpoisonable(cfg: BenchConfig, world: WorldFiles, *, log=print) -> tuple[BenchConfig, dict[str, str]]:
    """The config without the attacks the world's training set cannot carry at some configured rate (an arm
    with no sample: e.g. substitution without multi-word answers), and why each was dropped. Checked from the
    records alone, before any cell starts, so a long run does not stop at its first such cell."""
    from poisonguard.attacks import poison_counts
    from poisonguard.data.dataset import read_dataset

    samples = read_dataset(world.train).samples
    skipped = {}
    for attack in dict.fromkeys((*cfg.attacks, *cfg.controls, *cfg.base_controls)):
        for rate in cfg.rates:
            counts = poison_counts(samples, attack, rate, params=cfg.attack_params.get(attack))
            empty = [k or attack for k, n in counts.items() if n == 0]
            if empty:
                skipped[attack] = f"no sample to poison at rate {rate:g} for {', '.join(empty)}"
                log(f"skipping {attack}: {skipped[attack]}")
                break
    if not skipped:
        return cfg, {}
    def keep(names: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(a for a in names if a not in skipped)

    return replace(cfg, attacks=keep(cfg.attacks), controls=keep(cfg.controls),
                   base_controls=keep(cfg.base_controls)), skipped


# ------------------------------------------------------------------------------------------------- cells
def _cells(cfg: BenchConfig) -> list[dict]:
    top = max(cfg.rates)
    cells = []
    for seed in cfg.seeds:
        for rate in cfg.rates:
            for attack in cfg.attacks:
                cells.append({"kind": "attack", "attack": attack, "rate": rate, "seed": seed, "relabel": True})
        for attack in cfg.controls:
            cells.append({"kind": "no_relabel", "attack": attack, "rate": top, "seed": seed, "relabel": False})
        for attack in cfg.base_controls:
            cells.append({"kind": "base_model", "attack": attack, "rate": top, "seed": seed, "relabel": True})
        if cfg.clean:
            cells.append({"kind": "clean", "attack": "clean", "rate": 0.0, "seed": seed, "relabel": True})
    return cells


def cell_name(c: dict) -> str:
    kind = cell_kind(c)
    if kind == "clean":
        return f"clean_s{c['seed']}"
    stem = f"{c['attack']}_r{c['rate']:g}_s{c['seed']}"
    return stem + {"attack": "", "no_relabel": "_norelabel", "base_model": "_basemodel"}[kind]


def finetune_settings(cfg: BenchConfig) -> dict:
    """What a cell's fine-tune and CP/ASR depend on; a resumed cell must match it."""
    out = {"max_train": cfg.max_train, "max_test": cfg.max_test, "finetune": asdict(cfg.pipeline.finetune)}
    if cfg.attack_params:  # named only when set, so folders of runs with default attacks stay valid
        out["attack_params"] = _jsonable(cfg.attack_params)
    return out


def screen_settings(cfg: BenchConfig) -> dict:
    """What a cell's detection depends on; a change re-screens (extraction shards are reused).

    The detectors' effective parameters (their defaults with the overrides applied) and their revisions (a
    change of decision logic, `Detector.revision`) are part of it, so a changed default or rule in the code
    re-screens finished cells instead of keeping results the code no longer gives.
    """
    p = cfg.pipeline
    made = make_detectors(p.fit_gmm.detectors)
    effective = {name: _jsonable(asdict(det.params)) for name, det in made.items()}
    out = {"detectors": list(cfg.detectors), "decide": p.em_vote.decide, "strata_k": p.profile_heads.strata_k,
           "audit": _jsonable(asdict(p.audit_projector)), "effective_params": effective}
    revised = {name: det.revision for name, det in made.items() if det.revision != 1}
    if revised:  # named only past revision 1, so cells screened before revisions were recorded stay valid
        out["revisions"] = revised
    return out


def _poisoned_data(world: WorldFiles, cfg: BenchConfig, c: dict) -> Path:
    """The poisoned training folder of (attack, rate, seed, relabel); the base-model control shares the attack
    cell's. Poisoning is seeded, so a rerun writes the same files; poison_ids.json is written last."""
    owner = cell_name({**c, "kind": "attack" if c["relabel"] else "no_relabel"})
    data_dir = Path(cfg.out) / "cells" / owner / "data"
    if not (data_dir / "poison_ids.json").exists():
        poison_file(world.train, data_dir, c["attack"], c["rate"], seed=c["seed"], relabel=c["relabel"],
                    params=cfg.attack_params.get(c["attack"]))
    return data_dir


def _finetune(world: WorldFiles, cfg: BenchConfig, data: Path, out: Path, seed: int) -> float:
    """Fine-tune the base model on `data` into `out` unless done (finetune.json is written last); returns the
    fine-tune's seconds (from the timings file in the model folder)."""
    timings = out / "timings.json"  # inside the cell's model folder (bench tooling, not a DVC output)
    if not (out / "finetune.json").exists():
        finetune(data, world.base_model, out, replace(cfg.pipeline.finetune, seed=seed), timings=timings,
                 runtime=cfg.runtime, show_progress=False, log=lambda m: None)
    return float(json.loads(timings.read_text())["seconds"]) if timings.exists() else float("nan")


def _check_settings(cfg: BenchConfig) -> None:
    """One output folder holds one world subset and one fine-tune recipe: refuse to mix (OUT/settings.json)."""
    path = Path(cfg.out) / "settings.json"
    want = _jsonable(finetune_settings(cfg))
    if path.exists():
        have = json.loads(path.read_text())
        if have != want:
            changed = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
            raise ValueError(f"{cfg.out} holds a benchmark with other settings ({', '.join(changed)}: "
                             f"{ {k: have.get(k) for k in changed} }); use another --out")
    else:
        _write_json(path, want)


def world_identity(world: Path) -> dict | None:
    """What `poisonguard world` wrote about the world it built (seed, sizes, model, pretraining, base accuracy),
    or None for a world folder without it: the identity a benchmark folder's cells share."""
    path = Path(world) / "world.json"
    return json.loads(path.read_text()) if path.is_file() else None


def base_model_sha256(world: Path) -> dict[str, str]:
    """{weight file: sha256} of the base model (empty without one). The world's identity alone does not pin the
    weights: the same recipe, pins and thread count rebuilt a base model with other bytes (and another clean
    accuracy) on another host, so the folder records the bytes its cells started from."""
    return {f.name: file_sha256(f) for f in sorted((Path(world) / "base_model").glob("*.safetensors"))}


def _check_world(cfg: BenchConfig) -> None:
    """One output folder holds the cells of one world: cells fine-tuned from two base models would land in one
    table, and a resumed run would silently reuse the other world's cells. OUT/world.json records the world's
    identity and its base model's bytes on the first run (folders written before either was recorded adopt the
    world they are resumed with)."""
    path = Path(cfg.out) / "world.json"
    want = world_identity(cfg.world)
    sha = base_model_sha256(cfg.world)
    if path.exists():
        rec = json.loads(path.read_text())
        have = rec["world"]
        if have != want:
            seeds = [(w or {}).get("seed") for w in (have, want)]
            differ = sorted(k for k in set(have or {}) | set(want or {}) if (have or {}).get(k) != (want or {}).get(k))
            raise ValueError(f"{cfg.out} holds a benchmark of another world (world seed {seeds[0]}, this one "
                             f"{seeds[1]}: {cfg.world}; differs in {', '.join(differ)}); use another --out")
        recorded = rec.get("base_model_sha256")
        if recorded is not None and recorded != sha:
            name = min(n for n in set(recorded) | set(sha) if recorded.get(n) != sha.get(n))
            raise ValueError(f"{cfg.out} holds a benchmark of another build of this world: its base model's {name} "
                             f"differs (sha256 {str(recorded.get(name))[:12]}, this one {str(sha.get(name))[:12]}; "
                             f"the folder's first run: {rec.get('host')}); use another --out")
    else:
        _write_json(path, {"path": str(cfg.world), "world": want, "base_model_sha256": sha,
                           "host": cpu_kernels()})  # where the base model was first read


def _load_result(path: Path, cfg: BenchConfig, name: str) -> dict | None:
    if not path.exists():
        return None
    res = json.loads(path.read_text())
    stored = res.get("settings")
    if stored is not None and stored != _jsonable(finetune_settings(cfg)):
        raise ValueError(f"cell {name} in {path.parent} was computed with other settings ({stored}); "
                         f"use another --out for {_jsonable(finetune_settings(cfg))}")
    return res


def run_cell(cfg: BenchConfig, c: dict, world: WorldFiles | None = None, *, log=print) -> dict:
    """One cell: poison → fine-tune → CP/ASR/fit → screen with all detectors → metrics. Resumable."""
    world = world or prepare_world(cfg)
    name = cell_name(c)
    kind = cell_kind(c)
    d = Path(cfg.out) / "cells" / name
    done = d / "result.json"
    res = _load_result(done, cfg, name)
    want_screen = _jsonable(screen_settings(cfg))
    if res is not None and (not cfg.screen or (res.get("screen_settings", want_screen) == want_screen
                                               and all(k in res.get("detection", {}) for k in cfg.detectors))):
        return res
    d.mkdir(parents=True, exist_ok=True)
    res = res or {"cell": name, **c, "settings": _jsonable(finetune_settings(cfg))}
    if kind == "clean":
        data, data_dir = world.train, None
    else:
        log(f"[{name}] poisoning")
        data_dir = _poisoned_data(world, cfg, c)
        data = data_dir / world.train.name
    truth_ids = [] if data_dir is None else read_poison_ids(data_dir / "poison_ids.json")
    res["n_poison"] = len(truth_ids)
    if kind == "base_model":
        model_dir = world.base_model
    else:
        model_dir = d / "finetuned"
        if "after" not in res:
            log(f"[{name}] fine-tuning on {data}")
            res["finetune_seconds"] = _finetune(world, cfg, data, model_dir, c["seed"])
            log(f"[{name}] evaluating CP / ASR")
            attack = "badnet" if kind == "clean" else c["attack"]
            res["after"] = evaluate_files(model_dir, world.test, attack=attack, params=cfg.attack_params.get(attack),
                                          train=data if truth_ids else None,
                                          poison_ids=(data_dir / "poison_ids.json") if truth_ids else None,
                                          show_progress=False, runtime=cfg.runtime)
        a = res["after"]
        log(f"[{name}] CP {a['cp']:.3f} ASR {a.get('asr', float('nan')):.3f} "
            f"fit {a.get('poisoned_fit', float('nan'))} ({res['finetune_seconds']:.0f}s)")
    if cfg.screen:
        log(f"[{name}] screening with {', '.join(cfg.detectors)}"
            + (" (base model in place of the fine-tuned one)" if kind == "base_model" else ""))
        res["detection"] = screen_cell(cfg, world, data, model_dir, d / "report", truth_ids, log=log)
        res["screen_settings"] = want_screen
    _write_json(done, res)
    return res


def screen_cell(cfg: BenchConfig, world: WorldFiles, data: Path, model_dir: Path, report: Path,
                truth_ids: list[str], *, log=print) -> dict:
    t0 = time.perf_counter()
    res = run_screen(data, world.base_model, report, finetuned=model_dir, config=cfg.pipeline,
                     show_progress=False, log=lambda m: None)
    table = res.table[res.table["status"] == "ok"]
    y = table["id"].astype(str).isin(set(truth_ids)).to_numpy()
    out: dict = {"screen_seconds": round(time.perf_counter() - t0, 1)}
    for det in cfg.detectors:
        flag_col, p_col = detector_columns(table, det, res.default)
        out[det] = binary_metrics(y, table[flag_col].to_numpy(bool), table[p_col].to_numpy(float))
    # The Dawid–Skene vote over the annotators (em_vote): `p_vote` beside the deciding detector, or the verdict
    # itself when it decides; flagged at p_vote > 0.5 as the stage flags it.
    p_vote = table["p_vote"] if "p_vote" in table else (table["p_poison"] if res.default == "vote" else None)
    if p_vote is not None:
        p_vote = p_vote.to_numpy(float)
        out["vote"] = binary_metrics(y, np.nan_to_num(p_vote, nan=0.0) > 0.5, p_vote)
    log("   " + "  ".join(f"{k}: F1 {v['f1']:.2f} AUROC {'–' if v['auroc'] is None else round(v['auroc'], 2)} "
                          f"n={v['n_flagged']}" for k, v in out.items() if isinstance(v, dict))
        + f"  ({out['screen_seconds']:.0f}s)")
    return out


# ------------------------------------------------------------------------------------------- defence loop
def retrain_cell(cfg: BenchConfig, res: dict, world: WorldFiles, *, log=print) -> dict:
    """Fine-tune on each detector's cleaned set (and the oracle's) and measure CP / ASR. Resumable per method.

    The cleaned set is the screened samples minus the detector's flags (quarantined samples were never
    trained on). A method that removes nothing trains on the vanilla data with the vanilla seed, so the
    vanilla model's CP / ASR are reused (marked `reused`).
    """
    import pandas as pd

    from poisonguard.data.dataset import read_dataset
    from poisonguard.data.writer import write_dataset

    d = Path(cfg.out) / "cells" / res["cell"]
    data_dir = _poisoned_data(world, cfg, res)
    data = data_dir / world.train.name
    truth = set(read_poison_ids(data_dir / "poison_ids.json"))
    table = pd.read_parquet(d / "report" / "verdicts.parquet")
    default = json.loads((d / "report" / "manifest.json").read_text())["default_detector"]
    ok = table[table["status"] == "ok"]
    ok_ids = ok["id"].astype(str)
    methods = cfg.detectors if cfg.retrain_detectors is None else [d for d in cfg.detectors
                                                                   if d in cfg.retrain_detectors]
    removed = {det: set(ok_ids[ok[detector_columns(ok, det, default)[0]].to_numpy(bool)]) for det in methods}
    removed[ORACLE] = truth & set(ok_ids)
    path = d / "retrain.json"
    done = json.loads(path.read_text()) if path.exists() else {}
    for method, gone in removed.items():
        keep = [i for i in ok_ids if i not in gone]
        key = hashlib.sha256("\n".join(sorted(keep)).encode()).hexdigest()[:12] if gone else None
        if method in done and done[method].get("model") == key:
            continue  # the same cleaned set as before (a re-screen that changed a detector's flags retrains)
        entry = {"n_removed": len(gone), "n_poison_removed": len(gone & truth), "n_clean_removed": len(gone - truth)}
        if not gone:
            entry.update(cp=res["after"]["cp"], asr=res["after"].get("asr"), reused="vanilla (nothing removed)",
                         model=None)
        else:
            model_dir = d / "retrain" / key
            ev_path = model_dir / "eval.json"
            if not ev_path.exists():
                log(f"[{res['cell']}] retraining without {method}'s {len(gone)} flagged samples "
                    f"({entry['n_poison_removed']} poisoned)")
                kept_file = data_dir / f"keep_{key}.json"
                write_dataset(read_dataset(data), kept_file, keep_ids=keep)
                seconds = _finetune(world, cfg, kept_file, model_dir, res["seed"])
                ev = evaluate_files(model_dir, world.test, attack=res["attack"], show_progress=False,
                                    runtime=cfg.runtime, params=cfg.attack_params.get(res["attack"]))
                _write_json(ev_path, {"cp": ev["cp"], "asr": ev.get("asr"), "finetune_seconds": seconds,
                                      "n_train": len(keep)})
            ev = json.loads(ev_path.read_text())
            entry.update(cp=ev["cp"], asr=ev["asr"], model=key, finetune_seconds=ev["finetune_seconds"])
        log(f"[{res['cell']}] retrained without {method}: CP {entry['cp']:.3f} ASR {_f(entry['asr'])} "
            f"(removed {entry['n_poison_removed']} poisoned, {entry['n_clean_removed']} clean)")
        done[method] = entry
        _write_json(path, done)
    return {m: done[m] for m in removed}  # earlier runs' wider scope stays on disk, not in this summary


def in_retrain_scope(cfg: BenchConfig, cell: dict) -> bool:
    """Whether the defence loop covers this cell; the clean cell (rate 0, the 'clean FT' reference) goes by
    seed alone."""
    if cfg.retrain_seeds is not None and cell["seed"] not in cfg.retrain_seeds:
        return False
    return (cell_kind(cell) == "clean" or cfg.retrain_rates is None
            or any(abs(cell["rate"] - r) < 1e-9 for r in cfg.retrain_rates))


def clean_asr(cfg: BenchConfig, res: dict, world: WorldFiles, *, log=print) -> dict:
    """ASR of the clean fine-tune under each attack's trigger (the 'clean FT' reference of the defence table)."""
    d = Path(cfg.out) / "cells" / res["cell"]
    path = d / "asr_by_attack.json"
    got = json.loads(path.read_text()) if path.exists() else {}
    if "badnet" not in got and res.get("after", {}).get("asr") is not None:
        got["badnet"] = res["after"]["asr"]  # the clean cell was evaluated with the BadNet trigger
    missing = [a for a in cfg.attacks if a not in got]
    if missing:
        log(f"[{res['cell']}] clean fine-tune under the triggers of {', '.join(missing)}")
        got.update(evaluate_attacks(d / "finetuned", world.test, missing, show_progress=False,
                                    runtime=cfg.runtime, params=cfg.attack_params)["asr"])
        _write_json(path, got)
    return got


# ------------------------------------------------------------------------------------------------- the run
def base_reference(cfg: BenchConfig, world: WorldFiles | None = None) -> dict:
    """CP of the base model, and its ASR on each attack's triggered test set (the 'before' columns)."""
    world = world or prepare_world(cfg)
    path = Path(cfg.out) / "base.json"
    ref = json.loads(path.read_text()) if path.exists() else {}
    missing = [a for a in dict.fromkeys((*cfg.attacks, *cfg.controls, *cfg.base_controls)) if a not in ref]
    if missing:  # incremental: several bench processes may share one folder
        r = evaluate_attacks(world.base_model, world.test, missing, show_progress=False, runtime=cfg.runtime,
                             params=cfg.attack_params)
        ref.update({attack: {"cp": r["cp"], "asr": r["asr"][attack]} for attack in missing})
        path.parent.mkdir(parents=True, exist_ok=True)
        current = json.loads(path.read_text()) if path.exists() else {}
        _write_json(path, {**current, **ref})
    return ref


def bench_command(cfg: BenchConfig) -> str:
    """The CLI command that reproduces this configuration (quick mode spelled out; detector and fine-tune
    settings from params.yaml are recorded in summary.json's config)."""
    parts = ["poisonguard bench", f"--world {cfg.world}", f"--out {cfg.out}", f"--attacks {','.join(cfg.attacks)}",
             f"--rates {','.join(f'{r:g}' for r in cfg.rates)}", f"--seeds {','.join(map(str, cfg.seeds))}",
             f"--controls {','.join(cfg.controls)}", f"--base-controls {','.join(cfg.base_controls)}"]
    parts += [f"--max-train {cfg.max_train}"] if cfg.max_train is not None else []
    parts += [f"--max-test {cfg.max_test}"] if cfg.max_test is not None else []
    parts += ["--retrain"] if cfg.retrain else []
    if cfg.retrain:
        for flag, vals in (("--retrain-seeds", cfg.retrain_seeds), ("--retrain-rates", cfg.retrain_rates),
                           ("--retrain-detectors", cfg.retrain_detectors)):
            parts += [f"{flag} {','.join(f'{v:g}' if isinstance(v, float) else str(v) for v in vals)}"] if vals else []
    parts += ["--no-screen"] if not cfg.screen else []
    parts += ["--no-clean"] if not cfg.clean else []
    return " ".join(parts)


def run_bench(cfg: BenchConfig, *, log=print, command: str | None = None) -> dict:
    started = datetime.now(UTC).isoformat(timespec="minutes")
    t0 = time.perf_counter()
    _check_settings(cfg)
    world = prepare_world(cfg)
    _check_world(cfg)
    cfg, skipped = drop_unpoisonable(cfg, world, log=log)
    log("base model: CP and ASR before fine-tuning")
    ref = base_reference(cfg, world)
    cells = _cells(cfg)
    results = []
    for i, c in enumerate(cells, 1):
        log(f"cell {i}/{len(cells)}: {cell_name(c)} ({time.perf_counter() - t0:.0f}s elapsed)")
        results.append(run_cell(cfg, c, world, log=log))
    if cfg.retrain:
        attack_cells = [r for r in results if cell_kind(r) == "attack" and in_retrain_scope(cfg, r)]
        for i, r in enumerate(attack_cells, 1):
            log(f"defence loop {i}/{len(attack_cells)}: {r['cell']} ({time.perf_counter() - t0:.0f}s elapsed)")
            r["retrain"] = retrain_cell(cfg, r, world, log=log)
        for r in results:
            if cell_kind(r) == "clean" and in_retrain_scope(cfg, r):
                r["asr_by_attack"] = clean_asr(cfg, r, world, log=log)
    summary = {"started": started, "seconds": round(time.perf_counter() - t0, 1),
               "machine": f"{platform.node()} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
               "command": command or bench_command(cfg),
               "config": _jsonable({**asdict(cfg), "detectors": list(cfg.detectors),
                                    "finetune": asdict(cfg.pipeline.finetune)}),
               "base": ref, "cells": results, **({"skipped_attacks": skipped} if skipped else {})}
    out = Path(cfg.out)
    previous = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    _write_json(out / "summary.json", summary)
    (out / "tables.md").write_text(markdown_tables(summary))
    if cfg.html and cfg.screen:
        from poisonguard.bench.html import write_bench_report

        page = out / "report" / "index.html"
        same = all(previous.get(k) == _jsonable(summary[k]) for k in ("config", "base", "cells"))
        if same and page.exists():  # a resumed run that computed nothing new: the plots would be identical
            log("results unchanged; HTML report kept")
        else:
            log("writing the HTML report with plots")
            page = write_bench_report(summary, out)
        log(f"report: {page}")
    return summary


def _f(v) -> str:
    return "–" if v is None else f"{v:.3f}"


def _jsonable(x):
    return json.loads(json.dumps(x, default=str))


def _write_json(path: Path, obj) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, _jsonable(obj))
