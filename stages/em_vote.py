"""Stage `em_vote`: apply the fitted detectors (the default `shift`: decision-state drift with a guarded cut;
`tcap_plus` / `fused`: head votes -> Dawid-Skene EM, fused with the projector annotators) and write the report:
verdict table, release candidate (the default detector decides), manifest, HTML."""

import json

from _common import WORK, log, params

from poisonguard.report.html import render_report
from poisonguard.screening import (load_detectors, load_features, load_validation, score_detectors,
                                   write_report_dir)

p = params("em_vote")
fs = load_features(WORK / "profile" / "features.npz")
states = json.loads((WORK / "gmm" / "detectors.json").read_text())
dets = load_detectors(states)
results = score_detectors(dets, fs)
checked = load_validation(WORK / "poisoned" / "train.json", WORK / "extract" / "validation.json")
out = WORK / "report"
res = write_report_dir(checked, results, p["default"], {"default": p["default"], "detectors": states}, out,
                       params={"default": p["default"], "detectors": list(dets)})
render_report(res.table, {n: r.report for n, r in results.items()}, p["default"], out / "report.html",
              checked=checked)
(WORK / "metrics").mkdir(parents=True, exist_ok=True)
(WORK / "metrics" / "screen.json").write_text(json.dumps(
    {"n": len(res.table), "flagged": len(res.flagged_ids), "released": len(res.keep_ids),
     "quarantined": int((res.table["status"] != "ok").sum())}, indent=2) + "\n")
log(f"em_vote: {len(res.flagged_ids)} flagged by {p['default']}; {len(res.keep_ids)} in the release candidate")
