"""BYE, "Believe Your Eyes" (Rong et al., arXiv 2505.16916, NeurIPS 2025), faithful to the authors' code.

Per layer: entropy of the head-mean attention from the decision position over the image tokens; a 2-GMM per
layer; keep layers whose modes are far apart (BSI); average the kept layers; a 2-GMM on that mean; flag every
sample of the lower-mean (more concentrated attention) component.

Kept on purpose, because it is the reference and the known counterexample: the final 2-GMM always splits. On
clean data with one naturally bimodal layer (e.g. two kinds of images) it removes a whole clean cluster. It is
also blind to global triggers, which raise entropy instead (a bound the TCAP paper states). Where no layer
passes the BSI test the authors' code returns nothing; here nothing is flagged and the report says so.
Text-only samples (NaN entropy) get the layer mean, as in the code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

import numpy as np

from poisonguard.detect.base import DetectionResult, Detector, check_choice, check_float, check_int
from poisonguard.detect.features import FeatureSet
from poisonguard.detect.gmm import GMMFit, GMMParams, fit_gmm_1d, posterior

BSI_RULES = ("code", "paper")
_ALWAYS_SPLIT = (
    "BYE flags the lower-entropy cluster of a 2-GMM whenever a sensitive layer exists, with no check that "
    "the cluster is poison: on clean data with a naturally bimodal layer it culls clean samples."
)


@dataclass(frozen=True)
class BYEParams:
    bsi_rule: str = "code"  # "code": |μ1−μ2| > τ(σ1+σ2) (authors' code); "paper": ≥ τ·sqrt(σ1²+σ2²)
    bsi_tau: float = 2.0  # τ_bsi (paper App. A.3; fixed 2.0 in the code)
    n_init: int = 2
    seed: int = 0
    gmm_tol: float = 1e-5
    gmm_max_iter: int = 300
    reg_covar: float = 1e-6  # sklearn's default, which the authors use

    def __post_init__(self) -> None:
        check_choice("bsi_rule", self.bsi_rule, BSI_RULES)
        check_float("bsi_tau", self.bsi_tau, 0.0)
        check_int("n_init", self.n_init, 1)
        check_int("seed", self.seed, 0)
        check_float("gmm_tol", self.gmm_tol, 0.0)
        check_int("gmm_max_iter", self.gmm_max_iter, 1)
        check_float("reg_covar", self.reg_covar, 0.0)


class BYEDetector(Detector):
    name = "bye"
    Params = BYEParams
    params: BYEParams

    def fit(self, features: FeatureSet) -> Self:
        p = self.params
        features.require("vis_entropy")
        ent = features.vis_entropy  # (N, L)
        has_image = np.isfinite(ent).any(axis=1)
        if not has_image.any():
            raise ValueError("vis_entropy is NaN for every sample: BYE needs image samples")
        fill = np.nanmean(ent[has_image], axis=0)  # (L,) the code's NaN → column mean
        fill = np.where(np.isfinite(fill), fill, 0.0)
        e = np.where(np.isfinite(ent), ent, fill)

        layer_fit = self._gmm(e).at(2)  # (L, 2), components sorted by mean
        sd = np.sqrt(layer_fit.variances)
        gap = np.abs(layer_fit.means[:, 1] - layer_fit.means[:, 0])
        spread = sd.sum(1) if p.bsi_rule == "code" else np.sqrt((sd**2).sum(1))
        bsi = gap / spread
        kept = np.flatnonzero(bsi > p.bsi_tau if p.bsi_rule == "code" else bsi >= p.bsi_tau)

        report: dict[str, Any] = {
            "bsi": bsi,
            "bsi_rule": p.bsi_rule,
            "bsi_tau": p.bsi_tau,
            "layer_means": layer_fit.means,
            "layer_sds": sd,
            "kept_layers": kept,
            "n_text_only": int((~has_image).sum()),
            "always_split": _ALWAYS_SPLIT,
        }
        fitted: dict[str, Any] = {"fill": fill, "kept": kept, "n_layers": ent.shape[1], "report": report}
        if kept.size:
            final = self._gmm(e[:, kept].mean(axis=1)).at(2)
            fitted["final"] = {
                "weights": final.weights[0],
                "means": final.means[0],
                "variances": final.variances[0],
            }
            report["final_gmm"] = fitted["final"]
        else:
            report["note"] = "no sensitive layer (no layer passes the BSI test): nothing flagged"
        self._fitted = fitted
        return self

    def score(self, features: FeatureSet) -> DetectionResult:
        st = self._state()
        features.require("vis_entropy")
        if features.vis_entropy.shape[1] != int(st["n_layers"]):
            raise ValueError(
                f"vis_entropy has {features.vis_entropy.shape[1]} layers, fitted on {st['n_layers']}"
            )
        n = features.n
        kept = np.asarray(st["kept"], dtype=np.int64).reshape(-1)
        if kept.size:
            e = np.where(np.isfinite(features.vis_entropy), features.vis_entropy, np.asarray(st["fill"]))
            h_bar = e[:, kept].mean(axis=1)  # (N,)
            f = st["final"]
            params = GMMParams(
                *(np.asarray(f[k], dtype=np.float64)[None, :] for k in ("weights", "means", "variances")),
                np.array([2]),
            )
            p_poison = posterior(h_bar[:, None], params)[:, 0, 0]  # component 0 has the lower mean
        else:
            h_bar, p_poison = np.full(n, np.nan), np.zeros(n)
        flagged = p_poison > 0.5
        signals = {"score_bye": h_bar, "vote_bye": flagged.astype(float)}
        return self._result(features, p_poison, flagged, signals, **st["report"])

    def _gmm(self, x: np.ndarray) -> GMMFit:
        p = self.params
        return fit_gmm_1d(
            x,
            (2,),
            n_init=p.n_init,
            max_iter=p.gmm_max_iter,
            tol=p.gmm_tol,
            reg_covar=p.reg_covar,
            seed=p.seed,
        )
