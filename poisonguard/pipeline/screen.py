"""`poisonguard screen`: every stage of the pipeline in one process, into one report folder.

The same stage functions as the DVC pipeline (`stages/*.py`), in the same order, with the same configs;
only the layout differs (`Layout.screen`: the report files at the folder's top level). The folder is locked
for the whole run (a second screen there fails at once), the input is read before any model is loaded, and
a rerun after a crash resumes the extraction shard by shard.
"""

from __future__ import annotations

from pathlib import Path

from poisonguard.data.dataset import read_dataset
from poisonguard.pipeline.audit import audit_projector
from poisonguard.pipeline.config import PipelineConfig, load_config
from poisonguard.pipeline.extraction import extract_attention, validate
from poisonguard.pipeline.finetuning import finetune
from poisonguard.pipeline.gmm import fit_gmm
from poisonguard.pipeline.layout import Layout
from poisonguard.pipeline.profile import profile_heads
from poisonguard.pipeline.verdicts import ScreenResult
from poisonguard.pipeline.vote import em_vote
from poisonguard.runlock import folder_lock


def run_screen(data: str | Path, base: str | Path, out: str | Path, *, finetuned: str | Path | None = None,
               image_folder=None, config: PipelineConfig | None = None, show_progress: bool = True,
               log=print) -> ScreenResult:
    """Screen `data` into the report folder `out` (fine-tuning `base` on it first when `finetuned` is None).

    Raises `DataError` for an unreadable file (before any model is loaded) and when no sample is usable (after
    writing the verdict table, so every sample's reason is on record); `FolderBusyError` when another run
    holds `out`.
    """
    cfg = config or load_config()
    runtime = cfg.runtime.resolve()
    out = Path(out)
    layout = Layout.screen(out)
    with folder_lock(out):
        checked = validate(read_dataset(data, image_root=image_folder), base, layout, runtime=runtime,
                           max_batch_tokens=cfg.extract_attention.max_batch_tokens, log=log)
        if finetuned is None:
            finetuned = out / "finetuned"
            finetune(checked, base, finetuned, cfg.finetune, runtime=runtime, metrics=layout.metrics_file("finetune"),
                     timings=layout.timings_file("finetune"), show_progress=show_progress, log=log)
        extract_attention(checked, base, finetuned, layout, cfg.extract_attention, runtime=runtime,
                          show_progress=show_progress, log=log)
        audit_projector(checked, base, finetuned, layout, cfg.audit_projector, runtime=runtime,
                        show_progress=show_progress, log=log)
        features = profile_heads(layout, cfg.profile_heads, runtime=runtime, log=log)
        fit_gmm(layout, cfg.fit_gmm, features, log=log)
        return em_vote(checked, layout, cfg.em_vote, features=features, log=log,
                       params={"base": str(base), "finetuned": str(finetuned), "decide": cfg.em_vote.decide,
                               "detectors": list(cfg.fit_gmm.detectors)})
