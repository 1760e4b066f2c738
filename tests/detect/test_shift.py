"""Decision-shift detector on synthetic decision states: a minority moved to one target is flagged, the
controls (clean drift, a base-model screen, a changed-but-unseparated tail) stay silent, the state carries over."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from poisonguard.detect import DecisionShiftDetector, FeatureSet, load_detector
from poisonguard.detect.shift import decision_shift

N, D = 2000, 32


def _states(poison_rate: float = 0.1, seed: int = 0, target_move: float = 18.0, one_answer: bool = True):
    """Base states (N, D); fine-tuned = base + the fine-tune's general drift (per-sample size log-normal around
    3.5, as the world's clean fine-tune shows). A learned backdoor (`one_answer`) puts the poisoned samples'
    fine-tuned states at one target state, `target_move` away from the base mean, plus a little noise;
    otherwise each poisoned sample moves `target_move` in its own random direction."""
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 1, (N, D))
    size = np.exp(rng.normal(np.log(3.5), 0.3, N))  # (N,)
    ft = base + rng.normal(0, 1, (N, D)) * (size / np.sqrt(D))[:, None]
    poison = np.zeros(N, dtype=bool)
    poison[rng.choice(N, int(round(poison_rate * N)), replace=False)] = True
    n_p = int(poison.sum())
    if one_answer:
        target = rng.normal(0, 1, D)
        ft[poison] = target_move * target / np.linalg.norm(target) + rng.normal(0, 0.5, (n_p, D))
    else:
        away = rng.normal(0, 1, (n_p, D))
        ft[poison] = base[poison] + target_move * away / np.linalg.norm(away, axis=1, keepdims=True)
    ids = np.array([f"s{i}" for i in range(N)])
    return FeatureSet(ids=ids, hidden=ft, hidden_base=base), poison


def test_shifted_minority_is_flagged_with_a_calibrated_cut():
    fs, poison = _states()
    res = DecisionShiftDetector().detect(fs)
    assert res.report["accepted"] and res.report["separation"] >= 3
    assert (res.flagged == poison).mean() >= 0.99
    assert abs(res.report["weight"] - poison.mean()) < 0.02
    assert "separated minority" in res.report["reason"]
    np.testing.assert_allclose(res.signals["score_shift"], decision_shift(fs.hidden, fs.hidden_base), rtol=1e-6)


@pytest.mark.parametrize("rate", [0.0, 0.02, 0.05])
def test_clean_data_and_small_rates(rate):
    """0 %: nothing flagged; 2 % and 5 %: the minority still found (the weight floor is 0.2 %)."""
    fs, poison = _states(poison_rate=rate, seed=3)
    res = DecisionShiftDetector().detect(fs)
    if rate == 0:
        assert res.flagged.sum() == 0 and not res.report["accepted"]
        assert res.report["reason"].startswith("nothing flagged")
    else:
        assert (res.flagged & poison).sum() >= 0.97 * poison.sum()
        assert (res.flagged & ~poison).sum() <= 0.01 * N


def test_base_model_control_flags_nothing():
    """Screening with the base model as the fine-tuned one: every shift is 0."""
    fs, _ = _states()
    same = FeatureSet(ids=fs.ids, hidden=fs.hidden_base, hidden_base=fs.hidden_base)
    res = DecisionShiftDetector().detect(same)
    assert res.flagged.sum() == 0 and res.p_poison.max() == 0
    assert "identical" in res.report["reason"]


def test_weak_move_is_withheld_by_the_separation_guard():
    """A minority that moved about as much as the bulk (an unlearned trigger) is not a separated mode."""
    fs, _ = _states(target_move=1.5, one_answer=False)
    res = DecisionShiftDetector().detect(fs)
    assert res.flagged.sum() == 0 and "separation" in res.report["reason"]


def test_large_moves_to_many_answers_are_withheld_by_the_spread_guard():
    """A separated minority whose states do not converge (each sample changed its own way) is no backdoor."""
    fs, _ = _states(one_answer=False)
    res = DecisionShiftDetector().detect(fs)
    assert res.flagged.sum() == 0
    assert "do not converge to one answer" in res.report["reason"]
    assert res.report["separation"] >= 3  # it would have passed on separation alone


def test_state_round_trip_scores_new_data_alike():
    fs, poison = _states()
    det = DecisionShiftDetector(min_separation=2.5).fit(fs)
    again = load_detector(json.loads(json.dumps(det.to_state())))
    assert again.params.min_separation == 2.5
    new, _ = _states(seed=5)
    np.testing.assert_array_equal(det.score(new).flagged, again.score(new).flagged)
    np.testing.assert_allclose(det.score(new).p_poison, again.score(new).p_poison)


def test_needs_both_states_and_matching_shapes():
    fs, _ = _states()
    with pytest.raises(ValueError, match="hidden_base"):
        DecisionShiftDetector().fit(FeatureSet(ids=fs.ids, hidden=fs.hidden))
    with pytest.raises(ValueError, match="hidden_base needs hidden of the same shape"):
        FeatureSet(ids=fs.ids, hidden=fs.hidden, hidden_base=fs.hidden_base[:, :5])
    with pytest.raises(ValueError, match="max_weight"):
        DecisionShiftDetector(max_weight=0.9)


def test_a_changed_minority_of_one_question_type_is_withheld_by_the_stratum_lift():
    """Fine-tuning that moves one kind of question to one answer (a clean change, not a trigger) is confined to
    one label-free stratum; a trigger spreads over the strata in proportion."""
    fs, poison = _states(poison_rate=0.01, seed=4)
    rng = np.random.default_rng(0)
    strata = rng.integers(0, 8, N)
    strata[poison] = 3  # every moved sample asks the same kind of question
    res = DecisionShiftDetector().detect(replace(fs, strata=strata))
    assert res.flagged.sum() == 0 and "one kind of question" in res.report["reason"]
    spread_out = DecisionShiftDetector().detect(replace(fs, strata=rng.integers(0, 8, N)))
    assert (spread_out.flagged == poison).mean() > 0.99 and spread_out.report["stratum_lift"] < 3
