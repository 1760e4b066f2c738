"""The Dawid–Skene vote of `em_vote` takes the answer-span detector as an annotator beside shift: on a drop
where both see the same poisoned minority the vote flags it, and a detector that did not run is skipped."""

from __future__ import annotations

import numpy as np

from poisonguard.detect import DecisionShiftDetector, FeatureSet
from poisonguard.detect.span import AnswerSpanDetector
from poisonguard.pipeline.config import VoteConfig
from poisonguard.pipeline.vote import vote
from tests.detect.test_shift import _states
from tests.detect.test_span import N as N_SPAN
from tests.detect.test_span import _world


def test_span_is_a_default_annotator_and_votes_with_shift():
    assert VoteConfig().annotators[:2] == ("shift", "span")
    shift_fs, shift_poison = _states(poison_rate=0.05, seed=3)
    k, n = int(shift_poison.sum()), shift_fs.n
    span_fs, poison = _world(rate=k / N_SPAN, seed=3)
    assert poison.sum() == k
    # one drop of n samples: the first k are poisoned in both worlds (decision states and answers)
    order = np.r_[np.flatnonzero(shift_poison), np.flatnonzero(~shift_poison)]
    take = np.r_[np.flatnonzero(poison), np.flatnonzero(~poison)][:n]
    fs = FeatureSet(ids=span_fs.ids[take], answer_logp=span_fs.answer_logp[take],
                    answer_logp_base=span_fs.answer_logp_base[take], hidden=shift_fs.hidden[order][:n],
                    hidden_base=shift_fs.hidden_base[order][:n])
    truth = np.zeros(n, dtype=bool)
    truth[:k] = True
    results = {"shift": DecisionShiftDetector().detect(fs), "span": AnswerSpanDetector().detect(fs)}
    fused = vote(results, fs, VoteConfig())
    assert fused.report["annotators"] == ["shift", "span"]  # fused and projector did not run: skipped
    assert (fused.flagged & truth).sum() >= 0.95 * k and (fused.flagged & ~truth).sum() <= 0.01 * n
