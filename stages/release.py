"""Stage `release`: write the cleaned data in the input's own format (re-checked by the gate on exactly what
is written). In the Prefect flow this step waits for a person's approval; under `dvc repro` the approval is
the operator running it."""

import sys

from _common import WORK

from poisonguard.gate import release_cli

sys.exit(release_cli(WORK / "report", WORK / "release"))
