"""ΔW spectrum and rank-k edits on constructed low-rank deltas (exact algebra, no training)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from poisonguard.audit.projector import projector_linears
from poisonguard.audit.weights import (
    effective_rank,
    energy_share,
    layer_deltas,
    parameter_drift,
    rank_k_edit,
    rank_k_edited,
    repair,
    resolve_layers,
    spectrum_summary,
)
from tests.fixtures.families import build_tiny

L1, L2 = "model.multi_modal_projector.linear_1", "model.multi_modal_projector.linear_2"


def _orthonormal(n: int, k: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, k, generator=torch.Generator().manual_seed(seed)))
    return q  # (n, k)


@pytest.fixture(scope="module")
def pair():
    """Tiny LLaVA base and a copy whose projector moved by known low-rank deltas:
    linear_1 += Σ σ_i u_i v_iᵀ with σ = (3, 2, 1), bias += 0.5·e_0; linear_2 += 2.5·a bᵀ (rank 1)."""
    base, _ = build_tiny("llava")
    ft = copy.deepcopy(base)
    lin = projector_linears(ft)
    with torch.no_grad():
        u, v = _orthonormal(32, 3, 0), _orthonormal(32, 3, 1)
        lin[L1].weight += (u * torch.tensor([3.0, 2.0, 1.0])) @ v.T
        lin[L1].bias[0] += 0.5
        a, b = _orthonormal(32, 1, 2), _orthonormal(32, 1, 3)
        lin[L2].weight += 2.5 * a @ b.T
    return base, ft


def test_rank_one_delta_has_all_energy_in_one_component(pair):
    base, ft = pair
    d = layer_deltas(base, ft)[L2]
    summary = spectrum_summary(d, ks=(1, 4))
    assert summary["energy"]["top1"] == pytest.approx(1.0, abs=1e-9)
    assert summary["effective_rank"] == pytest.approx(1.0, abs=1e-5)
    assert summary["spectral_norm"] == pytest.approx(2.5, rel=1e-5)
    assert summary["bias_norm"] == 0.0
    assert summary["shape"] == [32, 33], "bias is the last column of the homogeneous matrix"


def test_energy_and_effective_rank_of_known_spectra():
    s = np.array([3.0, 2.0, 1.0])
    assert energy_share(s, 1) == pytest.approx(9 / 14)
    assert energy_share(s, 2) == pytest.approx(13 / 14)
    assert energy_share(s, 10) == pytest.approx(1.0)
    assert effective_rank(np.ones(4)) == pytest.approx(4.0)
    assert effective_rank(np.array([5.0, 0.0, 0.0])) == pytest.approx(1.0)
    assert effective_rank(np.zeros(3)) == 0.0 and energy_share(np.zeros(3), 1) == 0.0
    assert 2.0 < effective_rank(s) < 3.0


def test_bias_shift_is_part_of_the_spectrum_only_with_include_bias(pair):
    base, ft = pair
    with_bias = layer_deltas(base, ft)[L1]
    without = layer_deltas(base, ft, include_bias=False)[L1]
    assert with_bias.s.numel() == 32 and without.s.numel() == 32
    sw = spectrum_summary(with_bias)
    so = spectrum_summary(without)
    assert sw["bias_norm"] == pytest.approx(0.5, rel=1e-5) and so["bias_norm"] is None
    assert so["singular_values"][:3] == pytest.approx([3.0, 2.0, 1.0], rel=1e-5)
    assert sw["fro_norm"] ** 2 == pytest.approx(so["fro_norm"] ** 2 + 0.25, rel=1e-5)


def _weights(model, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    lin = projector_linears(model)[name]
    return lin.weight.detach().clone(), lin.bias.detach().clone()


def test_full_rank_removal_gives_base_and_reconstruction_gives_finetuned_exactly(pair):
    base, ft = pair
    deltas = layer_deltas(base, ft)
    removed = rank_k_edit(base, ft, 10_000, mode="remove", deltas=deltas)
    rebuilt = rank_k_edit(base, ft, 10_000, mode="reconstruct", deltas=deltas)
    for name in (L1, L2):
        assert all(torch.equal(x, y) for x, y in zip(_weights(removed, name), _weights(base, name)))
        assert all(torch.equal(x, y) for x, y in zip(_weights(rebuilt, name), _weights(ft, name)))
    # k = 0 leaves the host untouched, and the inputs are never modified
    assert all(
        torch.equal(x, y)
        for x, y in zip(_weights(rank_k_edit(base, ft, 0, deltas=deltas), L1), _weights(ft, L1))
    )
    assert not torch.equal(_weights(ft, L1)[0], _weights(base, L1)[0])


def test_partial_removal_strips_exactly_the_top_components(pair):
    base, ft = pair
    weight_only = layer_deltas(base, ft, include_bias=False)  # the bias shift would mix into the components
    removed = rank_k_edit(base, ft, 1, layers=["linear_1"], mode="remove", deltas=weight_only)
    left = (_weights(removed, L1)[0] - _weights(base, L1)[0]).double()
    s = torch.linalg.svdvals(left)
    assert s[:3].tolist() == pytest.approx([2.0, 1.0, 0.0], abs=1e-5)
    # the other layer is the fine-tuned one, and the bias (not part of the edit here) stays fine-tuned
    assert torch.equal(_weights(removed, L2)[0], _weights(ft, L2)[0])
    assert torch.equal(_weights(removed, L1)[1], _weights(ft, L1)[1])
    rebuilt = rank_k_edit(base, ft, 2, layers=[L1], mode="reconstruct", deltas=weight_only)
    s = torch.linalg.svdvals((_weights(rebuilt, L1)[0] - _weights(base, L1)[0]).double())
    assert s[:3].tolist() == pytest.approx([3.0, 2.0, 0.0], abs=1e-5)
    assert torch.equal(_weights(rebuilt, L2)[0], _weights(base, L2)[0]), "reconstruction host is the base"


def test_repair_removes_the_rank_one_backdoor_direction(pair):
    base, ft = pair
    fixed = repair(base, ft, 1, ["linear_2"])
    assert torch.allclose(_weights(fixed, L2)[0], _weights(base, L2)[0], atol=1e-6)
    assert torch.equal(_weights(fixed, L1)[0], _weights(ft, L1)[0])


def test_layer_names_resolve_by_suffix_and_reject_ambiguity():
    names = [L1, L2]
    assert resolve_layers(names, ["linear_2"]) == [L2]
    assert resolve_layers(names, None) == names
    with pytest.raises(ValueError, match="matches"):
        resolve_layers(names, ["linear"])


class _OriginalLlava(nn.Module):
    """The original LLaVA layout: `model.mm_projector` = Sequential(Linear, GELU, Linear)."""

    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Module()
        self.model.mm_projector = nn.Sequential(nn.Linear(6, 8), nn.GELU(), nn.Linear(8, 8))


def test_original_llava_projector_is_found_by_name():
    torch.manual_seed(0)
    base = _OriginalLlava()
    ft = copy.deepcopy(base)
    with torch.no_grad():
        ft.model.mm_projector[2].weight += torch.outer(torch.ones(8), torch.arange(8.0))
    assert list(projector_linears(base)) == ["model.mm_projector.0", "model.mm_projector.2"]
    d = layer_deltas(base, ft)
    assert spectrum_summary(d["model.mm_projector.0"])["fro_norm"] == 0.0
    assert spectrum_summary(d["model.mm_projector.2"])["energy"]["top1"] == pytest.approx(1.0)


def test_parameter_drift_attributes_change_to_the_projector(pair):
    base, ft = pair
    drift = parameter_drift(base, ft)
    assert drift["vision"] == 0.0 and drift["language_model"] == 0.0
    assert drift["projector"] > 0.0


@pytest.mark.parametrize("mode", ["remove", "reconstruct"])
def test_in_place_edits_match_the_copies_and_restore_the_host_bit_for_bit(pair, mode):
    base, ft = pair
    deltas = layer_deltas(base, ft)
    host = ft if mode == "remove" else base
    before = {k: v.clone() for k, v in host.state_dict().items()}
    copied = rank_k_edit(base, ft, 1, layers=["linear_1"], mode=mode, deltas=deltas)
    with rank_k_edited(base, ft, 1, layers=["linear_1"], mode=mode, deltas=deltas) as edited:
        assert edited is host, "no copy of the model"
        for name in (L1, L2):
            assert all(torch.equal(x, y) for x, y in zip(_weights(edited, name), _weights(copied, name)))
    assert all(torch.equal(v, before[k]) for k, v in host.state_dict().items())
    with pytest.raises(RuntimeError, match="boom"), rank_k_edited(base, ft, 2, mode=mode, deltas=deltas):
        raise RuntimeError("boom")
    assert all(torch.equal(v, before[k]) for k, v in host.state_dict().items()), "restored on error too"
