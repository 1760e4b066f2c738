"""Stage `audit_projector`: per-sample projector drift and the projector's weight-space audit."""

from _common import BASE, DATA, FINETUNED, PARAMS, WORK, log

from poisonguard.pipeline.audit import audit_projector
from poisonguard.pipeline.config import section_config
from poisonguard.pipeline.layout import Layout
from poisonguard.pipeline.validate import load_validation

layout = Layout.dvc(WORK)
audit_projector(load_validation(DATA, layout.validation), BASE, FINETUNED, layout,
                section_config("audit_projector", PARAMS), runtime=section_config("runtime", PARAMS).resolve(),
                show_progress=False, log=log)
