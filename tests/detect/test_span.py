"""Answer-span detector on synthetic log-probabilities shaped like the demo world's (extract/span.py output):
a separated mode of gain is flagged from 0.5 % to 20 %, one or two targets, an appended payload after an
unchanged first token included; clean learning (a continuous tail) and the base-model control stay silent;
the state carries over."""

from __future__ import annotations

import json

import numpy as np
import pytest

from poisonguard.detect import FeatureSet, load_detector
from poisonguard.detect.gmm import fit_gmm_1d
from poisonguard.detect.profile import mixture_from_state
from poisonguard.detect.span import AnswerSpanDetector, answer_gain

N, T = 3000, 6


def _world(rate: float = 0.1, seed: int = 0, targets: tuple[float, ...] = (12.0,), payload_at: int = 0,
           wrong_rate: float = 0.08, wrong_scale: float = 0.5):
    """(FeatureSet, poison mask). Base log-probs of clean answers: most near 0 (the base is right), `wrong_rate`
    of samples the base got partly wrong (log p exponential, down to −4); the fine-tune moves every clean
    answer towards certainty (the learned-error tail: gain up to a few nats, continuous). The defaults give a
    clean max-gain tail like the demo world's (q99 ≈ 0.8, q99.9 ≈ 1.5–2 nats). Poisoned answers: the base finds the
    target tokens from `payload_at` on implausible (−`target` nats), the fine-tune is sure of them; several
    `targets` split the poison in equal parts."""
    rng = np.random.default_rng(seed)
    lens = rng.integers(2, T + 1, N)  # (N,)
    base = -np.abs(rng.normal(0, 0.01, (N, T)))
    wrong = rng.random(N) < wrong_rate
    base[wrong] = -rng.exponential(wrong_scale, (wrong.sum(), T)).clip(max=4.0)
    ft = base * rng.uniform(0.0, 1.0, (N, T))  # the clean fine-tune: closer to certainty, never past it
    poison = np.zeros(N, dtype=bool)
    idx = rng.choice(N, round(rate * N), replace=False)
    poison[idx] = True
    lens[idx] = T  # a poisoned answer holds its payload
    valid = np.arange(T)[None, :] < lens[:, None]  # (N, T)
    for part, target in zip(np.array_split(idx, len(targets)), targets, strict=True):
        base[part, payload_at:] = -target + rng.normal(0, 0.8, (len(part), T - payload_at))
        ft[part, payload_at:] = -np.abs(rng.normal(0, 0.02, (len(part), T - payload_at)))
    nan = np.where(valid, 0.0, np.nan)
    ids = np.array([f"s{i}" for i in range(N)])
    return FeatureSet(ids=ids, answer_logp=ft + nan, answer_logp_base=base + nan), poison


@pytest.mark.parametrize("rate", [0.005, 0.02, 0.1, 0.2])
def test_separated_gain_mode_is_flagged_from_half_a_percent_to_twenty(rate):
    fs, poison = _world(rate=rate, seed=1)
    res = AnswerSpanDetector().detect(fs)
    assert res.report["accepted"], res.report["reason"]
    assert res.report["ashman_d"] >= 2
    assert (res.flagged & poison).sum() >= 0.95 * poison.sum()
    assert (res.flagged & ~poison).sum() <= 0.005 * N


def test_two_targets_and_an_appended_payload():
    """Two targets at different gains both flagged; a payload after two unchanged answer tokens too (the
    first answer token does not move: content injection)."""
    fs, poison = _world(rate=0.06, seed=2, targets=(7.0, 13.0), payload_at=2)
    first = answer_gain(fs.answer_logp[:, :1], fs.answer_logp_base[:, :1])["max"]
    assert np.median(first[poison]) < 0.1  # nothing to see on the first token
    res = AnswerSpanDetector().detect(fs)
    assert res.report["accepted"], res.report["reason"]
    assert (res.flagged & poison).sum() >= 0.95 * poison.sum()
    assert (res.flagged & ~poison).sum() <= 0.005 * N


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clean_learning_is_silent(seed):
    fs, poison = _world(rate=0.0, seed=seed)
    assert not poison.any()
    res = AnswerSpanDetector().detect(fs)
    assert res.flagged.sum() == 0 and not res.report["accepted"]
    assert res.report["reason"].startswith("nothing flagged")


def test_base_model_control_gives_zero_gain_and_no_flag():
    fs, _ = _world(rate=0.1)
    control = FeatureSet(ids=fs.ids, answer_logp=fs.answer_logp_base, answer_logp_base=fs.answer_logp_base)
    res = AnswerSpanDetector().detect(control)
    assert res.flagged.sum() == 0 and res.report["n_moved"] == 0
    assert "no fine-tuning gain" in res.report["reason"]
    assert np.all(res.signals["score_span"] == 0)


def test_answer_gain_reduces_over_the_answer_only():
    ft = np.array([[-0.1, -0.2, np.nan], [np.nan, np.nan, np.nan], [-1.0, np.nan, np.nan]])
    base = np.array([[-2.1, -0.2, np.nan], [np.nan, np.nan, np.nan], [-0.5, np.nan, np.nan]])
    g = answer_gain(ft, base)
    np.testing.assert_allclose(g["max"], [2.0, 0.0, -0.5])
    np.testing.assert_allclose(g["mean"], [1.0, 0.0, -0.5])


def test_state_round_trip_scores_alike_and_missing_features_are_named():
    fs, _ = _world(rate=0.05, seed=4)
    det = AnswerSpanDetector().fit(fs)
    again = load_detector(json.loads(json.dumps(det.to_state())))
    a, b = det.score(fs), again.score(fs)
    np.testing.assert_array_equal(a.flagged, b.flagged)
    np.testing.assert_allclose(a.p_poison, b.p_poison)
    with pytest.raises(ValueError, match="answer_logp"):
        AnswerSpanDetector().fit(FeatureSet(ids=fs.ids))
    with pytest.raises(ValueError, match="min_ashman_d"):
        AnswerSpanDetector(min_ashman_d=-1.0)


def _mixture(means, sds, weights):
    from types import SimpleNamespace

    return SimpleNamespace(means=np.asarray([means], float), variances=np.asarray([sds], float) ** 2,
                           weights=np.asarray([weights], float))


def test_valley_tells_a_mode_behind_a_gap_from_a_far_component_of_a_tail():
    from poisonguard.detect.span import _valley

    # a clean fine-tune's tail as K = 4 fitted it on the world (means in nats): the top component sits in the
    # tail with only a shallow dip before it, although Ashman's D of that split is above 2
    tail = _mixture([0.002, 0.11, 0.77, 2.8], [0.001, 0.08, 0.45, 0.9], [0.55, 0.35, 0.09, 0.01])
    assert _valley(tail, 4, 3) > 0.5
    # a learned backdoor: the same bulk and a mode at 12 nats behind an empty gap
    poisoned = _mixture([0.002, 0.11, 0.77, 12.0], [0.001, 0.08, 0.45, 1.0], [0.5, 0.3, 0.1, 0.1])
    assert _valley(poisoned, 4, 3) < 1e-6


GAINS = __import__("pathlib").Path(__file__).resolve().parents[1] / "fixtures" / "span_gains.npz"


def _recorded(name: str) -> tuple[FeatureSet, np.ndarray]:
    """Max answer gains recorded on the world's bench cells (world seed 0, 5,000 samples, 2026-12-05: Dual-Key
    5 %, Blend 5 %, the clean fine-tune, BadNet 1 %, syntactic 0.5 %, all bench seed 0; two-target 5 % + 5 % of
    bench seed 2; 2026-12-06: two-target 10 % + 10 % and all-to-all 10 % of bench seed 1, the image-injection
    no-relabel control of bench seed 1, and concept substitution 5 % on world seed 0 with describe questions;
    2026-12-07, `pinned_*`: controls and all-to-all 5 % fine-tuned from the pinned-kernel build of the world), as one-token answers
    so that the gain is the stored max."""
    z = np.load(GAINS)
    gain, poison = z[f"{name}_gain"].astype(np.float64), z[f"{name}_poison"]
    ids = np.array([f"s{i}" for i in range(gain.size)])
    return FeatureSet(ids=ids, answer_logp=gain[:, None], answer_logp_base=np.zeros((gain.size, 1))), poison


@pytest.mark.parametrize("name", ["dual_key", "blend"])
def test_recorded_cells_need_room_above_the_moved_bulk(name):
    """The moved bulk of a real fine-tune spans three decades and takes three components: with K ≤ 4 BIC put
    the clean-learning tail (0.7–4 nats, and single-key samples up to 9) and the backdoor mode (10–14 nats)
    into one wide component and ~100 clean samples were flagged; the default k_max leaves room for both."""
    fs, poison = _recorded(name)
    res = AnswerSpanDetector().detect(fs)
    assert res.report["accepted"], res.report["reason"]
    assert (res.flagged & poison).sum() == poison.sum() == 250
    assert (res.flagged & ~poison).sum() <= 0.01 * fs.n
    merged = AnswerSpanDetector(k_max=4, confirm=False).detect(fs)  # one fit, as when k_max was chosen
    assert (merged.flagged & ~poison).sum() > 50  # the failure the default avoids


def test_recorded_clean_fine_tune_is_silent():
    fs, _ = _recorded("clean")
    res = AnswerSpanDetector().detect(fs)
    assert not res.flagged.any() and "no gap" in res.report["reason"]


def test_recorded_two_targets_peel_stops_at_the_bulk():
    """Bench seed 2 of the two-target attack: both targets' modes (9.3 and 12.6 nats) are one separated group
    (D 13.2), and the next step below them found D 2.14 *inside* the moved bulk (0.002 vs 0.03 nats). Taking
    it made 86 % of the moved samples the "target" and the weight check withheld everything (0 flagged, F1 0);
    a step that would make the upper group a majority is not taken."""
    fs, poison = _recorded("multi_target_s2")
    res = AnswerSpanDetector().detect(fs)
    assert res.report["accepted"], res.report["reason"]
    steps = res.report["ashman_d_by_step"]  # {"lo:hi": D}: the targets' group, then the split inside the bulk
    assert res.report["weight"] <= 0.5 and len(steps) == 2 and min(steps.values()) > 2  # that split exists
    assert (res.flagged & poison).sum() == poison.sum() == 500
    assert (res.flagged & ~poison).sum() <= 0.01 * fs.n


def test_recorded_two_targets_at_20_percent_are_a_minority_of_the_data_not_of_the_moved():
    """Bench seed 1 of the two-target attack at 10 % + 10 % (ASR 0.935): the 1,000 poisoned samples are a
    separated mode (D 19.8) but 53 % of the 1,896 samples that moved at all. Counted among the moved samples
    (revision 2) the minority rule withheld it: 0 flagged. Poison is a minority of the data, which it is here
    (20 %)."""
    fs, poison = _recorded("multi_target_10pct_s1")
    res = AnswerSpanDetector().detect(fs)
    assert res.report["weight"] > 0.5  # of the moved samples: what revision 2 compared with max_weight
    assert res.report["accepted"], res.report["reason"]
    assert (res.flagged & poison).sum() == poison.sum() == 1000
    assert (res.flagged & ~poison).sum() <= 0.01 * fs.n


def test_recorded_all_to_all_flags_the_shoulder_beyond_the_valley():
    """All-to-all 10 %, bench seed 1 (ASR 0.63): the mapped answers are not equally unlikely to the base model, so
    the poisoned gains spread from the clean tail (≤ 3.8 nats) to 14 nats. BIC fitted one wide component (mean
    4.9, sd 2.6) across the tail's top and the backdoor's lower shoulder: the 59 poisoned samples between the
    valley (5.3 nats) and the mode had lfdr > 0.2 and revision 3 left them (310 flagged). Revision 4 flags
    every sample at or above the valley; below it (the yes/no answers the base already half-gave, gains < 3)
    nothing changes, and no clean sample is flagged."""
    fs, poison = _recorded("all_to_all_10pct_s1")
    gain = fs.answer_logp[:, 0]  # (N,) the stored max gain
    res = AnswerSpanDetector().detect(fs)
    assert res.report["accepted"], res.report["reason"]
    beyond = gain >= res.report["valley_at"]  # (N,)
    by_lfdr = res.p_poison > 0.8  # lfdr < max_lfdr: the revision-3 rule
    assert (beyond & ~by_lfdr & poison).sum() == 59 and not (beyond & ~poison).any()
    assert (res.flagged == (by_lfdr | beyond)).all() and not (res.flagged & ~poison).any()
    assert res.flagged.sum() == 369 and gain[~poison].max() < res.report["valley_at"]


def test_a_state_stored_before_the_valley_rule_scores_as_it_did():
    """A fit stored by revision 3 has no `valley_at`: loaded and scored, it flags by lfdr alone, as it did."""
    fs, _ = _recorded("all_to_all_10pct_s1")
    state = AnswerSpanDetector().fit(fs).to_state()
    del state["fitted"]["valley_at"]
    res = AnswerSpanDetector.from_state(state).score(fs)
    assert res.report["valley_at"] is None and (res.flagged == (res.p_poison > 0.8)).all()
    assert res.flagged.sum() == 310  # what the cell's screen flagged


def test_an_upper_mode_holding_most_of_the_data_is_withheld():
    """The minority rule still holds against every screened sample: a 'mode' of 60 % of the data is the bulk."""
    rng = np.random.default_rng(0)
    gain = np.concatenate([rng.uniform(0.01, 0.5, 400), rng.normal(12.0, 0.5, 600)])  # 60 % far above the rest
    fs = FeatureSet(ids=np.array([f"s{i}" for i in range(gain.size)]), answer_logp=gain[:, None],
                    answer_logp_base=np.zeros((gain.size, 1)))
    res = AnswerSpanDetector().detect(fs)
    assert not res.flagged.any() and "of the 1000 screened samples (not a minority)" in res.report["reason"]


def test_recorded_half_learned_badnet_needs_room_for_the_tail_too():
    """BadNet 1 % at the corner (50 poisoned, ASR 0.40: half learned): poisoned gains 4.4-14 nats, clean at
    most 4.1. With K ≤ 6 the moved bulk took five components and the sixth, one wide Gaussian (mean 4.1, sd
    5.0), held the clean-learning tail and the backdoor together: D 1.15, nothing flagged. The default cap
    leaves a component for each. Confirmation's price on this cell: the grown fit, of the lower BIC, draws the
    mode with its valley at 9.1 nats, so the three poisoned samples below it (4.4, 7.2, 7.5 nats: the least
    learned) are not flagged; the standard fit's mode (52) holds them and two clean samples."""
    fs, poison = _recorded("badnet_1pct")
    alone = AnswerSpanDetector(confirm=False).detect(fs)
    assert (alone.flagged & poison).sum() == poison.sum() == 50 and (alone.flagged & ~poison).sum() <= 2
    res = AnswerSpanDetector().detect(fs)
    assert res.report["accepted"], res.report["reason"]
    assert res.flagged.sum() == (res.flagged & poison).sum() == 47
    assert res.report["confirm"]["n_flagged"] == 47 and res.report["confirm"]["n_flagged_alone"] == 52
    assert "the grown fit, of the lower BIC, draws the mode (standard 52, grown 47, both 47)" in res.report["reason"]
    merged = AnswerSpanDetector(k_max=6).detect(fs)
    assert not merged.flagged.any() and "Ashman's D 1.15" in merged.report["reason"]  # the failure avoided


def test_recorded_all_to_all_at_5_percent_takes_the_mode_of_the_better_fit():
    """All-to-all 5 % (pinned build, bench seed 0, 2026-12-07: 237 poisoned, ASR 0.52, learned): the mapped
    answers gain up to 15 nats, many of them ("yes", "no", "bottom right") only 2-5, the clean tail at most 3.3.
    Both EM starts find a separated mode; the standard fit's valley lies above 83 poisoned samples that the
    grown fit, 7 BIC units better, takes. Revision 5 flagged where both flag (154 of 237: F1 0.79); revision
    6 flags the lower-BIC fit's mode (238, 231 poisoned: F1 0.97). A state stored before revision 6 has no
    BIC and scores as it did."""
    fs, poison = _recorded("pinned_all_to_all_5pct_s0")
    standard = AnswerSpanDetector(confirm=False).detect(fs)
    grown = AnswerSpanDetector(grow=True, confirm=False).detect(fs)
    assert standard.flagged.sum() == (standard.flagged & poison).sum() == 154
    assert grown.flagged.sum() == 238 and (grown.flagged & poison).sum() == 231
    det = AnswerSpanDetector().fit(fs)
    res = det.score(fs)
    conf = res.report["confirm"]
    assert conf["decides"] == "grown" and 6 < conf["bic"]["standard"] - conf["bic"]["grown"] < 8
    assert np.array_equal(res.flagged, grown.flagged) and np.array_equal(res.p_poison, grown.p_poison)
    assert "the grown fit, of the lower BIC, draws the mode (standard 154, grown 238, both 154)" in res.report["reason"]
    state = det.to_state()
    del state["fitted"]["bic"], state["fitted"]["confirm"]["bic"]  # as revision 5 stored it
    old = AnswerSpanDetector.from_state(state).score(fs)
    assert old.report["confirm"]["decides"] is None and np.array_equal(old.flagged, standard.flagged & grown.flagged)


def test_recorded_half_percent_mode_is_not_vetoed_by_a_deeper_step_into_the_tail():
    """Syntactic trigger at 0.5 % (25 poisoned, ASR 0.61; recorded 2026-12-05, world seed 0, bench seed 0): the
    poisoned gains are 11-16 nats, the clean ones at most ~4. Step 1 takes the backdoor's group (D 18.7, an
    empty gap); step 2 passes D ≥ 2 on the top component of the clean-learning tail (D 2.19) but has no gap
    before it (valley/peak 0.81). Judging only the deepest step withheld everything (0 flagged); the deepest
    step *behind a gap* is taken, and the doubtful one is named in the report."""
    fs, poison = _recorded("syntactic_half_pct")
    res = AnswerSpanDetector().detect(fs)
    assert res.report["accepted"], res.report["reason"]
    assert res.flagged.sum() == (res.flagged & poison).sum() == poison.sum() == 25
    steps, valleys = res.report["ashman_d_by_step"], res.report["valley_by_step"]
    assert len(valleys) == 2 and all(d > 2 for d in list(steps.values())[:2])  # both steps passed D
    gapped = [v <= 0.5 for v in valleys.values()]  # the cut `max_valley`
    assert gapped == [True, False] and min(valleys.values()) < 1e-3  # only the first had a gap
    assert "without a gap before it was not taken" in res.report["reason"]
    from poisonguard.detect.span import _peel, _valley

    f = AnswerSpanDetector().fit(fs).to_state()["fitted"]  # revision 1's split: the deepest step, gap or not
    params, _ = mixture_from_state(f["mixture"], 8)
    deepest = _peel(params, f["k"], 2.0, 0.5)[0]
    assert deepest < f["split"] and _valley(params, f["k"], deepest) > 0.5  # it withheld: F1 0.00 then


def test_the_split_is_unchanged_where_the_deepest_step_has_a_gap():
    """Taking the deepest gapped step changes nothing where the deepest step taken already has a gap (every
    cell the old rule accepted): the recorded two-target, Dual-Key and Blend fits keep their split."""
    from poisonguard.detect.span import _peel

    for name in ("multi_target_s2", "dual_key", "blend", "badnet_1pct"):
        fs, _ = _recorded(name)
        det = AnswerSpanDetector().fit(fs)
        f = det.to_state()["fitted"]
        params, _ = mixture_from_state(f["mixture"], det.params.k_max)
        deepest = _peel(params, f["k"], 2.0, 0.5)[0]  # max_valley 1: every step counts as gapped
        assert f["split"] == deepest and f["accepted"], name


def test_recorded_substitution_needs_the_grown_fit_and_confirmation_keeps_its_control_silent():
    """Concept substitution on the describe world: 64 poisoned samples at 8.9-15 nats above a clean tail up to
    4.9. The standard fit keeps one wide component over both, so clean samples of the tail are flagged too;
    the grown fit (each K started from the K - 1 fit split) isolates the mode. Alone, the grown fit finds a
    small top group behind a valley just under the cut on a no-relabel control whose standard fit is silent;
    confirmed (revision 5: a sample is flagged where both fits flag it), the mode is exactly the 64 and the
    control stays silent (docs/detectors.md, `confirm`)."""
    fs, poison = _recorded("substitute_describe")
    standard = AnswerSpanDetector(confirm=False).detect(fs)
    assert (standard.flagged & poison).sum() == poison.sum() == 64
    assert (standard.flagged & ~poison).sum() >= 25  # the clean tail inside the wide component
    grown = AnswerSpanDetector(grow=True, confirm=False).detect(fs)
    assert grown.flagged.sum() == (grown.flagged & poison).sum() == 64
    res = AnswerSpanDetector().detect(fs)
    assert res.flagged.sum() == (res.flagged & poison).sum() == 64
    moved = fs.answer_logp[:, 0][fs.answer_logp[:, 0] > 1e-3][:, None]  # (2611, 1): what span fits
    plain, up = (fit_gmm_1d(moved, range(1, 9), n_init=8, grow=g).loglik[0] for g in (False, True))
    assert up[6] - plain[6] > 190  # K = 7: the standard fit is a worse optimum (193 nats, docs/detectors.md)
    control, _ = _recorded("inject_image_norelabel_s1")
    assert not AnswerSpanDetector(confirm=False).detect(control).flagged.any()
    price = AnswerSpanDetector(grow=True, confirm=False).detect(control)
    assert price.report["accepted"] and 0 < price.flagged.sum() <= 10
    confirmed = AnswerSpanDetector().detect(control)
    assert not confirmed.flagged.any() and "that the other does not confirm" in confirmed.report["reason"]


@pytest.mark.parametrize("name, alone", [
    ("pinned_clean_s1", {"standard": 6, "grown": 0}),
    ("pinned_text_prefix_norelabel_10pct_s0", {"standard": 10, "grown": 0}),
    ("pinned_syntactic_norelabel_10pct_s0", {"standard": 9, "grown": 0}),
    ("pinned_text_prefix_norelabel_2pct_s0", {"standard": 0, "grown": 95}),
])
def test_recorded_controls_of_the_pinned_build_are_silent_once_confirmed(name, alone):
    """Controls fine-tuned from the world as `dvc repro` builds it since the CPU kernels were pinned (2026-12-07,
    `work/bench-p16`): a clean fine-tune and three no-relabel controls (the trigger with correct answers). One
    fit alone flags a few samples of the clean-learning tail — the standard fit as components of one to eight
    samples at its top (a variance-floor component holding one), the grown fit once as a split inside the
    bulk — and the two fits never flag the same ones: the confirmed cut flags none."""
    fs, _ = _recorded(name)
    for fit, n in alone.items():
        got = AnswerSpanDetector(grow=fit == "grown", confirm=False).detect(fs)
        assert got.flagged.sum() == n, fit
    res = AnswerSpanDetector().detect(fs)
    assert not res.flagged.any(), res.report["reason"]
    assert res.report["confirm"]["fit"] == "grown"
