"""Stage `poison`: plant the demo backdoor into the world's training set (benchmark and demo only)."""

from _common import DATA, PARAMS, WORK, log

from poisonguard.attacks.files import poison_file
from poisonguard.params import section

p = section(PARAMS, "poison")
res = poison_file(WORK / "world" / "train.json", DATA.parent, p["attack"], p["rate"], target=p["target"],
                  seed=p["seed"], relabel=p["relabel"], params=(p.get("attacks") or {}).get(p["attack"]))
log(f"poison: {len(res.poison_ids)} of {len(res.samples)} samples -> {DATA.parent}")
