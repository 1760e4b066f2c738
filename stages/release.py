"""Stage `release`: write the cleaned data in the input's own format, through the gate. In the Prefect flow
this waits for a person's approval; under `dvc repro` the approval is the operator running it."""

import sys

from _common import PARAMS, WORK, log

from poisonguard.gate import GateFailed
from poisonguard.pipeline.config import section_config
from poisonguard.pipeline.gating import release
from poisonguard.pipeline.layout import Layout

try:
    path = release(Layout.dvc(WORK), WORK / "release", section_config("gate", PARAMS))
except GateFailed as exc:
    log(f"release blocked: {exc}")
    sys.exit(1)
log(f"release: {path}")
