"""`poisonguard screen`, step by step: each function is one DVC stage's worth of work.

    validate  -> every input sample is ok or quarantined with a reason (never dropped)
    finetune  -> (when no fine-tuned model is given) the model whose attention is profiled
    extract   -> decision-position attention of the fine-tuned AND the base model, per shard, resumable
    features  -> a FeatureSet: allocations, base allocations, label-free strata, hidden states, drift scores
    detect    -> detector objects (fit + score, label-free)
    report    -> verdicts.parquet/csv, clean.json (input format), detector.json, manifest.json, report.html

No orchestration framework is imported here; the CLI, the DVC stage scripts and the Prefect flows call these.

Crash safety: a screen holds a lock on its output folder for the whole run (a second screen there fails at
once, see runlock.py); the input file is read before any model is loaded, so a broken file costs no model
load; extraction resumes shard by shard, and a shard is reused only for the same samples (content digests),
the same model (weight-file digest) and the same plan (see extract/storage.py).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from poisonguard.data.dataset import Dataset, read_dataset
from poisonguard.data.errors import DataError, QuarantineReason, ReasonCode
from poisonguard.data.loading import CheckedDataset, check_dataset
from poisonguard.data.records import Sample
from poisonguard.data.writer import atomic_write_bytes, write_dataset
from poisonguard.gate.report import file_sha256, ids_sha256
from poisonguard.runlock import folder_lock


def context_check(processor, max_tokens: int) -> Callable[[Sample], list[QuarantineReason]]:
    """Quarantine prompts that would not fit the model's context once rendered and tokenized.

    Image placeholders count as one token here; the processor expands them later, so `max_tokens` should
    leave room for the image tokens (the caller subtracts them).
    """
    from poisonguard.train.batching import render  # torch: imported once a model is in play, not before

    tok = processor.tokenizer

    def check(sample: Sample) -> list[QuarantineReason]:
        try:
            text = render(processor, sample.messages(), generation_prompt=False)
        except Exception as exc:  # a template that cannot render this conversation is a per-sample problem
            return [QuarantineReason.at("malformed_turn", sample.id, "conversations", f"chat template failed: {exc}")]
        n = len(tok(text)["input_ids"])
        if n > max_tokens:
            return [QuarantineReason.at("conversation_too_long", sample.id, "conversations",
                                        f"{n} tokens exceed the model's budget of {max_tokens}")]
        return []

    return check


# Fewer usable samples than this cannot be screened label-free: the head profiles fit 1-D mixtures of up to
# 5 components, and the projector drift detector's robust statistics need 10 scored samples.
MIN_USABLE_SAMPLES = 10


def hold_back_if_too_few(checked: CheckedDataset, minimum: int = MIN_USABLE_SAMPLES) -> int:
    """Quarantine every usable sample when there are fewer than `minimum` of them; returns how many were.

    A sample that cannot be screened must not be released as if it had been, so it is quarantined with a
    reason rather than passed (or the run crashing inside a detector).
    """
    ok = checked.ok
    if not 0 < len(ok) < minimum:
        return 0
    for s in ok:
        checked.reasons[s.id] = [QuarantineReason(
            ReasonCode.TOO_FEW_TO_SCREEN,
            f"sample {s.id!r}: not screened: only {len(ok)} usable sample(s) in the file, label-free screening "
            f"needs at least {minimum}")]
    return len(ok)


def model_token_budget(model, processor) -> int:
    """Context length minus the image tokens one image expands into (approximately, for the check)."""
    cfg = getattr(model.config, "text_config", model.config)
    ctx = int(getattr(cfg, "max_position_embeddings", 4096))
    n_img = int(getattr(model.config, "image_seq_length", 0) or getattr(processor, "num_image_tokens", 0) or 0)
    return max(8, ctx - n_img)


class _ConfigOnly:
    """A model's config without its weights: what validation reads of the model."""

    def __init__(self, model_dir):
        from transformers import AutoConfig

        from poisonguard.models import check_model_dir

        self.config = AutoConfig.from_pretrained(check_model_dir(model_dir), trust_remote_code=False)


def validate_for_model(data: str | Path | Dataset, processor, model, image_folder=None) -> CheckedDataset:
    """Validation plus the model's own checks (context length; text the tokenizer would read as control
    tokens or role markers); `data` is a path or an already read `Dataset`. `model` is used for its config."""
    from poisonguard.data.special_tokens import special_token_check

    ds = data if isinstance(data, Dataset) else read_dataset(data, image_root=image_folder)
    return check_dataset(ds, checks=(context_check(processor, model_token_budget(model, processor)),
                                     special_token_check(processor)))


# ----------------------------------------------------------------------------------------------- extraction
def extract_models(checked: CheckedDataset, base_dir: Path, finetuned_dir: Path, out_dir: Path, *,
                   batch_size: int = 64, shard_size: int = 1024, show_progress: bool = True,
                   log=None, runtime=None) -> dict:
    """Decision-position attention of the fine-tuned and of the base model on the usable samples.

    Base-model differencing is the largest single gain measured so far (research/prototype.md): the same
    sample's allocation before fine-tuning removes content structure that is not the backdoor.

    Resumable: finished shards of the same samples and model are skipped (and logged); shards of other
    inputs are discarded. The caller must hold the folder (the screen's lock, or DVC's), because leftover
    temp files of a killed run are removed here.

    One full model at a time (`poisonguard.models.model_passes`): a LoRA adapter folder as `finetuned_dir`
    runs both passes on one loaded base (adapter on, then off). `runtime` sets device and dtype.
    """
    from poisonguard.extract import extract_to_dir
    from poisonguard.extract.storage import remove_temp_files
    from poisonguard.models import is_adapter_dir, model_passes

    samples = checked.ok
    ids = [s.id for s in samples]
    examples = LazyExamples(samples, checked.image_loader())
    digests = checked.digests(samples)
    out = {}
    base_tag = model_digest(Path(base_dir))
    tags = {"base": base_tag, "finetuned": model_digest(Path(finetuned_dir)) + (
        f"+{base_tag}" if is_adapter_dir(finetuned_dir) else "")}  # an adapter's model is adapter + base
    for name, model, processor in model_passes(base_dir, finetuned_dir, runtime):
        folder = Path(out_dir) / name
        folder.mkdir(parents=True, exist_ok=True)
        remove_temp_files(folder)
        extract_to_dir(model, processor, examples, ids, folder, shard_size=shard_size, batch_size=batch_size,
                       tag=tags[name], inputs=digests, on_stale="restart",
                       show_progress=show_progress, log=log)
        del model, processor  # released before the next pass loads its model
        out[name] = str(folder)
    return out


class LazyExamples(Sequence):
    """Prompt-only model inputs built when sliced: extraction decodes one shard's images at a time, never the
    whole dataset's (100k decoded images do not fit in memory; one shard's do)."""

    def __init__(self, samples: list[Sample], load_image: Callable[[str], object]):
        self.samples, self.load_image = samples, load_image

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, k):
        from poisonguard.train.examples import to_example

        if isinstance(k, slice):
            return [to_example(s, self.load_image, prompt_only=True) for s in self.samples[k]]
        return to_example(self.samples[k], self.load_image, prompt_only=True)


def model_digest(model_dir: Path, sample_bytes: int = 1 << 20) -> str:
    """Identify a model by its files, so that shards of another model are never reused.

    Every file's name, size and mtime, the whole of small files (config, tokenizer) and the first and last MiB
    of large ones (weights): cheap for a 14 GB model, and any retraining or copy-over changes at least the
    mtime. Blind spot: weights rewritten in place to the same size with the mtime set back by hand.
    """
    h = hashlib.sha256()
    for p in sorted(q for q in Path(model_dir).rglob("*") if q.is_file()):
        st = p.stat()
        h.update(f"{p.relative_to(model_dir)}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        with open(p, "rb") as f:
            if st.st_size <= 2 * sample_bytes:
                h.update(f.read())
            else:
                h.update(f.read(sample_bytes))
                f.seek(-sample_bytes, os.SEEK_END)
                h.update(f.read(sample_bytes))
    return h.hexdigest()[:16]


def label_free_strata(base_hidden: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Prompt strata from the *base* model's decision-position state: k-means on its standardised PCA.

    The base model has never seen a backdoor, so its decision state groups samples by what it is asked and
    what it would answer (question type, answer class) -- the content structure that otherwise makes TCAP's
    head selection pick content heads (research/prototype.md). The defender needs no labels for this.
    """
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    x = np.asarray(base_hidden, dtype=np.float64)
    if len(x) < 2 * k:
        return np.zeros(len(x), dtype=np.int64)
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    z = PCA(n_components=min(16, x.shape[1], len(x) - 1), random_state=seed).fit_transform(x)
    return KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(z).astype(np.int64)


@dataclass
class ScreenResult:
    table: pd.DataFrame
    default: str
    flagged_ids: list[str]
    keep_ids: list[str]


# -------------------------------------------------------------------------------------------- verdict table
def verdict_table(checked: CheckedDataset, results: dict, default: str) -> pd.DataFrame:
    """One row per input sample, in input order, none missing (DESIGN §3)."""
    ds = checked.dataset
    rows = []
    default_res = results.get(default)  # absent only when no sample was usable
    pos = {sid: i for i, sid in enumerate(default_res.ids)} if default_res is not None else {}
    signal_cols: dict[str, np.ndarray] = {}
    for name, res in results.items():
        idx = {sid: i for i, sid in enumerate(res.ids)}
        for col, values in res.signals.items():
            signal_cols[col] = (idx, np.asarray(values))
        if name != default:
            signal_cols[f"flag_{name}"] = (idx, np.asarray(res.flagged))
            signal_cols[f"p_{name}"] = (idx, np.asarray(res.p_poison))
    for s in ds.samples:
        reasons = checked.reasons.get(s.id) or []
        row = {"id": s.id, "index": s.index}
        if reasons:
            row.update(status="quarantined", reason="; ".join(f"{r.code}: {r.message}" for r in reasons),
                       p_poison=np.nan, flagged=False)
        else:
            i = pos[s.id]
            row.update(status="ok", reason="", p_poison=float(default_res.p_poison[i]),
                       flagged=bool(default_res.flagged[i]))
        for col, (idx, values) in signal_cols.items():
            j = idx.get(s.id)
            row[col] = values[j].item() if j is not None else np.nan
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.astype({"id": "string", "status": "string", "reason": "string", "flagged": bool})


def write_report_dir(checked: CheckedDataset, results: dict, default: str, detector_state: dict, out_dir: Path,
                     *, params: dict | None = None, extra_files: dict | None = None) -> ScreenResult:
    """verdicts.parquet/csv, clean.json (input format, flagged and quarantined removed), detector.json,
    manifest.json (checksums the release gate verifies)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = verdict_table(checked, results, default)
    parquet = out_dir / "verdicts.parquet"
    tmp = out_dir / ".verdicts.parquet.tmp"
    table.to_parquet(tmp, index=False)
    tmp.replace(parquet)
    atomic_write_bytes(out_dir / "verdicts.csv", table.to_csv(index=False).encode())
    keep = table.loc[(table["status"] == "ok") & (~table["flagged"]), "id"].astype(str).tolist()
    ds = checked.dataset
    write_dataset(ds, out_dir / ("clean" + ds.path.suffix), keep_ids=keep)
    atomic_write_bytes(out_dir / "detector.json", (json.dumps(detector_state, indent=1) + "\n").encode())
    manifest = {
        "input": {"path": str(ds.path.resolve()), "sha256": file_sha256(ds.path), "format": ds.format,
                  "image_root": str(Path(ds.image_root).resolve()), "n_samples": len(ds.samples),
                  "ids_sha256": ids_sha256(ds.ids)},
        "verdicts_sha256": file_sha256(parquet),
        "default_detector": default,
        "counts": {"ok": int((table["status"] == "ok").sum()), "quarantined": int((table["status"] != "ok").sum()),
                   "flagged": int(table["flagged"].sum()), "released": len(keep)},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "params": params or {},
        **(extra_files or {}),
    }
    atomic_write_bytes(out_dir / "manifest.json", (json.dumps(manifest, indent=2, default=str) + "\n").encode())
    flagged = table.loc[table["flagged"], "id"].astype(str).tolist()
    return ScreenResult(table=table, default=default, flagged_ids=flagged, keep_ids=keep)


# ----------------------------------------------------------------------------------------------- detectors
DETECTORS = ("tcap", "tcap_plus", "fused", "shift", "bye", "spectral", "activation_clustering", "projector")


def make_detectors(names, params: dict | None = None) -> dict:
    """Detector objects by name; `params[name]` overrides that detector's declared parameters."""
    from poisonguard.detect import (ActivationClusteringDetector, BYEDetector, DecisionShiftDetector,
                                    SpectralSignatureDetector, TCAPDetector, TCAPPlusDetector)

    classes = {"tcap": TCAPDetector, "tcap_plus": TCAPPlusDetector, "fused": TCAPPlusDetector,
               "shift": DecisionShiftDetector, "bye": BYEDetector, "spectral": SpectralSignatureDetector,
               "activation_clustering": ActivationClusteringDetector}
    try:
        from poisonguard.audit import ProjectorDriftDetector

        classes["projector"] = ProjectorDriftDetector
    except ImportError:  # the projector audit is optional for attention-only screening
        pass
    params = params or {}
    out = {}
    for name in names:
        if name not in classes:
            raise ValueError(f"unknown detector {name!r}; available: {sorted(classes)}")
        out[name] = classes[name](**dict(params.get(name) or {}))
    return out


def features_for(name: str, features):
    """The attention-only detectors must not see the projector scores; `fused` is TCAP+ with them."""
    from dataclasses import replace

    if name in ("fused", "projector"):
        return features
    return replace(features, extra_scores={})


# Drift statistics fused as annotators. The projection on the shared drift direction is left out: it is the
# clean fine-tuning drift and failed everywhere in the probe (research/detector-probe.md, AUROC 0.36-0.50).
FUSED_DRIFT_SCORES = ("drift_max", "drift_mean", "drift_max_rel")


def projector_scores(base: Path, finetuned: Path, checked: CheckedDataset, *, batch_size: int = 64,
                     names=FUSED_DRIFT_SCORES, show_progress: bool = True, runtime=None) -> dict[str, np.ndarray]:
    """Per-sample projector drift of the full visual path (each model's own tower + projector), aligned with
    `checked.ok` (the order of the extraction); NaN for samples without an image.

    Holds only the two visual paths (language models dropped) or, for an adapter, one model seen with the
    adapter off and on (`poisonguard.models.drift_pair`)."""
    from poisonguard.audit.activations import collect_drift, drift_scores, shared_direction
    from poisonguard.models import drift_pair

    with drift_pair(base, finetuned, runtime) as (m0, m1, processor):
        col = collect_drift(m0, m1, processor, checked.ok, checked.image_loader(), batch_size=batch_size,
                            show_progress=show_progress)
        del m0, m1
    scores = drift_scores(col, shared_direction(col))
    return {k: np.asarray(scores[k], dtype=np.float64) for k in names}


DRIFT_FILE = "drift_scores.npz"


def save_drift_scores(ids, scores: dict, path: Path) -> None:
    tmp = Path(path).with_name(Path(path).name + ".tmp.npz")
    np.savez(tmp, ids=np.asarray(ids), **scores)
    tmp.replace(path)


def load_drift_scores(path: Path, ids) -> dict:
    with np.load(path, allow_pickle=False) as z:
        if list(z["ids"]) != list(ids):
            raise ValueError(f"{path} covers different samples than the extraction")
        return {k: z[k] for k in z.files if k != "ids"}


def build_features(extract_dir: Path, *, strata_k: int = 8, seed: int = 0, extra_scores: dict | None = None):
    """FeatureSet of a screen's extraction folder (`finetuned/`, `base/`, and `drift_scores.npz` when the
    projector was audited -- so a registered `fused` detector can score a new drop from the folder alone)."""
    from poisonguard.detect import FeatureSet
    from poisonguard.extract import load_extraction

    ft = load_extraction(Path(extract_dir) / "finetuned")
    base = load_extraction(Path(extract_dir) / "base")
    if list(ft.ids) != list(base.ids):
        raise ValueError("fine-tuned and base extractions cover different samples; re-run extraction")
    if extra_scores is None and (Path(extract_dir) / DRIFT_FILE).exists():
        extra_scores = load_drift_scores(Path(extract_dir) / DRIFT_FILE, ft.ids)
    strata = label_free_strata(base.hidden, strata_k, seed)
    return FeatureSet(ids=np.asarray(ft.ids), alloc=ft.alloc, alloc_base=base.alloc, strata=strata,
                      vis_entropy=ft.vis_entropy, hidden=ft.hidden, hidden_base=base.hidden,
                      extra_scores=dict(extra_scores or {}))


def _without_unfit_projector(names: list[str], drift: dict, log) -> list[str]:
    """The projector detector needs `MIN_SCORED` samples with drift scores (only images have them); with
    fewer (a mostly text-only file) it is left out, with a log line, instead of failing the screen."""
    from poisonguard.audit.report import MIN_SCORED

    scored = int(np.isfinite(np.column_stack(list(drift.values()))).all(axis=1).sum()) if drift else 0
    if "projector" not in names or scored >= MIN_SCORED:
        return names
    log(f"projector drift detector left out: only {scored} samples have an image (it needs {MIN_SCORED})")
    return [n for n in names if n != "projector"]


def run_detectors(features, names, params: dict | None = None) -> tuple[dict, dict]:
    """Fit and score each detector on the same features; returns (results, fitted detector objects)."""
    dets = fit_detectors(features, names, params)
    return score_detectors(dets, features), dets


def run_screen(data: str | Path, base: str | Path, out: str | Path, *, finetuned: str | Path | None = None,
               image_folder=None, finetune_cfg=None, detectors=DETECTORS, default: str = "shift",
               detector_params: dict | None = None, strata_k: int = 8, batch_size: int = 64,
               shard_size: int = 1024, projector: bool = True, show_progress: bool = True,
               log=print, runtime=None) -> ScreenResult:
    """The whole screening of one dataset into a report directory (see the module docstring).

    Raises `DataError` for an unreadable file (before any model is loaded) and when no sample is usable (after
    writing the verdict table, so every sample's reason is on record); `FolderBusyError` when another run
    holds `out`. A rerun after a crash resumes the extraction (see `extract_models`).

    `runtime` (`poisonguard.runtime.Runtime`; default CPU float32) sets device and dtype for every model.
    With `finetuned` given, validation reads only the base's config and processor (no model load).
    """
    from poisonguard.models import load_processor
    from poisonguard.report.html import render_report
    from poisonguard.runtime import free_memory
    from poisonguard.train.examples import to_examples
    from poisonguard.train.finetune import FinetuneConfig, finetune, load_model, save_model

    out = Path(out)
    with folder_lock(out):
        ds = read_dataset(data, image_root=image_folder)
        if finetuned is None:  # the base is fine-tuned below: load it now
            model, processor = load_model(base, runtime=runtime)
        else:  # validation needs only the config and the processor
            model, processor = _ConfigOnly(base), load_processor(base)
        checked = validate_for_model(ds, processor, model)
        log(f"validated {len(checked.dataset.samples)} samples: {len(checked.ok)} ok, "
            f"{len(checked.quarantined)} quarantined")
        held = hold_back_if_too_few(checked)
        if not checked.ok:
            write_report_dir(checked, {}, default, {"default": default, "detectors": {}}, out,
                             params={"base": str(base)})
            why = (f"only {held} usable sample(s), fewer than the {MIN_USABLE_SAMPLES} that screening needs"
                   if held else "no usable sample")
            raise DataError(f"{ds.path}: {why}: all {len(ds.samples)} samples are quarantined; the reasons "
                            f"are in {out / 'verdicts.csv'}")
        if finetuned is None:
            cfg = finetune_cfg or FinetuneConfig()
            log(f"fine-tuning the base model on the suspect data ({cfg.mode}, {cfg.epochs} epochs)")
            ft_model, rep = finetune(model, processor, to_examples(checked.ok, checked.image_loader()), cfg,
                                     show_progress=show_progress)
            finetuned = out / "finetuned"
            save_model(ft_model, processor, finetuned, rep)
            del ft_model
        del model
        free_memory(runtime)
        extract_models(checked, Path(base), Path(finetuned), out / "extract", batch_size=batch_size,
                       shard_size=shard_size, show_progress=show_progress, log=log, runtime=runtime)
        extra = {}
        names = [d for d in detectors if projector or d not in ("fused", "projector")]
        if projector and any(d in names for d in ("fused", "projector")):
            extra = projector_scores(base, finetuned, checked, batch_size=batch_size,
                                     show_progress=show_progress, runtime=runtime)
            save_drift_scores([s.id for s in checked.ok], extra, out / "extract" / DRIFT_FILE)
            names = _without_unfit_projector(names, extra, log)
        features = build_features(out / "extract", strata_k=strata_k, extra_scores=extra)
        if default not in names:
            default = names[0]
        results, dets = run_detectors(features, names, detector_params)
        states = {name: det.to_state() for name, det in dets.items()}
        res = write_report_dir(checked, results, default, {"default": default, "detectors": states}, out,
                               params={"detectors": list(names), "default": default, "strata_k": strata_k,
                                       "finetuned": str(finetuned), "base": str(base)})
        render_report(res.table, {n: r.report for n, r in results.items()}, default, out / "report.html")
        log(f"{len(res.flagged_ids)} flagged by {default}; {len(res.keep_ids)} samples in the release "
            "candidate")
        return res


# ------------------------------------------------------------------- persistence between DVC stages
def save_validation(checked: CheckedDataset, path: Path) -> None:
    reasons = {sid: [{"code": r.code, "message": r.message} for r in rs] for sid, rs in checked.reasons.items()}
    atomic_write_bytes(Path(path), (json.dumps(reasons, indent=1) + "\n").encode())


def load_validation(data: str | Path, path: Path, image_folder=None) -> CheckedDataset:
    """Re-read the dataset and attach the stored per-sample verdicts (no second image decode pass)."""
    from poisonguard.data.dataset import read_dataset
    from poisonguard.data.limits import Limits

    stored = json.loads(Path(path).read_text())
    ds = read_dataset(data, image_root=image_folder)
    if set(stored) != set(ds.ids):
        raise ValueError(f"{path} was written for another version of {data}; re-run validation")
    reasons = {sid: [QuarantineReason(r["code"], r["message"]) for r in stored[sid]] for sid in ds.ids}
    return CheckedDataset(ds, reasons, Limits())


def save_features(features, path: Path) -> None:
    arrays = {"ids": np.asarray(features.ids)}
    for name in ("alloc", "alloc_base", "strata", "vis_entropy", "hidden", "hidden_base"):
        v = getattr(features, name)
        if v is not None:
            arrays[name] = v
    for k, v in features.extra_scores.items():
        arrays[f"extra__{k}"] = v
    tmp = Path(path).with_name(Path(path).name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def load_features(path: Path):
    from poisonguard.detect import FeatureSet

    with np.load(path, allow_pickle=False) as z:
        kw = {k: z[k] for k in z.files if not k.startswith("extra__")}
        extra = {k[len("extra__"):]: z[k] for k in z.files if k.startswith("extra__")}
    return FeatureSet(extra_scores=extra, **kw)


def fit_detectors(features, names, params: dict | None = None) -> dict:
    dets = make_detectors(names, params)
    for name, det in dets.items():
        det.fit(features_for(name, features))
    return dets


def score_detectors(dets: dict, features) -> dict:
    return {name: det.score(features_for(name, features)) for name, det in dets.items()}


def load_detectors(states: dict) -> dict:
    """Rebuild fitted detectors from their JSON states (every detector class registered first)."""
    import poisonguard.audit  # noqa: F401 - registers ProjectorDriftDetector
    from poisonguard.detect import load_detector

    return {name: load_detector(st) for name, st in states.items()}
