"""Binary Dawid–Skene EM recovers planted annotator quality and the latent labels."""

from __future__ import annotations

import numpy as np
import pytest

from poisonguard.detect.em import dawid_skene, dawid_skene_posterior

SENS = np.array([0.9, 0.8, 0.7, 0.95, 0.6])
SPEC = np.array([0.95, 0.9, 0.99, 0.8, 0.97])


def _planted(n: int = 20000, rho: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.random(n) < rho
    p_vote = np.where(z[:, None], SENS, 1 - SPEC)  # (N, A)
    return (rng.random(p_vote.shape) < p_vote).astype(float), z


def test_recovers_planted_sensitivity_specificity_and_prior():
    votes, z = _planted()
    ds = dawid_skene(votes)
    assert ds.converged
    np.testing.assert_allclose(ds.sensitivity, SENS, atol=0.02)
    np.testing.assert_allclose(ds.specificity, SPEC, atol=0.01)
    assert ds.prior == pytest.approx(z.mean(), abs=0.005)
    assert ((ds.p > 0.5) == z).mean() > 0.99


def test_beats_majority_vote_when_annotators_differ():
    """Two reliable annotators and three noisy ones: EM learns to trust the reliable pair."""
    rng = np.random.default_rng(1)
    z = rng.random(20000) < 0.1
    sens, spec = np.array([0.95, 0.9, 0.6, 0.6, 0.6]), np.array([0.99, 0.98, 0.7, 0.7, 0.7])
    votes = (rng.random((z.size, 5)) < np.where(z[:, None], sens, 1 - spec)).astype(float)
    majority = votes.mean(1) > 0.5
    ds = dawid_skene(votes)
    assert ((ds.p > 0.5) != z).sum() < 0.5 * (majority != z).sum()


def test_missing_votes_are_abstentions():
    votes, _ = _planted(seed=2)
    rng = np.random.default_rng(3)
    mask = (rng.random(votes.shape) > 0.3).astype(float)
    votes_nan = np.where(mask > 0, votes, np.nan)
    ds = dawid_skene(votes_nan, mask)
    np.testing.assert_allclose(ds.sensitivity, SENS, atol=0.03)
    np.testing.assert_allclose(ds.specificity, SPEC, atol=0.015)
    # a sample nobody voted on gets the prior
    p = dawid_skene_posterior(np.zeros((1, 5)), ds.prior, ds.sensitivity, ds.specificity, np.zeros((1, 5)))
    assert p[0] == pytest.approx(ds.prior)


def test_soft_votes_are_fractional_counts():
    """A soft vote v weighs the two hard-vote log-likelihood ratios by v and 1 − v: log-odds linear in v."""
    v = np.linspace(0, 1, 5)[:, None]
    p = dawid_skene_posterior(v, 0.2, np.array([0.9]), np.array([0.8]))
    logit = np.log(p / (1 - p))
    np.testing.assert_allclose(np.diff(logit), np.diff(logit)[0])
    assert p[0] == pytest.approx(0.2 * 0.1 / (0.2 * 0.1 + 0.8 * 0.8))  # hard 0: Bayes with s = 0.9, t = 0.8


def test_posterior_function_reproduces_the_fit():
    votes, _ = _planted(n=3000, seed=5)
    ds = dawid_skene(votes)
    np.testing.assert_allclose(dawid_skene_posterior(votes, ds.prior, ds.sensitivity, ds.specificity), ds.p)


def test_smoothing_keeps_degenerate_annotators_off_zero_and_one():
    votes = np.zeros((100, 2))
    votes[:10] = 1.0  # two perfectly agreeing annotators
    ds = dawid_skene(votes, smoothing=1.0)
    assert np.all((ds.sensitivity > 0) & (ds.sensitivity < 1))
    assert np.all((ds.specificity > 0) & (ds.specificity < 1))
    assert (ds.p > 0.5).sum() == 10


@pytest.mark.parametrize(
    "votes, kwargs",
    [
        (np.zeros((5, 0)), {}),
        (np.full((5, 2), 2.0), {}),
        (np.zeros(5), {}),
        (np.zeros((5, 2)), {"init": "random"}),
        (np.zeros((5, 2)), {"mask": np.ones((5, 3))}),
    ],
)
def test_bad_input_raises(votes, kwargs):
    with pytest.raises(ValueError):
        dawid_skene(votes, **kwargs)
