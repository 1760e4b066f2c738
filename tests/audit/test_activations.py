"""Per-token drift ΔE on planted projector / tower changes, the norm-law fit, and the logit lens."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from poisonguard.audit.activations import (
    _image_norm_r,
    collect_drift,
    direction_alignment,
    drift_features,
    drift_scores,
    drift_spectra,
    drift_spectra_float64,
    energy_summary,
    image_r_summary,
    linear_fit,
    logit_lens,
    norm_law,
    shared_direction,
)
from poisonguard.audit.projector import projector_linears
from poisonguard.data.records import Sample, Turn
from tests.fixtures.families import build_tiny

SHIFT = 0.7


def _samples(n: int) -> tuple[list[Sample], dict[str, Image.Image]]:
    """n one-image samples, one two-image sample and one text-only sample."""
    rng = np.random.default_rng(0)
    images = {
        f"im{i}.png": Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for i in range(n + 1)
    }
    turns = [Turn("user", "what colour"), Turn("assistant", "red")]
    samples = [Sample(f"s{i}", i, [f"im{i}.png"], turns) for i in range(n)]
    samples.append(Sample("two", n, ["im0.png", f"im{n}.png"], turns))
    samples.append(Sample("text", n + 1, [], turns))
    return samples, images


@pytest.fixture(scope="module")
def tiny():
    model, processor = build_tiny("llava")
    return model, processor


def test_bias_shift_drifts_every_token_along_one_direction(tiny):
    base, processor = tiny
    ft = copy.deepcopy(base)
    u = torch.nn.functional.normalize(torch.randn(32, generator=torch.Generator().manual_seed(0)), dim=0)
    with torch.no_grad():
        projector_linears(ft)["model.multi_modal_projector.linear_2"].bias.add_(SHIFT * u)
    samples, images = _samples(10)
    col = collect_drift(base, ft, processor, samples, images.__getitem__, batch_size=4, show_progress=False)
    g = shared_direction(col)
    assert np.allclose(g, u.numpy(), atol=1e-5), (
        "the shared direction is the planted one, sign fixed positive"
    )
    scores = drift_scores(col, g)
    has = col.has_image
    assert has.tolist() == [True] * 11 + [False]
    assert col.n_tokens[10] == 32, "a two-image sample pools both images' 16 tokens"
    for name in ("drift_max", "drift_mean", "drift_proj"):
        assert np.allclose(scores[name][has], SHIFT, atol=1e-5), name
        assert np.isnan(scores[name][~has]).all()
    assert np.allclose(col.energy[has, 0], 1.0), "a constant shift is rank 1 in every image"
    assert direction_alignment(col, g)["mean_abs_cos_pairwise"] == pytest.approx(1.0, abs=1e-6)
    assert np.allclose(col.projector_only_mean[has], SHIFT, atol=1e-5), "frozen tower: all drift is projector"
    fits = norm_law(col, g)
    assert fits["all"]["slope"] == pytest.approx(0.0, abs=1e-4), "a bias shift does not grow with ‖E0‖"
    assert set(drift_features(col, g).extra_scores) == set(scores)


def test_a_changed_tower_counts_although_the_projector_did_not_move(tiny):
    base, processor = tiny
    ft = copy.deepcopy(base)
    with torch.no_grad():
        for p in ft.model.vision_tower.parameters():
            p.add_(0.05 * torch.randn_like(p))
    samples, images = _samples(4)
    col = collect_drift(base, ft, processor, samples, images.__getitem__, show_progress=False)
    has = col.has_image
    assert (col.per_token_mean[has] > 1e-3).all()
    assert np.allclose(col.projector_only_mean[has], 0.0, atol=1e-6)


def test_identical_models_have_zero_drift(tiny):
    base, processor = tiny
    samples, images = _samples(3)
    col = collect_drift(
        base, copy.deepcopy(base), processor, samples, images.__getitem__, show_progress=False
    )
    assert np.allclose(col.per_token_max[col.has_image], 0.0)


def test_linear_fit_recovers_a_planted_norm_law():
    rng = np.random.default_rng(0)
    x = rng.uniform(10, 80, 500)
    fit = linear_fit(x, 0.002 * x - 0.01 + rng.normal(0, 0.002, 500))
    assert fit["slope"] == pytest.approx(0.002, rel=0.05)
    assert fit["intercept"] == pytest.approx(-0.01, abs=0.005)
    assert fit["r"] > 0.95
    assert linear_fit(np.ones(5), np.arange(5.0))["slope"] is None, "constant x: no fit"


def test_norm_law_is_fitted_separately_for_flagged_tokens(tiny):
    """Tokens of flagged samples follow a steeper law than the rest; the split fit sees both slopes."""
    base, processor = tiny
    samples, images = _samples(6)
    col = collect_drift(
        base, copy.deepcopy(base), processor, samples, images.__getitem__, show_progress=False
    )
    rng = np.random.default_rng(1)
    g = np.zeros(32)
    g[0] = 1.0
    flagged = np.zeros(len(samples), dtype=bool)
    flagged[:2] = True
    n_rows = col.fit_base_norm.size
    col.fit_base_norm = rng.uniform(5, 50, n_rows)
    slope = np.where(flagged[col.fit_owner], 0.3, 0.1)
    col.fit_delta = np.zeros((n_rows, 32), dtype=np.float32)
    col.fit_delta[:, 0] = slope * col.fit_base_norm + 1.0
    fits = norm_law(col, g, flagged)
    assert fits["flagged"]["slope"] == pytest.approx(0.3, rel=1e-4)
    assert fits["unflagged"]["slope"] == pytest.approx(0.1, rel=1e-4)
    assert fits["flagged"]["n"] + fits["unflagged"]["n"] == fits["all"]["n"] == n_rows
    col.energy[col.has_image] = 1.0
    summary = energy_summary(col, flagged)
    assert summary["flagged"]["n"] == 2 and summary["unflagged"]["n"] == 5, "the text-only sample has no ΔE"


def test_logit_lens_reads_the_direction_through_the_lm_head(tiny):
    model, processor = tiny
    head = model.get_output_embeddings().weight.detach()  # (V, D)
    target = 7
    lens = logit_lens(model, processor.tokenizer, head[target].numpy(), top_k=3)
    assert lens["+"]["raw"][0]["id"] == int(torch.argmax(head @ head[target]))
    assert lens["-"]["raw"][0]["id"] == int(torch.argmax(-(head @ head[target])))
    assert {"raw", "final_norm"} == set(lens["+"])
    assert lens["+"]["raw"][0]["token"] == processor.tokenizer.decode([lens["+"]["raw"][0]["id"]])


def test_per_image_norm_r_is_one_when_drift_grows_with_the_base_norm():
    """ProjLens's per-image statistic: ΔE_t = a·‖E0_t‖·u gives r = 1 whatever the SVD's sign."""
    gen = torch.Generator().manual_seed(0)
    u = torch.nn.functional.normalize(torch.randn(16, generator=gen, dtype=torch.float64), dim=0)
    norms = torch.rand(9, generator=gen, dtype=torch.float64) * 40 + 5  # (T,)
    delta = 0.01 * norms[:, None] * u  # (T, D): rank 1, coordinate ∝ ‖E0_t‖
    assert _image_norm_r(delta, u, norms) == pytest.approx(1.0, abs=1e-12)
    assert _image_norm_r(delta, -u, norms) == pytest.approx(1.0, abs=1e-12), "sign fixed by the mean drift"
    assert _image_norm_r(-delta, u, norms) == pytest.approx(1.0, abs=1e-12)
    shrinking = 0.01 * (50 - norms)[:, None] * u  # drift shrinks as the norm grows
    assert _image_norm_r(shrinking, u, norms) == pytest.approx(-1.0, abs=1e-12)
    assert np.isnan(_image_norm_r(delta[:2], u, norms[:2])), "fewer than 3 tokens: no r"
    assert np.isnan(_image_norm_r(torch.zeros_like(delta), u, norms)), "no drift: no r"


def test_image_r_is_collected_per_sample_and_summarised_by_group(tiny):
    base, processor = tiny
    ft = copy.deepcopy(base)
    with torch.no_grad():
        projector_linears(ft)["model.multi_modal_projector.linear_2"].weight.mul_(1.5)
    samples, images = _samples(6)
    col = collect_drift(base, ft, processor, samples, images.__getitem__, show_progress=False)
    has = col.has_image
    assert np.isfinite(col.image_r[has]).all() and np.isnan(col.image_r[~has]).all()
    assert (np.abs(col.image_r[has]) <= 1 + 1e-9).all()
    col.image_r[has] = np.linspace(0.9, 0.99, int(has.sum()))
    mask = np.zeros(len(samples), dtype=bool)
    mask[:3] = True
    summary = image_r_summary(col, mask, labels=("poisoned", "clean"))
    assert summary["poisoned"]["n"] == 3 and summary["clean"]["n"] == 4, "the text-only sample has no r"
    assert summary["all"]["share_above_paper"] == pytest.approx(np.mean(col.image_r[has] > 0.95))
    assert summary["poisoned"]["median"] == pytest.approx(np.median(col.image_r[:3]))


def _ragged_drift(lengths: list[int], d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows of len(lengths) samples, each a rank-1 drift (a random share of the energy, like ProjLens's
    55–80 %) plus noise, and a norm law; plus ‖E0_t‖ per row."""
    g = torch.Generator().manual_seed(seed)
    rows, norms = [], []
    for t in lengths:
        base_norm = 1.0 + torch.rand(t, generator=g, dtype=torch.float64)  # (T,)
        v = torch.nn.functional.normalize(torch.randn(d, generator=g, dtype=torch.float64), dim=0)
        strength = 0.5 + 2.0 * torch.rand(1, generator=g, dtype=torch.float64)
        noise = 0.1 * torch.randn(t, d, generator=g, dtype=torch.float64)
        rows.append(strength * base_norm[:, None] * v[None, :] + noise)  # (T, D)
        norms.append(base_norm)
    return torch.cat(rows).float().double(), torch.cat(norms)  # float32 values, as the models give


@pytest.mark.parametrize(("lengths", "d"), [([16, 32, 7, 2, 1, 16], 48), ([80, 40, 3], 24)])
def test_batched_fp32_spectra_match_the_float64_svd(lengths, d):
    """T ≤ D (the (T, T) Gram) and T > D (the (D, D) Gram); ragged lengths, down to one token."""
    delta, base_norm = _ragged_drift(lengths, d, seed=len(lengths))
    top, energy, r = drift_spectra(delta, lengths, base_norm, 4)
    top_ref, energy_ref, r_ref = drift_spectra_float64(delta, lengths, base_norm, 4)
    np.testing.assert_allclose(energy, energy_ref, atol=2e-6)  # stated tolerance: 2e-6 absolute
    cos = np.abs((top.astype(np.float64) * top_ref).sum(1))
    np.testing.assert_allclose(cos, 1.0, atol=1e-5)  # same direction up to sign
    np.testing.assert_allclose(r, r_ref, atol=1e-5, equal_nan=True)
    assert np.isnan(r[[i for i, t in enumerate(lengths) if t < 3]]).all(), "r needs ≥ 3 tokens"


def test_zero_drift_has_no_direction_nor_spectrum():
    lengths = [5, 4]
    delta = torch.zeros(9, 12, dtype=torch.float64)
    delta[5:] = torch.randn(4, 12, dtype=torch.float64)
    top, energy, r = drift_spectra(delta, lengths, torch.ones(9, dtype=torch.float64), 5)  # k > rank 4
    assert np.isnan(top[0]).all() and np.isnan(energy[0]).all() and np.isnan(r[0])
    assert np.isfinite(top[1]).all() and energy[1, -1] == pytest.approx(1.0)

def test_a_token_budget_only_regroups_the_drift_pass():
    """Drift batches cut by image tokens (one 96 px Qwen2-VL image is 144 tokens, a 16 px one 4) give every
    sample the drift of the plain batches: per-sample values do not depend on the batch."""
    from poisonguard.models import configure_processor
    from poisonguard.runtime import Runtime

    base, processor = build_tiny("qwen2_vl")
    configure_processor(processor, Runtime(torch.device("cpu"), torch.float32, max_pixels=96 * 96))
    ft = copy.deepcopy(base)
    with torch.no_grad():
        for p in ft.model.visual.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    rng = np.random.default_rng(2)
    sides = [16, 16, 96, 16, 16, 16, 96, 16]
    images = {f"im{i}.png": Image.fromarray(rng.integers(0, 255, (s, s, 3), dtype=np.uint8))
              for i, s in enumerate(sides)}
    turns = [Turn("user", "what colour"), Turn("assistant", "red")]
    samples = [Sample(f"s{i}", i, [f"im{i}.png"], turns) for i in range(len(sides))]
    from poisonguard.audit.activations import _drift_batches

    cut = [pos for pos, _ in _drift_batches(samples, list(range(8)), images.__getitem__, processor, 8, 150)]
    assert cut == [[0, 1], [2, 3], [4, 5], [6, 7]]  # 4 + 4 + 144 > 150, 144 + 4 fits; input order kept
    plain = collect_drift(base, ft, processor, samples, images.__getitem__, batch_size=8, show_progress=False)
    budget = collect_drift(base, ft, processor, samples, images.__getitem__, batch_size=8, max_batch_tokens=150,
                           show_progress=False)
    np.testing.assert_array_equal(budget.n_tokens, plain.n_tokens)
    assert list(budget.n_tokens) == [4, 4, 144, 4, 4, 4, 144, 4]
    for name in ("per_token_max", "per_token_mean", "max_rel", "mean_rel", "projector_only_mean"):
        np.testing.assert_allclose(getattr(budget, name), getattr(plain, name), rtol=1e-5, atol=1e-6)
    # float32 round-off of other batch sizes (exact on some CPUs, not on others): relative to the matrix's scale
    np.testing.assert_allclose(budget.gram, plain.gram, rtol=1e-6, atol=1e-7 * np.abs(plain.gram).max())
