"""Stage `em_vote`: score the detectors, fuse them in a Dawid-Skene vote, write the verdict table, the release
candidate and report.html."""

from _common import DATA, PARAMS, WORK, log

from poisonguard.pipeline.config import section_config
from poisonguard.pipeline.layout import Layout
from poisonguard.pipeline.validate import load_validation
from poisonguard.pipeline.vote import em_vote

layout = Layout.dvc(WORK)
cfg = section_config("em_vote", PARAMS)
em_vote(load_validation(DATA, layout.validation), layout, cfg, log=log,
        params={"base": "work/world/base_model", "finetuned": "work/finetuned", "decide": cfg.decide})
