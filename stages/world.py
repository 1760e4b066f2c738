"""Stage `world`: the embedded world's data and its pretrained base model (cached as a DVC output)."""

from _common import WORK, log, params

from poisonguard.params import world_configs
from poisonguard.world.build import make_world

p = params("world")
model_cfg, pretrain_cfg = world_configs(None, seed=p["seed"])
summary = make_world(WORK / "world", seed=p["seed"], n_train=p["n_train"], n_test=p["n_test"],
                     model_cfg=model_cfg, pretrain_cfg=pretrain_cfg, log=log)
log(f"world: clean test accuracy {summary['test_accuracy']['all']:.3f} in {summary['timings_s']['total']:.0f}s")
