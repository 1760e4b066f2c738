"""Stage `fit_gmm`: fit every detector label-free (per-head GMMs, separation scores, head selection, EM);
the fitted states are JSON (no pickle) and become the registered detector."""

import json

from _common import WORK, log, params

from poisonguard.screening import fit_detectors, load_features

p = params("fit_gmm")
fs = load_features(WORK / "profile" / "features.npz")
dets = fit_detectors(fs, p["detectors"], p.get("params") or {})
(WORK / "gmm").mkdir(parents=True, exist_ok=True)
states = {name: det.to_state() for name, det in dets.items()}
(WORK / "gmm" / "detectors.json").write_text(json.dumps(states, indent=1) + "\n")
log(f"fit_gmm: fitted {', '.join(dets)}")
