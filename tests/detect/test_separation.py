"""Target/background split, overlap and separation score on mixtures with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy import integrate
from scipy.stats import norm

from poisonguard.detect.gmm import GMMParams, posterior
from poisonguard.detect.separation import (
    group_weight,
    overlap,
    separation_score,
    standardised_separation,
    target_mask,
    target_posterior,
)


def _params(weights, means, variances) -> GMMParams:
    w = np.atleast_2d(np.asarray(weights, dtype=float))
    k = (w > 0).sum(1)
    return GMMParams(
        w, np.atleast_2d(np.asarray(means, float)), np.atleast_2d(np.asarray(variances, float)), k
    )


def test_cumulative_rule_takes_light_components_below_half():
    p = _params([[0.05, 0.6, 0.15, 0.2, 0.0]], [[0, 1, 2, 3, 0]], [[1, 1, 1, 1, 1]])
    # ascending weight: 0.05, 0.15, 0.2 (cum 0.4 < 0.5), then 0.6 stops; the padded slot never joins
    assert target_mask(p, "cumulative").tolist() == [[True, False, True, True, False]]
    assert target_mask(p, "smallest").tolist() == [[True, False, False, False, False]]
    assert group_weight(p, target_mask(p)).tolist() == pytest.approx([0.4])


def test_single_component_and_even_split_have_no_target():
    p = _params([[1.0, 0.0], [0.5, 0.5]], [[0, 0], [0, 1]], [[1, 1], [1, 1]])
    assert not target_mask(p, "cumulative").any()
    ss = separation_score(p, target_mask(p), overlap(p, target_mask(p)))
    assert ss.tolist() == [0.0, 0.0]  # K* = 1 → SS 0, as the paper's gate; no proper minority → 0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0.01, 1.0), min_size=2, max_size=5))
@example([1.0, 0.5, 0.8682560793020538, 0.5, 0.8682560793020538])  # a target of one half, to the last bit
def test_cumulative_target_is_a_minority_containing_the_lightest(raw):
    w = np.asarray(raw) / np.sum(raw)
    p = _params([w], [np.arange(w.size)], [np.ones(w.size)])
    t = target_mask(p, "cumulative")[0]
    # Summed lightest first, as the rule sums: in index order a target of exactly one half can round up one ulp
    # (the example above: 0.5 in index order, 0.49999999999999994 lightest first).
    assert (np.cumsum(np.sort(w[t]))[-1] if t.any() else 0.0) < 0.5
    if w.min() < 0.5:
        assert t[np.argmin(w)]


def test_overlap_matches_numerical_integral():
    w, mu, sd = np.array([0.1, 0.9]), np.array([0.7, 0.4]), np.array([0.05, 0.1])
    p = _params([w], [mu], [sd**2])
    target = target_mask(p)
    assert target.tolist() == [[True, False]]

    def low(x: float) -> float:
        return min(w[0] * norm.pdf(x, mu[0], sd[0]), w[1] * norm.pdf(x, mu[1], sd[1]))

    ref, _ = integrate.quad(low, -1, 2, points=[0.6, 0.65], limit=200)
    assert overlap(p, target)[0] == pytest.approx(ref, rel=1e-4)


def test_identical_groups_overlap_is_the_minority_weight():
    """f_T = w_T φ, f_B = w_B φ → ∫min = w_T: SS ≈ 1/(w_T + ε) (weighted, not renormalised, densities)."""
    p = _params([[0.2, 0.8]], [[0.5, 0.5]], [[0.01, 0.01]])
    t = target_mask(p)
    assert overlap(p, t)[0] == pytest.approx(0.2, rel=1e-6)
    assert separation_score(p, t, overlap(p, t), eps=1e-6)[0] == pytest.approx(1 / (0.2 + 1e-6), rel=1e-5)


def test_separated_components_score_high_and_ranks_follow_separation():
    far = _params([[0.1, 0.9]], [[0.9, 0.2]], [[0.02**2, 0.05**2]])
    near = _params([[0.1, 0.9]], [[0.35, 0.2]], [[0.05**2, 0.05**2]])
    ss = [separation_score(p, target_mask(p), overlap(p, target_mask(p)))[0] for p in (far, near)]
    assert ss[0] > 1e4  # overlap ~ 0 → SS ~ 1/ε scale
    assert 1 < ss[1] < 100
    np.testing.assert_allclose(
        standardised_separation(far, target_mask(far)), 0.7 / np.sqrt((0.02**2 + 0.05**2) / 2)
    )


def test_overlap_batched_over_columns_with_per_column_grid():
    p = _params([[0.2, 0.8], [0.3, 0.7]], [[0.5, 0.5], [3.0, 3.0]], [[0.01, 0.01], [1.0, 1.0]])
    ov = overlap(p, target_mask(p), lo=np.array([-0.5, -10.0]), hi=np.array([1.5, 16.0]), n_grid=8001)
    np.testing.assert_allclose(ov, [0.2, 0.3], rtol=1e-5)


def test_target_posterior_sums_target_responsibilities():
    p = _params([[0.1, 0.3, 0.6]], [[0.0, 1.0, 2.0]], [[0.1, 0.1, 0.1]])
    t = target_mask(p)  # 0.1 + 0.3 = 0.4 < 0.5
    x = np.linspace(-1, 3, 9)[:, None]
    resp = posterior(x, p)[:, 0, :]
    np.testing.assert_allclose(target_posterior(x, p, t)[:, 0], resp[:, 0] + resp[:, 1])
