"""Stage `extract_attention`: validate the drop against the model, then both models' decision-position
features (sharded, resumable)."""

from _common import BASE, DATA, FINETUNED, PARAMS, WORK, log

from poisonguard.pipeline.config import section_config
from poisonguard.pipeline.extraction import extract_attention
from poisonguard.pipeline.layout import Layout

extract_attention(DATA, BASE, FINETUNED, Layout.dvc(WORK), section_config("extract_attention", PARAMS),
                  runtime=section_config("runtime", PARAMS).resolve(), show_progress=False, log=log)
