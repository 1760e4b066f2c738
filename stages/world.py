"""Stage `world`: the embedded world's data and its pretrained base model (cached as a DVC output)."""

from _common import PARAMS, WORK, log

from poisonguard.atomic import atomic_write_json
from poisonguard.params import section
from poisonguard.world.build import make_world, world_configs

p = section(PARAMS, "world")
model_cfg, pretrain_cfg = world_configs(p, seed=p["seed"])
summary = make_world(WORK / "world", seed=p["seed"], n_train=p["n_train"], n_test=p["n_test"],
                     model_cfg=model_cfg, pretrain_cfg=pretrain_cfg, describe_frac=p.get("describe_frac", 0.0),
                     texture_frac=p.get("texture_frac", 0.0), log=log)
for folder in ("metrics", "timings"):
    (WORK / folder).mkdir(parents=True, exist_ok=True)
atomic_write_json(WORK / "metrics" / "world.json", {"test_accuracy": summary["test_accuracy"]["all"]})
atomic_write_json(WORK / "timings" / "world.timings.json", summary["timings_s"])  # not a DVC output
log(f"world: clean test accuracy {summary['test_accuracy']['all']:.3f} in {summary['timings_s']['total']:.0f}s")
