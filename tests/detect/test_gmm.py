"""The batched 1-D GMM against sklearn's GaussianMixture on the same data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.mixture import GaussianMixture

from poisonguard.detect import gmm
from poisonguard.detect.gmm import GMMParams, fit_gmm_1d, log_likelihood, posterior

N = 1200
FIT = {"tol": 1e-6, "max_iter": 500, "n_init": 3}  # the same stopping rule and restarts as the sklearn fits


def _columns(rng: np.random.Generator) -> np.ndarray:
    """Three clearly separated columns with 1, 2 and 3 true components."""
    one = rng.normal(5.0, 2.0, N)
    two = np.r_[rng.normal(0.0, 1.0, 960), rng.normal(8.0, 0.5, 240)]
    three = np.r_[rng.normal(0.2, 0.02, 600), rng.normal(0.5, 0.03, 400), rng.normal(0.9, 0.02, 200)]
    return np.stack([rng.permutation(c) for c in (one, two, three)], axis=1)  # (N, 3)


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return _columns(np.random.default_rng(0))


@pytest.fixture(scope="module")
def fit(data: np.ndarray):
    return fit_gmm_1d(data, **FIT)


@pytest.fixture(scope="module")
def sk_fits(data: np.ndarray) -> list[list[GaussianMixture]]:
    return [
        [
            GaussianMixture(k, n_init=3, tol=1e-6, max_iter=500, random_state=0).fit(data[:, [j]])
            for k in range(1, 6)
        ]
        for j in range(data.shape[1])
    ]


def test_loglik_per_sample_matches_sklearn(data, fit, sk_fits):
    for j, fits in enumerate(sk_fits):
        sk = np.array([g.score(data[:, [j]]) for g in fits])  # mean log-likelihood per sample
        mine = fit.loglik[j] / N
        # Up to the true K both reach the same optimum. Over-fitted K has a flat likelihood with many local
        # optima: there we only ask not to be worse than sklearn by more than 2e-3 nats per sample.
        np.testing.assert_allclose(mine[: j + 1], sk[: j + 1], atol=1e-5)
        assert np.all(mine[j + 1 :] > sk[j + 1 :] - 2e-3), (j, mine, sk)


def test_same_k_star_as_sklearn_by_bic(data, fit, sk_fits):
    sk_k = [1 + int(np.argmin([g.bic(data[:, [j]]) for g in fits])) for j, fits in enumerate(sk_fits)]
    assert fit.k_star("bic").tolist() == sk_k == [1, 2, 3]


def test_aic_k_star_is_at_least_as_good_as_sklearns(data, fit, sk_fits):
    """AIC's penalty (2 per parameter) is smaller than the likelihood an over-fitted extra component often
    gains, so its K* depends on which local optimum EM reaches. Ours never misses the true K and, where it
    differs from sklearn's choice, reaches a lower AIC."""
    for j, fits in enumerate(sk_fits):
        sk_aic = np.array([g.aic(data[:, [j]]) for g in fits])
        assert fit.k_star("aic")[j] >= j + 1
        assert fit.aic[j].min() <= sk_aic.min() + 1e-6


def test_aic_bic_follow_sklearn_definitions(data, fit, sk_fits):
    for j, fits in enumerate(sk_fits):
        sk_aic = np.array([g.aic(data[:, [j]]) for g in fits])
        sk_bic = np.array([g.bic(data[:, [j]]) for g in fits])
        np.testing.assert_allclose(fit.aic[j, : j + 1], sk_aic[: j + 1], atol=1e-2)
        np.testing.assert_allclose(fit.bic[j] - fit.aic[j], sk_bic - sk_aic, rtol=1e-12)


def test_parameters_match_sklearn_up_to_permutation(data, fit, sk_fits):
    sel = fit.select("bic")
    for j, fits in enumerate(sk_fits):
        k = int(sel.k[j])
        g = fits[k - 1]
        order = np.argsort(g.means_[:, 0])  # ours are sorted by mean
        scale = data[:, j].std()
        np.testing.assert_allclose(sel.weights[j, :k], g.weights_[order], atol=5e-3)
        np.testing.assert_allclose(sel.means[j, :k], g.means_[order, 0], atol=5e-3 * scale)
        np.testing.assert_allclose(sel.variances[j, :k], g.covariances_[order, 0, 0], rtol=2e-2)
        assert np.all(sel.weights[j, k:] == 0)


def test_compressed_em_matches_exact_em():
    """N > n_blocks runs EM on equal-count blocks; it must land where exact EM does."""
    rng = np.random.default_rng(1)
    n = 6000
    x = np.stack(
        [
            np.r_[rng.normal(0, 1, n - 600), rng.normal(5, 0.3, 600)],
            np.r_[rng.normal(0.3, 0.01, n - 60), rng.normal(0.8, 0.05, 60)],  # narrow bulk, 1% minority
        ],
        axis=1,
    )
    exact = fit_gmm_1d(x, (1, 2, 3), n_blocks=n, tol=1e-6)
    blocks = fit_gmm_1d(x, (1, 2, 3), n_blocks=256, tol=1e-6)
    assert blocks.k_star("bic").tolist() == exact.k_star("bic").tolist() == [2, 2]
    np.testing.assert_allclose(blocks.loglik / n, exact.loglik / n, atol=1e-4)
    np.testing.assert_allclose(blocks.at(2).means, exact.at(2).means, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(blocks.at(2).variances, exact.at(2).variances, rtol=1e-2)


def test_deterministic_and_independent_of_chunking(data):
    a = fit_gmm_1d(data, seed=3)
    b = fit_gmm_1d(data, seed=3, chunk_size=1)
    np.testing.assert_array_equal(a.k_star(), b.k_star())
    np.testing.assert_allclose(a.loglik, b.loglik, rtol=1e-10)


def test_reported_loglik_is_the_data_loglik_under_the_fit(data):
    fit = fit_gmm_1d(data, (1, 2, 3))
    for k in (1, 2, 3):
        params = fit.at(k)
        np.testing.assert_allclose(log_likelihood(data, params).sum(0), fit.loglik[:, k - 1], rtol=1e-9)
        resp = posterior(data, params)  # (N, M, Kmax)
        np.testing.assert_allclose(resp.sum(-1), 1.0)
        assert np.all(resp[:, :, k:] == 0)


def test_variance_floor_on_constant_column():
    x = np.c_[np.full(50, 3.0), np.arange(50.0)]
    fit = fit_gmm_1d(x, (1, 2), reg_covar=1e-4)
    assert np.all(fit.variances[0, :, :1] >= 1e-4)
    assert np.all(np.isfinite(fit.loglik))
    assert fit.k_star("bic")[0] == 1


@pytest.mark.parametrize(
    "x, kwargs",
    [
        (np.array([1.0, np.nan, 2.0]), {}),
        (np.ones((3, 2, 2)), {}),
        (np.arange(4.0), {"ks": (5,)}),
        (np.arange(10.0), {"ks": (0, 1)}),
        (np.arange(10.0), {"n_init": 0}),
    ],
)
def test_bad_input_raises(x, kwargs):
    with pytest.raises(ValueError):
        fit_gmm_1d(x, **kwargs)


def test_params_take_and_valid():
    p = GMMParams(np.array([[1.0, 0.0], [0.3, 0.7]]), np.zeros((2, 2)), np.ones((2, 2)), np.array([1, 2]))
    assert p.valid.tolist() == [[True, False], [True, True]]
    assert p.take(np.array([1])).k.tolist() == [2]


_GPU_BUDGETS = gmm._budgets(torch.device("cuda"))  # what fit_gmm_1d uses on a GPU (no GPU needed to read)


@pytest.mark.parametrize("n_blocks", [2048, 256])  # exact EM; compressed EM with the exact finish
def test_gpu_batch_sizes_give_the_cpu_results(data, monkeypatch, n_blocks):
    """The GPU path differs from the CPU one only in how many columns a kernel takes at once (and in who
    sorts); run those batch sizes on the CPU: same K*, same fits to rounding."""
    ref = fit_gmm_1d(data, seed=1, n_blocks=n_blocks)
    monkeypatch.setattr(gmm, "_budgets", lambda device: _GPU_BUDGETS)
    big = fit_gmm_1d(data, seed=1, n_blocks=n_blocks, device="cpu")
    np.testing.assert_array_equal(big.k_star("bic"), ref.k_star("bic"))
    np.testing.assert_allclose(big.loglik, ref.loglik, rtol=1e-10)
    np.testing.assert_allclose(big.means, ref.means, rtol=1e-8, atol=1e-10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fit_matches_cpu(data):
    ref = fit_gmm_1d(data, seed=1, n_blocks=256)
    dev = fit_gmm_1d(data, seed=1, n_blocks=256, device="cuda")
    np.testing.assert_array_equal(dev.k_star("bic"), ref.k_star("bic"))
    np.testing.assert_allclose(dev.loglik, ref.loglik, rtol=1e-7)


def test_cuda_without_a_gpu_is_a_clear_error(data):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="CUDA is not available"):
        fit_gmm_1d(data, device="cuda")


def test_grow_finds_a_small_mode_that_random_starts_merge_with_a_sparse_tail():
    """A dense bulk over decades (the moved answer gains of a screen) takes the restarts' components; a sparse
    tail (36 samples at 1.2-5) and a separated 64-sample mode (around 12) then share one wide component at
    every K. Starting K from the K - 1 fit with a component split isolates the mode, with a higher likelihood."""
    rng = np.random.default_rng(0)
    x = np.concatenate([np.abs(rng.normal(0.002, 0.001, 1400)), rng.normal(0.01, 0.004, 500).clip(1e-3),
                        rng.normal(0.3, 0.25, 500).clip(1e-3), rng.uniform(1.2, 5, 36), rng.normal(12, 1, 64)])
    plain = fit_gmm_1d(x, range(1, 9), n_init=8)
    grown = fit_gmm_1d(x, range(1, 9), n_init=8, grow=True)
    assert np.all(grown.loglik[0] >= plain.loglik[0] - 1e-6)
    for fit, isolated in ((plain, False), (grown, True)):
        p = fit.select("bic")
        k = int(p.k[0])
        top = (p.means[0, k - 1], np.sqrt(p.variances[0, k - 1]), p.weights[0, k - 1] * x.size)
        assert (abs(top[0] - 12) < 0.5 and top[1] < 1.5 and abs(top[2] - 64) < 3) == isolated, top


def test_grow_is_a_no_op_without_the_previous_k():
    """Only a K whose K - 1 was fitted gets split starts; alone it fits as without."""
    x = np.concatenate([np.random.default_rng(1).normal(0, 1, 300), np.random.default_rng(2).normal(6, 1, 100)])
    a, b = fit_gmm_1d(x, (3,), seed=4), fit_gmm_1d(x, (3,), seed=4, grow=True)
    np.testing.assert_array_equal(a.means, b.means)
    np.testing.assert_array_equal(a.loglik, b.loglik)
