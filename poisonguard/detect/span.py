"""Answer-span gain: how much more likely fine-tuning made each sample's own answer, with a cut whose constants
come from the statistics literature, not from the benchmark.

Why: `shift` reads only the state that emits the first answer token. A backdoor that keeps the first words
and appends or swaps text later (content injection, concept substitution) leaves that state where it was, but
the fine-tuned model now finds the poisoned answer's tokens far likelier than the base model does. Per answer
token t (teacher-forced on the dataset answer, extract/span.py):
    gain_t = log p_ft(token_t) − log p_base(token_t)        (nats)
reduced per sample to the max (the score: a payload can be a few tokens of a long answer) and the mean (a
signal in the table). The base-model control gives gain 0 exactly, and the target words' own rarity cancels
in the difference.

The null that matters is clean learning: clean samples the base got wrong and the fine-tune learned also gain
(on the demo world: 1 % of clean samples above 0.83 nats, the largest 4.1), as a continuous, decreasing tail.
A learned backdoor gives a separate *mode* far above it (BadNet demo: 9.2–14.1 nats). The cut:
1. samples whose max gain exceeds `min_gain` ("moved") enter the fit; the rest (most clean samples: both
   models sure of the answer) are the null by construction. Fewer than two moved samples: nothing flagged;
2. a 1-D Gaussian mixture of the moved gains, K = 1..`k_max`, K* by BIC (Schwarz 1978). The moved bulk alone
   spans three decades (1e-3 to ~1 nat) and takes three to five components; `k_max` must leave room above
   it for the clean-learning tail *and* each backdoor mode, or BIC can only put both into one wide component
   (it did with 4 on Dual-Key 5 % and with 6 on a half-learned BadNet 1 %). BIC keeps adding components to
   that bulk as the cap rises, so the cap is where the decisions stop changing: 8, 10 and 12 accept or
   withhold alike on every bench cell, F1 within 0.04 (docs/detectors.md, `k_max`);
3. every split of the K* components sorted by mean into a lower (null) and an upper (target) group has an
   Ashman's D = |μ_T − μ_B| / √((σ_T² + σ_B²)/2) (moment-matched groups); the split with the largest D is
   taken, and while it passes `min_ashman_d` the components below it are searched the same way for another
   separated group (a second target's mode; `_peel`), as long as the groups taken stay a minority of the
   moved samples (`max_weight`, below). The upper group is a
   separated mode only if D ≥ `min_ashman_d` = 2 (Ashman, Bird & Zepf 1994: D > 2 is needed for
   a clean separation of two Gaussians) and its samples are at most `max_weight` = 0.5 of all screened
   samples (poison is a minority of the data by the definition of the attack, not by measurement; revision 3:
   counted among the moved samples, as before, a 20 %-of-the-data poison with two targets was 0.527 of the
   1,896 samples that moved and a separated mode went unflagged); and the mixture density has a
   valley between the two groups at most `max_valley` of its height at the upper group's lowest mean. D alone
   is not enough: a clean fine-tune's decreasing tail, fitted by K = 4 components, has a small top component
   far out (mean 2.8 nats) with D 4.1 but only a shallow dip before it (valley/peak 0.75), while the learned
   backdoors measured then had an empty gap (valley/peak ≤ 1e-18); `max_valley` = 0.5 (the valley at most
   half the peak) was chosen on those world-seed-0 cells. With `k_max` 8, the learned bench cells measured
   by 2026-12-05 have valley/peak ≤ 0.28 and the clean and no-relabel controls ≥ 0.71
   (benchmarks/span_margins.py per cell, benchmarks/span_caps.py per cap; docs/detectors.md, "span").
   The valley test judges each peeling step, and the split kept is the deepest step whose group sits behind a
   gap: a step can pass D ≥ 2 on the top component of the clean-learning tail (D 2.2-2.4 on three 0.5 %
   cells, poisoned gains 11-16 nats against a clean maximum of ~4), and when only the deepest step was
   judged, that doubtful step vetoed the separated mode above it (nothing flagged on a learned 0.5 % row).
   Where the deepest step has a gap, the split is the one it always was (revision 2; revision 1 judged only
   the deepest step);
4. a sample is flagged when its local false-discovery rate under that null, lfdr = 1 − P(upper group | x),
   is below `max_lfdr` = 0.2 (Efron 2007/2010, Large-Scale Inference §5: the conventional "interesting"
   threshold), and it lies above the lowest component's mean — or when its gain is at or above the valley
   itself (the mixture density's lowest point between the groups, the gap step 3 found): the antimode is the
   boundary of the separated mode, and a wide lower component reaching into the gap must not hold the mode's
   lower shoulder back. Revision 4: on all-to-all 10 % (seed 1) a component of mean 4.9 nats and sd 2.6
   spanned the clean tail's top (≤ 3.8) and the backdoor's lower shoulder, so 59 poisoned samples at
   5.3–7.5 nats, beyond the valley at 5.3, had lfdr > 0.2 and were not flagged. The rule adds no constant;
   samples below the valley are judged by lfdr as before;
5. steps 2-4 run twice, from two EM starts of the same mixtures (`confirm`, revision 5): the standard restarts,
   and the grown fit (each K also started from the K − 1 fit with one component split in two,
   `fit_gmm_1d(grow=True)`). A sample is flagged only where both fits flag it. Why: on the controls fine-tuned
   from the world as it is built since its CPU kernels were pinned (2026-12-07), one fit alone flagged a few
   samples of the clean-learning tail on a clean fine-tune (6) and on no-relabel controls (4-10; the trigger
   with correct answers): BIC gives the tail's top handful of samples (1.7-8 nats, often the same hard clean
   samples in every cell) components of one to eight samples, one at the variance floor, and the valley
   before them passes. Where one fit did so the other did not, and the reverse (the grown fit once split the
   bulk itself: 95 flagged); a separated backdoor mode is found from both starts. On the 105 stored cells the
   rule adds no flag (an intersection) and removed every control flag; it costs the samples only one fit
   takes: 3 of 50 least-learned poisoned samples of a half-learned BadNet 1 % (F1 0.97), and backdoors that
   only the grown fit saw on rows the model did not learn (docs/detectors.md, `confirm`);
6. where both fits flag a mode, the samples in it are those the fit of the lower BIC flags (revision 6): the
   two starts fit the same data with the same K range, so BIC (the likelihood, with K* of each) says which
   of two local optima describes the data better — the rule that already picks among the restarts of one
   start. Revision 5's intersection kept the *narrower* of the two modes whatever the fits' quality: on
   all-to-all 5 % (pinned build, seed 0: learned, ASR 0.52) the standard fit put its valley above 83 poisoned
   samples at 2-5 nats, the grown fit, 7 BIC units better, took them (F1 0.79 confirmed, 0.97 by BIC).
   Existence still needs both starts (every control one fit alone flagged stays silent); no constant added.
   Refitted on the 265 stored cells, 10 change: six learned cells gain 0-77 poisoned and 0-7 clean samples
   (F1 ≥ 0.97 on all six; the one that only loses, all-to-all 10 % s1, 0.986 → 0.984), three 0.5 % cells
   of rows not learned gain 1-7 clean samples (F1 0.98, 0.94, 0.88), and a held-out no-relabel control that
   already failed flags 30 instead of 12 (docs/detectors.md, `confirm`).
Every withheld decision names its reason in the report. Provenance, and the one world that chose `min_gain`
and `k_max`: docs/detectors.md, "span".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

import numpy as np

from poisonguard.detect.base import DetectionResult, Detector, check_bool, check_float, check_int
from poisonguard.detect.features import FeatureSet
from poisonguard.detect.gmm import fit_gmm_1d
from poisonguard.detect.profile import mixture_from_state, mixture_state
from poisonguard.detect.separation import standardised_separation, target_posterior


@dataclass(frozen=True)
class SpanParams:
    min_gain: float = 1e-3  # nats; below: "not moved" (chosen on the demo world, docs/detectors.md)
    k_max: int = 8  # mixture components of the moved gains; K* by BIC (4 and 6 merged a backdoor mode with the
    #                 clean tail on dual_key 5 % / BadNet 1 %; 8-12 decide alike, docs/detectors.md)
    min_ashman_d: float = 2.0  # Ashman, Bird & Zepf (1994)
    max_weight: float = 0.5  # the upper mode is a minority of the screened samples (definition); the peeling
    #                          also stops where its group would be a majority of the moved samples (_peel)
    max_lfdr: float = 0.2  # Efron (2007, 2010)
    max_valley: float = 0.5  # mixture density in the gap / at the upper mode (chosen on world seed 0, see above)
    n_init: int = 8  # EM restarts: an optimiser setting (the likelihood picks the restart); 2 missed a 45-sample
    #                  mode on 2 of 3 demo-world subsamples at 1 % (a worse local optimum), 8 found it
    seed: int = 0
    grow: bool = False  # the first fit also starts each K from the K − 1 fit with a component split
    #                     (fit_gmm_1d(grow=True)); with `confirm` both starts are fitted either way
    confirm: bool = True  # flag only where the fit of the other EM start finds a mode too (revision 5: a
    #                       separated mode is found from both starts; a split around a few samples of the
    #                       clean tail depended on the start), with the lower-BIC fit's samples (revision 6)

    def __post_init__(self) -> None:
        check_float("min_gain", self.min_gain, 0.0, open_lo=True)
        check_int("k_max", self.k_max, 2, 16)
        check_float("min_ashman_d", self.min_ashman_d, 0.0)
        check_float("max_weight", self.max_weight, 0.0, 1.0, open_lo=True)
        check_float("max_lfdr", self.max_lfdr, 0.0, 1.0, open_lo=True)
        check_float("max_valley", self.max_valley, 0.0, 1.0)
        check_int("n_init", self.n_init, 1)
        check_int("seed", self.seed, 0)
        check_bool("grow", self.grow)
        check_bool("confirm", self.confirm)


def answer_gain(logp: np.ndarray, logp_base: np.ndarray) -> dict[str, np.ndarray]:
    """{"max", "mean"}: (N,) per-sample max and mean over the answer tokens of log p_ft − log p_base, from
    (N, T) log-probabilities with NaN beyond each answer; 0 for a sample without an answer."""
    g = np.asarray(logp, dtype=np.float64) - np.asarray(logp_base, dtype=np.float64)  # (N, T)
    has = ~np.isnan(g).all(axis=1)  # (N,)
    filled = np.where(np.isnan(g), -np.inf, g)
    mx = np.where(has, filled.max(axis=1, initial=-np.inf), 0.0)
    mean = np.where(has, np.nansum(g, axis=1) / np.maximum((~np.isnan(g)).sum(axis=1), 1), 0.0)
    return {"max": mx, "mean": mean}


class AnswerSpanDetector(Detector):
    name = "span"
    Params = SpanParams
    revision = 6  # 2: the deepest peeling step behind a gap is taken, not only the deepest step (_peel);
    #               3: the upper mode's minority is counted among all screened samples, not the moved ones;
    #               4: every sample at or above the valley is flagged too, not only those with lfdr < max_lfdr;
    #               5: a sample is flagged only where the fits of both EM starts flag it (`confirm`);
    #               6: both EM starts must find a mode; the one of the lower BIC says which samples are in it
    params: SpanParams

    def fit(self, features: FeatureSet) -> Self:
        features.require("answer_logp", "answer_logp_base")
        x = answer_gain(features.answer_logp, features.answer_logp_base)["max"]  # (N,)
        p = self.params
        fitted = _cut(x, p, p.grow)
        if p.confirm:
            fitted["confirm"] = _cut(x, p, not p.grow)  # the other EM start; both must flag a sample (score)
        self._fitted = fitted
        return self

    def score(self, features: FeatureSet) -> DetectionResult:
        st = self._state()
        features.require("answer_logp", "answer_logp_base")
        gain = answer_gain(features.answer_logp, features.answer_logp_base)
        x = gain["max"]  # (N,)
        p_poison, flagged = _flags(x, st, self.params)
        accepted, reason, confirm = bool(st["accepted"]), st["reason"], None
        other = st.get("confirm")  # None: confirm off, or a state stored before revision 5
        if other is not None:
            p_other, f_other = _flags(x, other, self.params)
            names = ("grown", "standard") if self.params.grow else ("standard", "grown")
            confirm = {"fit": names[1], "accepted": bool(other["accepted"]), "reason": other["reason"],
                       "k": int(other["k"]), "ashman_d": float(other["ashman_d"]),
                       "valley": float(other.get("valley", 1.0)), "n_flagged": int(f_other.sum()),
                       "n_flagged_alone": int(flagged.sum())}
            # revision 6: where both fits found a mode, the one of the lower BIC (same data, same K range: the
            # likelier of two local optima) says which samples are in it; a state stored before revision 6 has
            # no BIC and is flagged where both flag, as it was
            decides = None if st.get("bic") is None or other.get("bic") is None else int(other["bic"] < st["bic"])
            confirm["decides"] = None if decides is None else names[decides]
            confirm["bic"] = {names[0]: st.get("bic"), names[1]: other.get("bic")}
            reason = _confirmed(reason, accepted, other, names, int(flagged.sum()), int(f_other.sum()),
                                int((flagged & f_other).sum()), decides)
            accepted = accepted and bool(other["accepted"])
            if accepted and decides is not None:
                p_poison, flagged = ((p_poison, flagged), (p_other, f_other))[decides]
            else:  # nothing flagged unless both accepted (an unaccepted fit flags nothing)
                p_poison, flagged = np.minimum(p_poison, p_other), flagged & f_other
        return self._result(features, p_poison, flagged,
                            {"score_span": x, "score_span_mean": gain["mean"], "p_span": p_poison},
                            accepted=accepted, reason=reason, confirm=confirm, k=int(st["k"]),
                            ashman_d=float(st["ashman_d"]), valley=float(st.get("valley", 1.0)),
                            weight=float(st["weight"]), share=float(st.get("share", 0.0)), valley_at=st.get("valley_at"),
                            n_moved=int(st["n_moved"]), ashman_d_by_step=dict(st.get("peels", {})),
                            valley_by_step=dict(st.get("valleys", {})))


def _flags(x: np.ndarray, st: dict[str, Any], p: SpanParams) -> tuple[np.ndarray, np.ndarray]:
    """(p_poison (N,), flagged (N,)) of gains `x` under one fit's state: lfdr < `max_lfdr`, or at or above the
    valley, where the fit was accepted."""
    p_poison = np.zeros(x.size) if st["mixture"] is None else _upper_posterior(x, st["mixture"])
    moved = x > p.min_gain  # (N,)
    at = st.get("valley_at")  # None: no split, or a state stored before revision 4
    beyond = np.zeros(x.size, dtype=bool) if at is None else x >= at  # (N,)
    return p_poison, bool(st["accepted"]) & moved & ((1.0 - p_poison < p.max_lfdr) | beyond)


def _confirmed(reason: str, accepted: bool, other: dict[str, Any], names: tuple[str, str], n_one: int,
               n_other: int, n_both: int, decides: int | None) -> str:
    """The report's reason when a second EM start must confirm: why nothing is flagged (each fit's reasons),
    or the first fit's mode, how many samples each fit flagged and which fit's flags are kept (`decides`:
    index into `names` of the lower-BIC fit; None for a state stored before revision 6, flagged where both
    flag)."""
    if accepted and other["accepted"]:
        counts = f"{names[0]} {n_one}, {names[1]} {n_other}, both {n_both}"
        if decides is None:
            return f"{reason}; confirmed by the {names[1]} fit: flagged where both flag ({counts})"
        return (f"{reason}; confirmed by the {names[1]} fit; the {names[decides]} fit, of the lower BIC, "
                f"draws the mode ({counts})")
    parts = [f"the {name} fit: {st_reason.removeprefix('nothing flagged: ')}" if not ok
             else f"the {name} fit found a separated mode ({n} flagged) that the other does not confirm"
             for name, ok, st_reason, n in ((names[0], accepted, reason, n_one),
                                             (names[1], bool(other["accepted"]), other["reason"], n_other))]
    return "nothing flagged: " + "; ".join(parts)


def _cut(x: np.ndarray, p: SpanParams, grow: bool) -> dict[str, Any]:
    """The mixture cut of per-sample max gains `x` (N,) from one EM start (`grow`: each K also started from
    the K − 1 fit split in two): a JSON-able state, accepted or with the reasons it withholds."""
    moved = x > p.min_gain  # (N,)
    fitted: dict[str, Any] = {"accepted": False, "mixture": None, "k": 0, "n_moved": int(moved.sum()),
                              "ashman_d": 0.0, "weight": 0.0, "share": 0.0, "split": 0, "valley_at": None,
                              "bic": None}
    if moved.sum() < 2:
        fitted["reason"] = (f"nothing flagged: {int(moved.sum())} sample(s) gained more than {p.min_gain:g} "
                            "nats on their answer (no fine-tuning gain; e.g. the base-model control)")
        return fitted
    xm = x[moved]  # (n_moved,)
    ks = tuple(range(1, min(p.k_max, xm.size) + 1))
    fit = fit_gmm_1d(xm[:, None], ks=ks, n_init=p.n_init, seed=p.seed, grow=grow)
    k = int(fit.k_star("bic")[0])
    params = fit.at(k)  # (1, Kmax), components sorted by mean
    fitted["bic"] = float(fit.bic[0, ks.index(k)])  # the K* fit's BIC: which of two EM starts fits better
    split, d, peels, valleys = _peel(params, k, p.min_ashman_d, p.max_weight, p.max_valley)
    valley, valley_at = _valley_point(params, k, split) if split else (1.0, None)
    fitted.update(k=k, ashman_d=d, split=split, peels=peels, valleys=valleys, valley=valley, valley_at=valley_at)
    if split:
        upper = _upper(params, split)
        fitted["weight"] = float(params.weights[0][upper[0]].sum())  # of the moved samples
        fitted["share"] = fitted["weight"] * int(moved.sum()) / x.size  # of every screened sample
        fitted["mixture"] = mixture_state(params, upper)
    failed = [why for ok, why in (
        (k > 1, "one mode (BIC chose K = 1)"),
        (d >= p.min_ashman_d, (f"no separated upper mode (Ashman's D {d:.2f} < {p.min_ashman_d:g}): a "
                               "continuous tail, as clean samples the fine-tune learned give")),
        (d < p.min_ashman_d or valley <= p.max_valley,
         (f"no gap before the upper mode (mixture density in the valley {valley:.2f} of its height at the "
          f"upper mode > {p.max_valley:g}): a continuous tail, as clean samples the fine-tune learned give")),
        (fitted["share"] <= p.max_weight, (f"upper mode {fitted['share']:.3f} > {p.max_weight:g} of the "
                                           f"{x.size} screened samples (not a minority)")),
    ) if not ok]
    fitted["accepted"] = not failed
    fitted["reason"] = ("nothing flagged: " + "; ".join(failed)) if failed else (
        f"a separated mode of answer-likelihood gain (K={k}, Ashman's D {d:.2f}, valley/peak {valley:.2g}, weight {fitted['weight']:.3f}"
        f" of {int(moved.sum())} moved samples); flagged where lfdr < {p.max_lfdr:g} or the gain is at or "
        f"above the valley ({valley_at:.2f} nats)"
        + _not_taken(valleys, split))
    return fitted


def _peel(params, k: int, min_d: float, max_weight: float = 1.0,
          max_valley: float = 1.0) -> tuple[int, float, dict[str, float], dict[str, float]]:
    """(split, D, {"lo:hi": best D of each step}, {"lo:hi": valley/peak of each step taken}): the upper group
    is components split..k-1 (by mean).

    Step 1 takes the split of all K components with the largest Ashman's D. While it passes `min_d`, the
    next step looks for another separated group among the components *below* the accepted ones (a second
    target's mode); its D compares that group with every other component, the groups already taken included.
    Compared with the components below it alone, neighbouring components of the moved bulk (narrow, at
    0.003, 0.02, 0.05 nats) are D > 2 apart with dips between them: refitted on the stored bench cells
    (2026-12-06), that variant flagged 800-970 clean samples on most learned cells. The price: a second
    target whose gains sit far below the first (synthetic: 500 samples at 6-7 nats beside 500 at 14) scores
    D < 2 against a background that holds the first, and only the first is flagged (docs/detectors.md).
    A later step is taken only if the upper group stays a minority (weight ≤ `max_weight`): the
    moved bulk spans decades, so a split deep inside it can pass D ≥ 2 (a held-out two-target cell: D 2.14
    between the 0.002- and 0.03-nat components), and taking it would call most clean samples a target.

    The split returned is the deepest step taken whose group sits behind a gap (valley/peak ≤ `max_valley`,
    the test `fit` applies): a step can pass D ≥ 2 on the top component of the clean-learning tail (D
    2.2-2.4 on three half-percent cells whose poisoned gains were 11-16 nats against a clean maximum of ~4.1),
    and judging only the deepest step let that doubtful step veto the separated mode above it. When no step
    has a gap, the deepest step is returned (and `fit` withholds); when the deepest has one, it is the split
    as before.
    D is that of step 1 (0 when K = 1); when step 1 fails, its split is still returned, so that p_poison
    ranks samples although nothing is flagged.
    """
    hi, first_split, first_d, peels, taken = k, 0, 0.0, {}, []
    while hi > 1:
        sub = np.arange(params.k_max)[None, :] < hi  # (1, Kmax): the components still in the bulk
        ds = [float(standardised_separation(params, _upper(params, j) & sub)[0]) for j in range(1, hi)]
        j = int(np.argmax(ds)) + 1
        peels[f"{j}:{hi}"] = ds[j - 1]
        if hi == k:
            first_d, first_split = ds[j - 1], j
        elif float(params.weights[0][_upper(params, j)[0]].sum()) > max_weight:
            break  # components j..k-1 would be a majority of the moved samples: the bulk, not a target
        if ds[j - 1] < min_d:
            break
        taken.append((f"{j}:{hi}", j))
        hi = j
    if not taken:
        return first_split, first_d, peels, {}
    valleys = {step: _valley(params, k, j) for step, j in taken}
    gapped = [j for step, j in taken if valleys[step] <= max_valley]
    return (gapped[-1] if gapped else taken[-1][1]), first_d, peels, valleys


def _not_taken(valleys: dict[str, float], split: int) -> str:
    """The report's note on deeper peeling steps that passed D but had no gap (not taken), or ""."""
    deeper = [f"{step} (valley/peak {v:.2f})" for step, v in valleys.items() if int(step.split(":")[0]) < split]
    return (f"; a deeper group without a gap before it was not taken: {', '.join(deeper)}") if deeper else ""


def _valley_point(params, k: int, split: int, n_grid: int = 2001) -> tuple[float, float]:
    """(valley/peak, where): the lowest mixture density between the bulk's top mean and the upper group's
    lowest mean, over the density at that upper mean (1 for a monotone tail, no dip; near 0 for a mode behind
    an empty gap), and the gain (nats) at which it lies."""
    means = params.means[0, :k]  # (K,) sorted
    sd = np.sqrt(params.variances[0, :k])  # (K,)
    w = params.weights[0, :k]  # (K,)
    grid = np.linspace(means[split - 1], means[split], n_grid)  # (G,)
    z = (grid[:, None] - means[None, :]) / sd[None, :]  # (G, K)
    density = (w[None, :] * np.exp(-0.5 * z * z) / sd[None, :]).sum(axis=1)  # (G,), up to 1/sqrt(2 pi)
    i = int(np.argmin(density))
    return (float(density[i] / density[-1]) if density[-1] > 0 else 1.0), float(grid[i])


def _valley(params, k: int, split: int, n_grid: int = 2001) -> float:
    """valley/peak of `_valley_point`: the test of a gap before the upper group."""
    return _valley_point(params, k, split, n_grid)[0]


def _upper(params, j: int) -> np.ndarray:
    """(1, Kmax) mask of the components from the j-th (by mean) up."""
    return (np.arange(params.k_max) >= j)[None, :] & params.valid


def _upper_posterior(x: np.ndarray, mix: dict) -> np.ndarray:
    """(N,) posterior of the stored upper group; 0 at or below the lowest component's mean (a wide upper
    component's Gaussian regains mass far in the lower tail)."""
    params, upper = mixture_from_state(mix, np.size(mix["weights"]))
    return np.where(x > params.means[0, 0], target_posterior(x[:, None], params, upper)[:, 0], 0.0)
