"""Stage `extract_attention`: validate the suspect data against the model, then capture decision-position
attention of the fine-tuned and the base model (sharded, resumable)."""

from _common import WORK, log, params

from poisonguard.screening import extract_models, save_validation, validate_for_model
from poisonguard.train.finetune import load_model

p = params("extract_attention")
data = WORK / "poisoned" / "train.json"
model, processor = load_model(WORK / "world" / "base_model")
checked = validate_for_model(data, processor, model)
del model
out = WORK / "extract"
out.mkdir(parents=True, exist_ok=True)
save_validation(checked, out / "validation.json")
extract_models(checked, WORK / "world" / "base_model", WORK / "finetuned", out,
               batch_size=p["batch_size"], shard_size=p["shard_size"])
log(f"extract_attention: {len(checked.ok)} samples x 2 models; {len(checked.quarantined)} quarantined")
