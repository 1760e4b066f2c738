"""Stage `finetune`: fine-tune the base model on the suspect data (skipped in production when the customer
hands in the fine-tuned model)."""

from _common import BASE, DATA, FINETUNED, PARAMS, WORK, log

from poisonguard.pipeline.config import section_config
from poisonguard.pipeline.finetuning import finetune
from poisonguard.pipeline.layout import Layout

finetune(DATA, BASE, FINETUNED, section_config("finetune", PARAMS), runtime=section_config("runtime", PARAMS).resolve(),
         metrics=Layout.dvc(WORK).metrics_file("finetune"), timings=Layout.dvc(WORK).timings_file("finetune"),
         show_progress=False, log=log)
