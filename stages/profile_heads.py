"""Stage `profile_heads`: the drop's label-free features and a mixture profile of every attention head."""

from _common import PARAMS, WORK, log

from poisonguard.pipeline.config import section_config
from poisonguard.pipeline.layout import Layout
from poisonguard.pipeline.profile import profile_heads

profile_heads(Layout.dvc(WORK), section_config("profile_heads", PARAMS), log=log)
