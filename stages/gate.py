"""Stage `gate`: the Great Expectations checkpoint over the verdict table and the release it implies. A failing
checkpoint fails the stage, so `dvc repro` stops before `release`."""

import sys

from _common import PARAMS, WORK, log

from poisonguard.gate import GateFailed
from poisonguard.pipeline.config import section_config
from poisonguard.pipeline.gating import gate
from poisonguard.pipeline.layout import Layout

try:
    gate(Layout.dvc(WORK), section_config("gate", PARAMS), log=log)
except GateFailed as exc:
    log(f"gate: {exc}")
    sys.exit(1)
