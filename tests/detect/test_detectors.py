"""Detector objects on synthetic features with planted poison: detection, clean controls, state, params."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from poisonguard.detect import (
    ActivationClusteringDetector,
    BYEDetector,
    FusedDetector,
    DetectionResult,
    FeatureSet,
    SpectralSignatureDetector,
    TCAPDetector,
    TCAPPlusDetector,
    evaluate,
    load_detector,
)
from tests.detect.synth import make_alloc, make_entropy, make_hidden

CLEAN_FLAG_RATE = 0.01  # the bar for every guarded detector on clean data


@pytest.fixture(scope="module")
def poisoned_alloc():
    return make_alloc(seed=0)


def _with_drift(fs: FeatureSet, poison_ids: np.ndarray, shift: float, seed: int = 1) -> FeatureSet:
    """Two log-normal 'projector drift' scores, raised on poisoned samples; one is missing on 50 samples."""
    rng = np.random.default_rng(seed)
    bump = shift * np.isin(fs.ids, poison_ids)
    drift = np.exp(rng.normal(0, 0.5, fs.n) + bump)
    drift[:50] = np.nan
    return replace(fs, extra_scores={"drift": drift, "drift_rel": np.exp(rng.normal(0, 0.5, fs.n) + bump)})


# --- TCAP and TCAP+ -----------------------------------------------------------------------------------------


def test_tcap_plus_beats_faithful_tcap_when_content_heads_split(poisoned_alloc):
    fs, poison = poisoned_alloc
    tcap = evaluate(TCAPDetector(l_sens=2, h_sens=3).detect(fs), poison)
    plus = evaluate(TCAPPlusDetector().detect(fs), poison)
    assert plus["f1"] >= 0.95 and plus["auroc"] >= 0.99
    assert tcap["f1"] < plus["f1"] - 0.3  # faithful TCAP votes with content heads


def test_tcap_report_has_per_head_profile(poisoned_alloc):
    fs, _ = poisoned_alloc
    r = TCAPDetector(l_sens=2, h_sens=3).detect(fs)
    assert r.report["ss"].shape == r.report["k_star"].shape == (4, 4)
    heads = r.report["selected_heads"]
    assert heads.shape == (3, 2) and np.all(heads[:, 0] >= 2)  # only the last l_sens layers are candidates
    ss = r.report["ss"]
    assert np.all(ss[r.report["k_star"] == 1] == 0)  # K* = 1 → SS 0
    assert ss[tuple(heads[0])] == ss[2:].max()  # best SS first
    assert set(r.report["em"]) >= {"prior", "sensitivity", "specificity"}
    assert r.signals["vote_tcap"].shape == (fs.n,)


def test_tcap_plus_selects_the_trigger_heads(poisoned_alloc):
    fs, _ = poisoned_alloc
    r = TCAPPlusDetector().detect(fs)
    assert sorted(map(tuple, r.report["selected_heads"].tolist())) == [(2, 0), (3, 1), (3, 2)]
    assert r.report["guard"]["passed"]
    assert r.report["ss"].shape == (4, 4) and r.report["k_star"].shape == (4, 4, 2)


@pytest.mark.parametrize("seed", [0, 1])
def test_clean_data_tcap_plus_flags_at_most_one_percent(seed):
    fs, poison = make_alloc(poison_rate=0.0, seed=seed)
    assert poison.size == 0
    r = FusedDetector().detect(_with_drift(fs, poison, shift=0.0))
    assert r.flagged.mean() <= CLEAN_FLAG_RATE
    assert r.report["n_flagged"] == int(r.flagged.sum())


def test_clean_data_faithful_tcap_culls_clean_samples():
    """Known behaviour, kept for reference (as in the early probe): no guard, AIC over-fits skewed shares, so
    the published recipe flags hundreds of clean samples even with no content structure at all."""
    fs, _ = make_alloc(poison_rate=0.0, seed=0, content_heads=(), image_heads=(), stratum_ft_heads=())
    r = TCAPDetector(l_sens=2, h_sens=3).detect(fs)
    assert r.flagged.mean() > CLEAN_FLAG_RATE
    assert (r.report["k_star"] > 1).mean() > 0.5


def test_each_tcap_plus_fix_removes_its_confound():
    """On clean data, switching a fix off lets the confound it removes through as a consistent minority (which
    the guard cannot tell from poison): no differencing → the rare-image mode; no strata → the stratum the
    fine-tune shifted."""
    fs, _ = make_alloc(poison_rate=0.0, seed=0)
    rare_stratum = fs.strata == 3
    assert TCAPPlusDetector().detect(fs).flagged.sum() == 0
    no_strata = TCAPPlusDetector(strata_standardise=False).detect(fs)
    assert no_strata.flagged.mean() > 0.05 and rare_stratum[no_strata.flagged].mean() > 0.9
    assert TCAPPlusDetector(differencing=False).detect(fs).flagged.mean() > 0.05


def test_guard_withholds_flags_but_keeps_the_ranking():
    fs, _ = make_alloc(poison_rate=0.0, seed=0)
    guarded = TCAPPlusDetector(strata_standardise=False, max_prior=0.05).detect(fs)
    assert not guarded.flagged.any()
    assert not guarded.report["guard"]["passed"] and guarded.report["guard"]["reasons"]
    assert (guarded.p_poison > 0.5).any()
    unguarded = TCAPPlusDetector(strata_standardise=False, max_prior=0.05, guard=False).detect(fs)
    assert unguarded.flagged.any()


def test_extra_scores_are_fused_as_annotators():
    fs, poison = make_alloc(seed=5, trigger_shift=1.0, ft_noise=0.3)
    alone = evaluate(TCAPPlusDetector().detect(fs), poison)
    r = FusedDetector().detect(_with_drift(fs, poison, shift=2.0))
    fused = evaluate(r, poison)
    assert fused["f1"] > alone["f1"] + 0.05 and fused["auroc"] >= alone["auroc"]
    assert len(r.report["em"]["sensitivity"]) == len(r.report["selected_heads"]) + 2
    for name in ("drift", "drift_rel"):
        assert {f"vote_{name}", f"score_{name}"} <= set(r.signals)
    assert np.isnan(r.signals["vote_drift"][:50]).all()  # missing scores abstain
    # fusion is a parameter of TCAP+: without it the drift scores are not read at all
    plain = TCAPPlusDetector().detect(_with_drift(fs, poison, shift=2.0))
    assert evaluate(plain, poison) == alone and not {"vote_drift", "score_drift"} & set(plain.signals)
    assert TCAPPlusDetector(fuse_projector=True).detect(_with_drift(fs, poison, shift=2.0)).flagged.tolist() == \
        r.flagged.tolist()


def test_tcap_plus_needs_base_allocation_when_differencing(poisoned_alloc):
    fs, _ = poisoned_alloc
    with pytest.raises(ValueError, match="alloc_base"):
        TCAPPlusDetector().fit(replace(fs, alloc_base=None))
    TCAPPlusDetector(differencing=False).fit(replace(fs, alloc_base=None))


def test_missing_extra_score_at_score_time_raises(poisoned_alloc):
    fs, poison = poisoned_alloc
    det = FusedDetector().fit(_with_drift(fs, poison, 2.0))
    with pytest.raises(ValueError, match="drift"):
        det.score(fs)


# --- BYE ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["code", "paper"])
def test_bye_finds_patch_trigger(rule):
    fs, poison = make_entropy()
    r = BYEDetector(bsi_rule=rule).detect(fs)
    assert evaluate(r, poison)["f1"] > 0.95
    assert r.report["kept_layers"].tolist() == [3, 4, 5]


def test_bye_clean_unimodal_finds_no_sensitive_layer():
    fs, _ = make_entropy(poison_rate=0.0)
    r = BYEDetector().detect(fs)
    assert not r.flagged.any() and "no sensitive layer" in r.report["note"]
    assert np.isnan(r.signals["score_bye"]).all()


def test_bye_always_splits_a_naturally_bimodal_clean_layer():
    """The documented counterexample: one clean bimodal layer and BYE removes a whole clean cluster."""
    fs, _ = make_entropy(poison_rate=0.0, bimodal_clean_layer=2)
    r = BYEDetector().detect(fs)
    assert r.report["kept_layers"].tolist() == [2]
    assert 0.2 < r.flagged.mean() < 0.4
    assert "culls clean samples" in r.report["always_split"]


def test_bye_text_only_samples_take_the_layer_mean():
    fs, poison = make_entropy(text_only_rate=0.1)
    r = BYEDetector().detect(fs)
    assert r.report["n_text_only"] == int(np.isnan(fs.vis_entropy).all(1).sum())
    assert not r.flagged[np.isnan(fs.vis_entropy).all(1)].any()
    assert evaluate(r, poison)["precision"] > 0.95


# --- hidden-state baselines ---------------------------------------------------------------------------------


def test_spectral_signature_finds_shifted_minority():
    fs, poison = make_hidden()
    r = SpectralSignatureDetector().detect(fs)
    m = evaluate(r, poison)
    assert m["auroc"] > 0.99 and m["f1"] > 0.85
    np.testing.assert_array_equal(r.flagged, r.p_poison > 0.5)


def test_spectral_contamination_flags_that_share():
    fs, _ = make_hidden()
    r = SpectralSignatureDetector(contamination=0.05).detect(fs)
    assert r.flagged.mean() == pytest.approx(0.05, abs=0.002)


def test_activation_clustering_flags_small_cluster_only():
    fs, poison = make_hidden()
    r = ActivationClusteringDetector().detect(fs)
    assert evaluate(r, poison)["f1"] > 0.9 and r.report["flags_smaller_cluster"]


@pytest.mark.parametrize(
    "det", [SpectralSignatureDetector(), ActivationClusteringDetector()], ids=["ss", "activation_clustering"]
)
@pytest.mark.parametrize("seed", [0, 3])
def test_clean_hidden_states_flag_at_most_one_percent(det, seed):
    fs, _ = make_hidden(poison_rate=0.0, seed=seed)
    assert det.detect(fs).flagged.mean() <= CLEAN_FLAG_RATE


def test_ica_reduction_matches_sklearn_transform():
    from sklearn.decomposition import FastICA

    fs, _ = make_hidden(n=400, dim=12)
    det = ActivationClusteringDetector(reduce="ica", n_components=4).fit(fs)
    st = det.to_state()["fitted"]
    ica = FastICA(n_components=4, random_state=0, whiten="unit-variance", max_iter=1000).fit(
        fs.hidden.astype(float)
    )
    mine = (fs.hidden.astype(float) - np.asarray(st["mean"])) @ np.asarray(st["components"]).T
    np.testing.assert_allclose(mine, ica.transform(fs.hidden.astype(float)), atol=1e-8)


# --- state, new data, params --------------------------------------------------------------------------------


def _case(name: str):
    """(detector, data it is fitted on, a new data drop of the same shape)."""
    if name == "tcap":
        return TCAPDetector(l_sens=2, h_sens=3), make_alloc(seed=0)[0], make_alloc(seed=7)[0]
    if name in ("tcap_plus", "fused"):
        (fs, p), (fs2, p2) = (make_alloc(seed=s, trigger_shift=1.0, ft_noise=0.3) for s in (5, 6))
        det = TCAPPlusDetector() if name == "tcap_plus" else FusedDetector()
        return det, _with_drift(fs, p, 2.0), _with_drift(fs2, p2, 2.0, seed=2)
    if name == "bye":
        return BYEDetector(), make_entropy(text_only_rate=0.05)[0], make_entropy(seed=9)[0]
    det = SpectralSignatureDetector() if name == "spectral" else ActivationClusteringDetector()
    return det, make_hidden()[0], make_hidden(seed=4)[0]


@pytest.mark.parametrize("name", ["tcap", "tcap_plus", "fused", "bye", "spectral", "activation_clustering"])
def test_state_round_trip_reproduces_scores_on_new_data(name):
    det, fit_on, new = _case(name)
    first = det.detect(fit_on)
    state = json.loads(json.dumps(det.to_state(), allow_nan=False))  # JSON only: no NaN, no numpy, no pickle
    again = load_detector(state)
    assert type(again) is type(det) and again.get_params() == det.get_params()
    for fs, ref in ((fit_on, first), (new, det.score(new))):
        res = again.score(fs)
        np.testing.assert_allclose(res.p_poison, ref.p_poison, rtol=1e-9, atol=1e-12)
        np.testing.assert_array_equal(res.flagged, ref.flagged)
        assert res.signals.keys() == ref.signals.keys()


def test_fitted_tcap_plus_screens_a_new_data_drop():
    fs, _ = make_alloc(seed=0)
    new, new_poison = make_alloc(seed=0, n=3000)  # same world and model, more samples
    det = TCAPPlusDetector().fit(fs)
    assert evaluate(det.score(new.subset(np.arange(1500, 3000))), new_poison)["f1"] > 0.95


def test_score_before_fit_raises():
    with pytest.raises(RuntimeError, match="not fitted"):
        SpectralSignatureDetector().score(make_hidden(n=50)[0])


def test_state_for_another_detector_is_refused():
    det = SpectralSignatureDetector().fit(make_hidden(n=100)[0])
    with pytest.raises(ValueError):
        ActivationClusteringDetector.from_state(det.to_state())


def test_shape_mismatch_at_score_raises(poisoned_alloc):
    fs, _ = poisoned_alloc
    det = TCAPDetector(l_sens=2).fit(fs)
    other, _ = make_alloc(n_layers=5, trigger_heads=(), content_heads=(), image_heads=(), stratum_ft_heads=())
    with pytest.raises(ValueError, match="layers"):
        det.score(other)


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (TCAPDetector, {"l_sens": 0}),
        (TCAPDetector, {"h_sens": 2.5}),
        (TCAPDetector, {"tau": 1.5}),
        (TCAPDetector, {"criterion": "hqc"}),
        (TCAPDetector, {"target_rule": "largest"}),
        (TCAPDetector, {"eps": 0.0}),
        (TCAPDetector, {"n_grid": 1}),
        (TCAPDetector, {"unknown": 1}),
        (TCAPPlusDetector, {"space": "clr"}),
        (TCAPPlusDetector, {"differencing": "yes"}),
        (TCAPPlusDetector, {"min_weight": 0.3, "max_weight": 0.2}),
        (TCAPPlusDetector, {"min_prior": 0.5, "max_prior": 0.1}),
        (TCAPPlusDetector, {"k_max": 1}),
        (TCAPPlusDetector, {"h_sens": 0}),
        (BYEDetector, {"bsi_rule": "median"}),
        (BYEDetector, {"bsi_tau": -1.0}),
        (SpectralSignatureDetector, {"contamination": 0.0}),
        (SpectralSignatureDetector, {"z_threshold": float("nan")}),
        (ActivationClusteringDetector, {"reduce": "umap"}),
        (ActivationClusteringDetector, {"size_threshold": 0.9}),
        (ActivationClusteringDetector, {"n_components": 0}),
    ],
)
def test_bad_params_raise(cls, kwargs):
    with pytest.raises(ValueError):
        cls(**kwargs)


def test_tcap_l_sens_beyond_depth_raises(poisoned_alloc):
    with pytest.raises(ValueError, match="l_sens"):
        TCAPDetector(l_sens=9).fit(poisoned_alloc[0])


def test_detector_needs_its_features():
    fs, _ = make_hidden(n=50)
    with pytest.raises(ValueError, match="alloc"):
        TCAPDetector().fit(fs)
    with pytest.raises(ValueError, match="vis_entropy"):
        BYEDetector().fit(fs)


def test_result_table_has_one_row_per_sample(poisoned_alloc):
    fs, _ = poisoned_alloc
    df = TCAPPlusDetector().detect(fs).to_frame()
    assert list(df.columns[:3]) == ["id", "p_poison", "flagged"] and "vote_tcap_plus" in df.columns
    assert len(df) == fs.n and df["id"].is_unique


def test_result_rejects_out_of_range_probabilities():
    with pytest.raises(ValueError):
        DetectionResult(np.array(["a"]), np.array([1.2]), np.array([True]), {}, {})


def test_registry_names_every_detector_once():
    from poisonguard.detect import DETECTORS, make_detector

    assert list(DETECTORS) == ["shift", "span", "fused", "tcap_plus", "tcap", "projector", "bye", "spectral",
                               "activation_clustering"]
    for name, cls in DETECTORS.items():
        assert cls.name == name and make_detector(name).to_state.__self__.name == name
    with pytest.raises(ValueError, match="unknown detector 'ac'"):
        make_detector("ac")
