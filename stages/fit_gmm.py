"""Stage `fit_gmm`: fit every configured detector label-free; their JSON states become the registered
detector."""

from _common import PARAMS, WORK, log

from poisonguard.pipeline.config import section_config
from poisonguard.pipeline.gmm import fit_gmm
from poisonguard.pipeline.layout import Layout

fit_gmm(Layout.dvc(WORK), section_config("fit_gmm", PARAMS), log=log)
