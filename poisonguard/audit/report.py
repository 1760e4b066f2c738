"""`audit_models`: the whole projector audit of a (base, fine-tuned) pair as one JSON report plus plots.

Three levels, each used when its inputs are given (research/projlens.md §3–6, §8; detector-probe.md B):
- always: the weight report (ΔW spectrum per projector layer, where else the fine-tune moved, a logit-lens
  reading of the last layer's top output direction);
- with `data`: per-sample projector-drift scores, the label-free ProjectorDriftDetector cut, and the
  activation statistics (per-sample ΔE energy, direction alignment, norm law for flagged vs unflagged tokens,
  logit lens of the shared drift direction); scores go to `drift_scores.csv` for fusion;
- with `test` and `attack` (benchmark): CP/ASR of the base, the fine-tune, every rank-k removal and
  reconstruction (each layer alone and all jointly, or only jointly with `layer_sets="joint"`), and the cost
  of the `repair` mitigation; with `truth` (poison_ids.json) the AUROC of every drift score, the detector's
  P/R/F1, and the norm law for truly poisoned vs clean samples (pooled fit and ProjLens's per-image r).
`max_samples` caps the activation analysis to evenly spaced samples (reported as `subsample`); the drift
detector then sees only those, so use it for the statistics, not for a screening.
Plot paths in the JSON are relative to `out_dir`, so the report folder can move (HTML report, MLflow).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from poisonguard.atomic import atomic_write_text
from poisonguard.audit import plots
from poisonguard.audit.activations import (
    collect_drift,
    direction_alignment,
    drift_features,
    energy_summary,
    image_r_summary,
    logit_lens,
    norm_law,
    score_summary,
    shared_direction,
)
from poisonguard.detect.projector import ProjectorDriftDetector
from poisonguard.audit.evaluation import build_eval_set, evaluate_model, rank_k_table
from poisonguard.audit.projector import AuditInputError
from poisonguard.audit.weights import layer_deltas, parameter_drift, rank_k_edited, spectrum_summary
from poisonguard.detect.base import to_jsonable
from poisonguard.detect.metrics import auroc, evaluate

MIN_SCORED = 10  # the drift detector's robust statistics need at least this many scored samples
LAYER_SETS = ("each", "joint")  # rank-k edits: each projector layer alone and all jointly, or jointly only


def _read_truth(path: str | Path) -> set[str]:
    obj = json.loads(Path(path).read_text())
    return {str(i) for i in (obj["poison_ids"] if isinstance(obj, dict) else obj)}


def projector_weight_report(base, finetuned, ks: Sequence[int], out_dir: str | Path) -> dict[str, Any]:
    """The projector's ΔW spectrum per layer from two loaded models (their projectors are all it reads, so
    the visual paths of the drift pass suffice); writes OUT/audit.json (results only) and spectra.png."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    deltas = layer_deltas(base, finetuned)
    report = to_jsonable({"weights": {"layers": [spectrum_summary(d, ks=(1, 4, *ks)) for d in deltas.values()]},
                          "plots": {"spectra": "spectra.png"}})
    plots.plot_spectra(report["weights"]["layers"], out / "spectra.png")
    atomic_write_text(out / "audit.json", json.dumps(report, indent=2, allow_nan=False) + "\n")
    return report


def _weight_report(base, finetuned, processor, deltas, ks: Sequence[int]) -> dict[str, Any]:
    layers = [spectrum_summary(d, ks=(1, 4, *ks)) for d in deltas.values()]
    last = list(deltas.values())[-1]
    out: dict[str, Any] = {"layers": layers, "parameter_drift": parameter_drift(base, finetuned)}
    hidden = finetuned.get_output_embeddings().weight.shape[1]
    if last.u.shape[0] == hidden and last.s.numel() and last.s[0] > 0:
        # u_1 of the last layer lives in the LM's input space: ProjLens §8.2(f), from weights alone.
        out["logit_lens_top_output_direction"] = logit_lens(
            finetuned, processor.tokenizer, last.u[:, 0].numpy()
        )
    return out


def _activation_report(
    base,
    finetuned,
    processor,
    data: str | Path,
    out_dir: Path,
    *,
    truth: set[str] | None,
    detector_params: Mapping[str, Any] | None,
    batch_size: int,
    show_progress: bool,
    max_samples: int | None = None,
    image_folder: str | Path | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    from poisonguard.data.loading import load_checked

    ds = load_checked(data, image_folder)
    samples = ds.ok
    subsample = None
    if max_samples is not None and len(samples) > max_samples:
        keep = np.unique(np.linspace(0, len(samples) - 1, max_samples).round().astype(int))
        subsample = {"n": int(keep.size), "of": len(samples), "rule": "evenly spaced in file order"}
        samples = [samples[i] for i in keep]
    n_images = sum(bool(s.images) for s in samples)
    if n_images < MIN_SCORED:  # e.g. a text-only dataset: the drift scores abstain
        reason = f"{n_images} usable samples with an image; the drift audit needs {MIN_SCORED}"
        return {
            "n_samples": len(samples),
            "n_scored": n_images,
            "skipped": reason,
            "subsample": subsample,
        }, {}
    col = collect_drift(
        base,
        finetuned,
        processor,
        samples,
        ds.image_loader(),
        batch_size=batch_size,
        show_progress=show_progress,
    )
    g = shared_direction(col)
    features = drift_features(col, g)
    detector = ProjectorDriftDetector(**dict(detector_params or {}))
    result = detector.detect(features)
    flagged = result.flagged
    z = result.signals["score_projector"]
    frame = pd.DataFrame(
        {"id": features.ids, **features.extra_scores, "score_projector": z, "flagged": flagged}
    )
    frame.to_csv(out_dir / "drift_scores.csv", index=False)
    has = col.has_image
    report: dict[str, Any] = {
        "n_samples": len(samples),
        "n_scored": int(has.sum()),
        "n_quarantined": len(ds.quarantined),
        "subsample": subsample,
        "scores_file": "drift_scores.csv",
        "scores": score_summary(features.extra_scores),
        "detector": result.report,
        "detector_state": detector.to_state(),
        "energy": energy_summary(col, flagged),
        "alignment": direction_alignment(col, g),
        "norm_law": norm_law(col, g, flagged),
        "image_norm_r": image_r_summary(col, flagged),
        "projector_only_share": float(np.nanmean(col.projector_only_mean) / np.nanmean(col.per_token_mean))
        if has.any() and np.nanmean(col.per_token_mean) > 0
        else None,
        "logit_lens_shared_direction": logit_lens(finetuned, processor.tokenizer, g),
    }
    truth_mask = None
    if truth is not None:
        truth_mask = np.isin(features.ids, list(truth))
        report["truth"] = {
            "auroc": {
                name: auroc(np.nan_to_num(s, nan=-np.inf), truth_mask)
                for name, s in {**features.extra_scores, "score_projector": z}.items()
            },
            "detector": evaluate(result, truth),
            "n_poison_scored": int((truth_mask & has).sum()),
            "norm_law": norm_law(col, g, truth_mask, labels=("poisoned", "clean")),
            "image_norm_r": image_r_summary(col, truth_mask, labels=("poisoned", "clean")),
        }
    paths = {"scores": "drift_scores.png", "norm_law": "norm_law.png"}
    plots.plot_scores(z, float(result.report["cut_z"]), out_dir / paths["scores"], truth_mask)
    coord = col.fit_delta.astype(np.float64) @ g
    plots.plot_norm_law(
        col.fit_base_norm, coord, flagged[col.fit_owner], report["norm_law"], out_dir / paths["norm_law"]
    )
    return report, paths


def _benchmark_report(
    base,
    finetuned,
    processor,
    deltas,
    test: str | Path,
    attack: str,
    *,
    target: str | None,
    ks: Sequence[int],
    repair_k: int,
    max_eval: int | None,
    layer_sets: str = "each",
    modes: Sequence[str] = ("remove", "reconstruct"),
    show_progress: bool = False,
) -> dict[str, Any]:
    evalset = build_eval_set(test, attack, target=target, max_samples=max_eval)
    reference = {
        "base": evaluate_model(base, processor, evalset),
        "finetuned": evaluate_model(finetuned, processor, evalset),
    }
    names = list(deltas)
    sets = (
        {}
        if layer_sets == "joint" and len(names) > 1
        else {n.rsplit(".", 1)[-1] if len(names) > 1 else n: [n] for n in names}
    )
    if len(names) > 1:
        sets["joint"] = names
    joint = "joint" if len(names) > 1 else names[0]
    rows = rank_k_table(
        base, finetuned, processor, evalset, deltas, ks, sets, tuple(modes), show_progress=show_progress
    )
    # `repair` removes the top-k from every layer: the joint removal row with that k, when it was computed
    same = [r for r in rows if (r["mode"], r["layers"], r["k"]) == ("remove", joint, repair_k)]
    if same:
        repaired = {"cp": same[0]["cp"], "asr": same[0]["asr"]}
    else:
        with rank_k_edited(base, finetuned, repair_k, mode="remove", deltas=deltas) as edited:
            repaired = evaluate_model(edited, processor, evalset)
    ft = reference["finetuned"]
    return {
        "attack": attack,
        "target": evalset.target,
        "n_clean": len(evalset.clean),
        "n_triggered": len(evalset.triggered),
        "reference": reference,
        "rank_k": rows,
        "repair": {
            "k": repair_k,
            "layers": "joint",
            **repaired,
            "cp_cost": ft["cp"] - repaired["cp"],
            "asr_drop": ft["asr"] - repaired["asr"],
        },
    }


def audit_models(
    base_dir: str | Path,
    finetuned_dir: str | Path,
    data: str | Path | None = None,
    *,
    test: str | Path | None = None,
    attack: str | None = None,
    ks: Sequence[int] = (1, 2, 4, 8),
    out_dir: str | Path,
    target: str | None = None,
    truth: str | Path | None = None,
    repair_k: int = 4,
    max_eval: int | None = None,
    include_bias: bool = True,
    detector_params: Mapping[str, Any] | None = None,
    batch_size: int = 64,
    show_progress: bool = False,
    max_samples: int | None = None,
    image_folder: str | Path | None = None,
    layer_sets: str = "each",
    modes: Sequence[str] = ("remove", "reconstruct"),
    log: Callable[[str], None] | None = None,
    runtime=None,
) -> dict[str, Any]:
    """Audit the projector of `finetuned_dir` against `base_dir`; write OUT/audit.json and PNGs; return the
    report. `test` + `attack` turn on the benchmark tables, `truth` (poison_ids.json) the AUROCs; `max_eval`
    caps the test samples per evaluation (each rank-k model is evaluated on the same prompts); `max_samples`
    caps the activation analysis; `layer_sets` / `modes` narrow the rank-k grid; `log` gets one line per step.
    `runtime` (`poisonguard.runtime.Runtime`, default CPU float32) sets device and dtype. A LoRA adapter
    folder as `finetuned_dir` is loaded on `base_dir` and merged: the audit compares weights and generates
    with both models, so it holds two models (the screen's drift pass holds one).
    Raises AuditInputError (a ValueError) for options or models that cannot be audited."""
    from poisonguard.train.finetune import load_model

    say = log or (lambda _m: None)
    if (test is None) != (attack is None):
        raise AuditInputError("benchmark mode needs both test and attack")
    if truth is not None and data is None:
        raise AuditInputError("truth scores the drift on data: pass data too")
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise AuditInputError(f"ks must be positive integers, got {ks}")
    if layer_sets not in LAYER_SETS:
        raise AuditInputError(f"layer_sets must be one of {LAYER_SETS}, got {layer_sets!r}")
    bad_modes = [m for m in modes if m not in ("remove", "reconstruct")]
    if not modes or bad_modes:
        raise AuditInputError(f"modes must be a non-empty subset of ('remove', 'reconstruct'), got {modes}")
    if max_samples is not None and max_samples < MIN_SCORED:
        raise AuditInputError(f"max_samples must be at least {MIN_SCORED}, got {max_samples}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    say(f"loading {base_dir} and {finetuned_dir}")
    base, processor = load_model(base_dir, runtime=runtime)
    finetuned, _ = load_model(finetuned_dir, runtime=runtime, base=base_dir)
    if hasattr(finetuned, "merge_and_unload"):  # a peft adapter: its merged weights are what is audited
        finetuned = finetuned.merge_and_unload()
    say("weights: SVD of the projector delta per layer")
    deltas = layer_deltas(base, finetuned, include_bias=include_bias)
    report: dict[str, Any] = {
        "base": str(base_dir),
        "finetuned": str(finetuned_dir),
        "model_type": base.config.model_type,
        "include_bias": include_bias,
        "weights": _weight_report(base, finetuned, processor, deltas, ks),
        "activations": None,
        "benchmark": None,
        "plots": {"spectra": "spectra.png"},
    }
    plots.plot_spectra(report["weights"]["layers"], out / "spectra.png")
    timings = {"weights_s": time.perf_counter() - t0}
    if data is not None:
        t1 = time.perf_counter()
        say(f"activations: projector drift on {data}")
        report["activations"], paths = _activation_report(
            base,
            finetuned,
            processor,
            data,
            out,
            truth=_read_truth(truth) if truth else None,
            detector_params=detector_params,
            batch_size=batch_size,
            show_progress=show_progress,
            max_samples=max_samples,
            image_folder=image_folder,
        )
        report["plots"].update(paths)
        timings["activations_s"] = time.perf_counter() - t1
    if test is not None and attack is not None:
        t2 = time.perf_counter()
        say(f"benchmark: CP / ASR ({attack}) of the base, the fine-tune and the rank-k edits on {test}")
        report["benchmark"] = _benchmark_report(
            base,
            finetuned,
            processor,
            deltas,
            test,
            attack,
            target=target,
            ks=ks,
            repair_k=repair_k,
            max_eval=max_eval,
            layer_sets=layer_sets,
            modes=modes,
            show_progress=show_progress,
        )
        plots.plot_rank_k(report["benchmark"]["rank_k"], report["benchmark"]["reference"], out / "rank_k.png")
        report["plots"]["rank_k"] = "rank_k.png"
        timings["benchmark_s"] = time.perf_counter() - t2
    report = to_jsonable(report)
    # audit.json holds results only: the same models and data give the same file (it can be a cached output)
    atomic_write_text(out / "audit.json", json.dumps(report, indent=2, allow_nan=False) + "\n")
    return {**report, "timings": {k: round(v, 2) for k, v in timings.items()}}
