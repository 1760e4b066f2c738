"""Stage `poison`: plant the demo backdoor into the world's training set (benchmark/demo only)."""

from _common import WORK, log, params

from poisonguard.attacks.files import poison_file

p = params("poison")
res = poison_file(WORK / "world" / "train.json", WORK / "poisoned", p["attack"], p["rate"], target=p["target"],
                  seed=p["seed"], relabel=p["relabel"], params=(p.get("attacks") or {}).get(p["attack"]))
log(f"poison: {len(res.poison_ids)} of {len(res.samples)} samples -> {WORK / 'poisoned'}")
