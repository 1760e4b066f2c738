"""Stage `finetune`: the model whose behaviour is screened, when the customer did not hand one in."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from poisonguard.atomic import atomic_write_json
from poisonguard.data.errors import DataError
from poisonguard.data.loading import CheckedDataset
from poisonguard.pipeline.validate import validate_for_model
from poisonguard.runtime import Runtime
from poisonguard.train.examples import to_examples
from poisonguard.train.finetune import FinetuneConfig, load_model, save_model
from poisonguard.train.finetune import finetune as train


@dataclass(frozen=True)
class FinetuneResult:
    model_dir: Path
    report: dict  # steps, final loss, trainable parameters, n examples, config (no timings)
    seconds: float


def finetune(data: str | Path | CheckedDataset, base: str | Path, out: str | Path, cfg: FinetuneConfig, *,
             runtime: Runtime | None = None, image_folder=None, metrics: Path | None = None,
             timings: Path | None = None, show_progress: bool = True, log=print) -> FinetuneResult:
    """Fine-tune `base` on the usable samples of `data` (validated against `base` like the screen does;
    quarantined ones are left out and counted) into `out`; steps and loss go to `metrics`, the duration to
    `timings` (JSON files
    outside the cached model folder) when given. Raises `DataError` when no sample is usable."""
    checked = data if isinstance(data, CheckedDataset) else validate_for_model(data, base, image_folder,
                                                                                hold_back=False, runtime=runtime)
    if not checked.ok:
        raise DataError(f"{checked.dataset.path}: no usable sample to fine-tune on")
    model, processor = load_model(base, runtime=runtime)
    log(f"fine-tuning on {len(checked.ok)} samples ({cfg.mode} mode, {cfg.epochs:g} epochs); "
        f"{len(checked.quarantined)} quarantined samples left out")
    model, report = train(model, processor, to_examples(checked.ok, checked.image_loader()), cfg,
                          show_progress=show_progress)
    seconds = float(report.pop("seconds"))
    report["n_quarantined"] = len(checked.quarantined)
    save_model(model, processor, out, report)
    del model
    for path, values in ((metrics, {"steps": report["steps"], "final_loss": report["final_loss"]}),
                         (timings, {"seconds": seconds})):
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, values)
    log(f"fine-tuned {report['steps']} steps in {seconds:.0f}s, final loss {report['final_loss']:.3f} -> {out}")
    return FinetuneResult(Path(out), report, seconds)
