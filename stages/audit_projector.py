"""Stage `audit_projector`: ProjLens-style projector audit (weight delta spectrum, drift) and the per-sample
drift scores that the vote fuses."""

from _common import WORK, log, params

from poisonguard.screening import load_validation, projector_scores, save_drift_scores

p = params("audit_projector")
data = WORK / "poisoned" / "train.json"
checked = load_validation(data, WORK / "extract" / "validation.json")
out = WORK / "audit"
out.mkdir(parents=True, exist_ok=True)
scores = projector_scores(WORK / "world" / "base_model", WORK / "finetuned", checked, batch_size=p["batch_size"])
save_drift_scores([s.id for s in checked.ok], scores, out / "drift_scores.npz")
try:
    from poisonguard.audit.report import audit_models

    audit_models(WORK / "world" / "base_model", WORK / "finetuned", data=data, ks=tuple(p["ks"]), out_dir=out)
except ImportError:  # weight audit report optional until the audit module is complete
    log("audit_projector: weight audit report unavailable")
log(f"audit_projector: drift scores for {len(checked.ok)} samples")
