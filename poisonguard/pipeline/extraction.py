"""Stage `extract_attention`: validate the drop against the model, then capture both models' decision-position
features (attention shares per layer and head, BYE's entropies, the final hidden state) on the usable samples,
and each model's teacher-forced log-probabilities of the samples' own first answers (`extract.span`).

The extraction plan -- which samples (ids and content digests), which model (`model_digest`), which shard
size -- is the same whoever runs it (this stage, `poisonguard screen`, the Prefect/Dask flow), so finished
shards of one are reused by the others; a shard of another plan is never reused. The caller must hold the
folder (a screen's lock, or DVC's): leftover temporary files of a killed run are removed here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from poisonguard.data.dataset import Dataset
from poisonguard.data.errors import DataError
from poisonguard.data.fingerprint import model_digest
from poisonguard.data.loading import CheckedDataset
from poisonguard.extract.compiled import compiled_language_model
from poisonguard.extract.span import extract_span_to_dir
from poisonguard.extract.storage import extract_to_dir, remove_temp_files
from poisonguard.models import is_adapter_dir, model_passes
from poisonguard.pipeline.config import ExtractConfig
from poisonguard.pipeline.layout import Layout
from poisonguard.pipeline.validate import MIN_USABLE_SAMPLES, save_validation, validate_for_model
from poisonguard.pipeline.verdicts import write_report_dir
from poisonguard.runtime import Runtime
from poisonguard.train.examples import LazyExamples


@dataclass(frozen=True)
class ExtractionPlan:
    ids: list[str]
    inputs: list[str]  # content digest of each sample (turns and image bytes)
    tags: dict[str, str]  # "finetuned" / "base" -> the model's content digest


def model_tags(base: str | Path, finetuned: str | Path | None = None) -> dict[str, str]:
    """Content digests of the models; a LoRA adapter's model is the adapter on its base, so both enter."""
    tags = {"base": model_digest(base)}
    if finetuned is not None:
        tags["finetuned"] = model_digest(finetuned) + (f"+{tags['base']}" if is_adapter_dir(finetuned) else "")
    return tags


def plan_extraction(checked: CheckedDataset, base: str | Path, finetuned: str | Path | None = None
                    ) -> ExtractionPlan:
    samples = checked.ok
    return ExtractionPlan(ids=[s.id for s in samples], inputs=checked.digests(samples),
                          tags=model_tags(base, finetuned))


def validate(data: str | Path | Dataset, base: str | Path, layout: Layout, *, image_folder=None,
             runtime: Runtime | None = None, max_batch_tokens: int | None = None, log=print) -> CheckedDataset:
    """Validate against the base model (its processor with the runtime's image options; samples alone over
    `max_batch_tokens` quarantined) and write `layout.validation`. Raises `DataError` when no sample is
    usable, after `no_usable` wrote the verdict table with every sample's reason."""
    checked = validate_for_model(data, base, image_folder, runtime=runtime, max_batch_tokens=max_batch_tokens)
    save_validation(checked, layout.validation)
    log(f"validated {len(checked.dataset.samples)} samples: {len(checked.ok)} ok, "
        f"{len(checked.quarantined)} quarantined")
    if not checked.ok:
        no_usable(checked, layout)
    return checked


def extract_models(checked: CheckedDataset, base: str | Path, finetuned: str | Path, layout: Layout,
                   cfg: ExtractConfig, *, runtime: Runtime | None = None, show_progress: bool = True,
                   log=print) -> None:
    """Both models' features of the usable samples into `layout.extract/{finetuned,base}`, one full model
    resident at a time (an adapter folder: one model, the adapter on, then off). With `runtime.compile` the
    language model runs under torch.compile (`extract.compiled`); the features are the same. Then `span.npz`
    (answer-span log-probabilities, `extract.span`)."""
    plan = plan_extraction(checked, base, finetuned)
    examples = LazyExamples(checked.ok, checked.image_loader())
    answers = LazyExamples(checked.ok, checked.image_loader(), prompt_only=False)
    multi_answer = any(sum(t.role == "assistant" for t in s.turns) > 1 for s in checked.ok)  # no image decoded
    for name, model, processor in model_passes(base, finetuned, runtime):
        folder = layout.extract / name
        folder.mkdir(parents=True, exist_ok=True)
        remove_temp_files(folder)
        with compiled_language_model(model, runtime is not None and runtime.compile):
            extract_to_dir(model, processor, examples, plan.ids, folder, shard_size=cfg.shard_size,
                           batch_size=cfg.batch_size, max_batch_tokens=cfg.max_batch_tokens,
                           num_workers=cfg.num_workers, tag=plan.tags[name], inputs=plan.inputs, on_stale="restart",
                           show_progress=show_progress, log=log)
        extract_span_to_dir(model, processor, answers, plan.ids, folder, tag=plan.tags[name], inputs=plan.inputs,
                            max_tokens=cfg.span_max_tokens, batch_size=cfg.batch_size, multi_answer=multi_answer,
                            show_progress=show_progress, log=log)
        del model, processor  # released before the next pass loads its model


def extract_attention(data: str | Path | Dataset | CheckedDataset, base: str | Path, finetuned: str | Path,
                      layout: Layout, cfg: ExtractConfig, *, runtime: Runtime | None = None, image_folder=None,
                      show_progress: bool = True, log=print) -> CheckedDataset:
    """The stage: `validate` (unless `data` is already validated), then `extract_models`."""
    checked = data if isinstance(data, CheckedDataset) else validate(
        data, base, layout, image_folder=image_folder, runtime=runtime, max_batch_tokens=cfg.max_batch_tokens,
        log=log)
    extract_models(checked, base, finetuned, layout, cfg, runtime=runtime, show_progress=show_progress, log=log)
    return checked


def no_usable(checked: CheckedDataset, layout: Layout) -> None:
    """Write the verdict table (every sample quarantined, with its reasons) and raise `DataError`."""
    write_report_dir(checked, {}, None, {"decide": None, "detectors": {}}, layout.report)
    n = len(checked.dataset.samples)
    held = sum(1 for rs in checked.reasons.values() if any(r.code == "too_few_to_screen" for r in rs))
    why = (f"only {held} usable sample(s), fewer than the {MIN_USABLE_SAMPLES} that screening needs" if held
           else "no usable sample")
    raise DataError(f"{checked.dataset.path}: {why}: all {n} samples are quarantined; the reasons are in "
                    f"{layout.report / 'verdicts.csv'}")
