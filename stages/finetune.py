"""Stage `finetune`: fine-tune the base model on the (suspect) training set."""

import json

from _common import WORK, log, params

from poisonguard.data.loading import load_checked
from poisonguard.params import build
from poisonguard.train.examples import to_examples
from poisonguard.train.finetune import FinetuneConfig, finetune, load_model, save_model

cfg = build(FinetuneConfig, params("finetune"), "finetune")
checked = load_checked(WORK / "poisoned" / "train.json")
model, processor = load_model(WORK / "world" / "base_model")
model, report = finetune(model, processor, to_examples(checked.ok, checked.image_loader()), cfg)
report["n_quarantined"] = len(checked.quarantined)
save_model(model, processor, WORK / "finetuned", report)
(WORK / "metrics").mkdir(parents=True, exist_ok=True)
(WORK / "metrics" / "finetune.json").write_text(json.dumps(
    {"steps": report["steps"], "seconds": report["seconds"], "final_loss": report["final_loss"]}, indent=2))
log(f"finetune: {report['steps']} steps in {report['seconds']:.0f}s")
