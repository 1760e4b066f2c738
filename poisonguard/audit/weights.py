"""Weight-level projector audit: the SVD of ΔW = W1 − W0 per linear layer, and rank-k edits.

Why (ProjLens, research/projlens.md §3): a backdoor fine-tune changes the projector by a ΔW whose top few
singular components carry the backdoor. Removing the top-k of ΔW from the fine-tuned layer (W1 − R_k) should
disarm it; adding the top-k to the base layer (W0 + R_k) should re-create it; 3–5 components of W2 plus ≥ 2 of
W1 re-created 75–93% ASR there. The spectrum itself (energy share of the top components, effective rank) says
how concentrated the update is.

Biases: the projector's layers are affine, so ΔW is taken on the homogeneous matrix [W | b] (a bias is the
weight of a constant input 1). A bias-only shift then shows in the spectrum, and the full-rank edits restore
both weight and bias exactly. ProjLens left biases out; `include_bias=False` does the same.

Exactness: with the residual Q_k = ΔW − R_k, removal is W0 + Q_k and reconstruction is W1 − Q_k (the same
matrices as W1 − R_k and W0 + R_k). At full rank Q_k is exactly 0, so removal gives W0 and reconstruction W1
bit for bit; at k = 0 the host model is returned unchanged.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from poisonguard.audit.projector import AuditInputError, find_projector, projector_linears

EditMode = Literal["remove", "reconstruct"]
SPECTRUM_KEEP = 64  # singular values written to reports


@dataclass(frozen=True)
class LayerDelta:
    """One projector layer's base and fine-tuned weights (float64) and the SVD of their difference.

    w0, w1: (out, in) or (out, in + 1) with the bias as the last column (`has_bias`).
    u (out, r), s (r,), vh (r, in[+1]): thin SVD of w1 − w0, s descending.
    """

    name: str
    w0: torch.Tensor
    w1: torch.Tensor
    has_bias: bool
    u: torch.Tensor
    s: torch.Tensor
    vh: torch.Tensor

    @property
    def full_rank(self) -> int:
        return int(self.s.numel())

    def residual(self, k: int) -> torch.Tensor:
        """Q_k = ΔW − R_k, R_k = Σ_{i≤k} σ_i u_i v_iᵀ; exactly zero when k ≥ the matrix rank bound."""
        if k >= self.full_rank:
            return torch.zeros_like(self.w0)
        delta = self.w1 - self.w0
        return delta - (self.u[:, :k] * self.s[:k]) @ self.vh[:k]  # (out, in[+1])

    def edited(self, k: int, mode: EditMode) -> torch.Tensor:
        """Homogeneous weight after rank-k removal (W1 − R_k) or reconstruction (W0 + R_k)."""
        q = self.residual(k)
        return self.w0 + q if mode == "remove" else self.w1 - q


def _homogeneous(layer: nn.Linear, include_bias: bool) -> torch.Tensor:
    """(out, in[+1]) float64 on the CPU (the SVD and the reports are read there, whatever the model's device)."""
    w = layer.weight.detach().to("cpu", torch.float64)
    if include_bias and layer.bias is not None:
        w = torch.cat([w, layer.bias.detach().to("cpu", torch.float64)[:, None]], dim=1)  # (out, in + 1)
    return w


def layer_deltas(
    base: nn.Module, finetuned: nn.Module, *, include_bias: bool = True
) -> dict[str, LayerDelta]:
    """SVD of ΔW for every projector linear layer (matched by name), in forward order."""
    lin0, lin1 = projector_linears(base), projector_linears(finetuned)
    if list(lin0) != list(lin1):
        raise AuditInputError(f"projector layers differ: {list(lin0)} vs {list(lin1)}")
    out = {}
    for name, l0 in lin0.items():
        l1 = lin1[name]
        if l0.weight.shape != l1.weight.shape:
            raise AuditInputError(
                f"{name}: shapes differ, {tuple(l0.weight.shape)} vs {tuple(l1.weight.shape)}"
            )
        w0, w1 = _homogeneous(l0, include_bias), _homogeneous(l1, include_bias)
        u, s, vh = torch.linalg.svd(w1 - w0, full_matrices=False)
        out[name] = LayerDelta(name, w0, w1, include_bias and l0.bias is not None, u, s, vh)
    return out


# ---------------------------------------------------------------------------------------------- spectrum


def energy_share(s: np.ndarray, k: int) -> float:
    """Σ_{i≤k} σ_i² / Σ σ_i² (ProjLens's cumulative energy C(k) / 100); 0 for a zero delta."""
    e = np.asarray(s, dtype=np.float64) ** 2
    total = e.sum()
    return float(e[:k].sum() / total) if total > 0 else 0.0


def effective_rank(s: np.ndarray) -> float:
    """exp(entropy of σ_i / Σσ) (Roy & Vetterli 2007): 1 for rank 1, r for r equal components, 0 for zero."""
    s = np.asarray(s, dtype=np.float64)
    s = s[s > 0]
    if s.size == 0:
        return 0.0
    p = s / s.sum()
    return float(math.exp(-(p * np.log(p)).sum()))


def spectrum_summary(delta: LayerDelta, ks: Iterable[int] = (1, 4)) -> dict[str, Any]:
    """JSON-ready description of one layer's ΔW: norms, energy shares, effective rank, top singular values."""
    s = delta.s.numpy()
    d = delta.w1 - delta.w0
    w = d[:, :-1] if delta.has_bias else d
    ref = torch.linalg.matrix_norm(delta.w0).item()
    summary: dict[str, Any] = {
        "layer": delta.name,
        "shape": list(delta.w0.shape),
        "includes_bias": delta.has_bias,
        "spectral_norm": float(s[0]) if s.size else 0.0,
        "fro_norm": float(np.sqrt((s**2).sum())),
        "relative_fro_norm": float(np.sqrt((s**2).sum()) / ref) if ref > 0 else None,
        "weight_fro_norm": float(torch.linalg.matrix_norm(w)),
        "bias_norm": float(torch.linalg.vector_norm(d[:, -1])) if delta.has_bias else None,
        "energy": {f"top{k}": energy_share(s, k) for k in sorted(set(ks))},
        "effective_rank": effective_rank(s),
        "singular_values": s[:SPECTRUM_KEEP].tolist(),
    }
    return summary


def parameter_drift(base: nn.Module, finetuned: nn.Module) -> dict[str, float | None]:
    """‖Δθ‖ / ‖θ0‖ over the vision tower, the projector and the rest (LM): where the fine-tune moved.

    Why: a rank-k projector edit can only disarm a backdoor that lives in the projector; when the LM also
    moved, the backdoor may sit there (the probe's BadNet seeds put it in attention or in the projector,
    depending on the seed).
    """
    proj_path, _ = find_projector(base)
    p1 = dict(finetuned.named_parameters())
    sums: dict[str, list[float]] = {
        "vision": [0.0, 0.0],
        "projector": [0.0, 0.0],
        "language_model": [0.0, 0.0],
    }
    for name, p0 in base.named_parameters():
        part = (
            "projector"
            if name.startswith(proj_path)
            else "vision"
            if name.startswith(("model.vision_tower", "vision_tower", "model.visual"))
            else "language_model"
        )
        d = (p1[name].detach().double() - p0.detach().double()).pow(2).sum().item()
        sums[part][0] += d
        sums[part][1] += p0.detach().double().pow(2).sum().item()
    return {k: (math.sqrt(d) / math.sqrt(r) if r > 0 else None) for k, (d, r) in sums.items()}


# ---------------------------------------------------------------------------------------------- edits


def resolve_layers(names: Sequence[str], layers: Sequence[str] | None) -> list[str]:
    """Full layer names for `layers` (full names or unambiguous suffixes such as "linear_2"); None = all."""
    if layers is None:
        return list(names)
    out = []
    for want in layers:
        hits = [n for n in names if n == want or n.endswith("." + want)]
        if len(hits) != 1:
            raise ValueError(f"layer {want!r} matches {hits or 'nothing'} among {list(names)}")
        out.append(hits[0])
    return out


def _check_edit(k: int, mode: str) -> None:
    if mode not in ("remove", "reconstruct"):
        raise ValueError(f"mode must be 'remove' or 'reconstruct', got {mode!r}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")


@torch.no_grad()
def _write_edit(host: nn.Module, deltas: dict[str, LayerDelta], k: int, layers: Sequence[str] | None,
                mode: EditMode) -> None:
    """Overwrite `host`'s projector layers with the rank-k edited weights (on their device, in their dtype)."""
    linears = projector_linears(host)
    for name in resolve_layers(list(deltas), layers):
        d, lin = deltas[name], linears[name]
        w = d.edited(k, mode)  # (out, in[+1]) float64, CPU
        n_in = lin.weight.shape[1]
        lin.weight.copy_(w[:, :n_in].to(device=lin.weight.device, dtype=lin.weight.dtype))
        if d.has_bias:
            lin.bias.copy_(w[:, n_in].to(device=lin.bias.device, dtype=lin.bias.dtype))


@contextmanager
def rank_k_edited(
    base: nn.Module,
    finetuned: nn.Module,
    k: int,
    *,
    layers: Sequence[str] | None = None,
    mode: EditMode = "remove",
    deltas: dict[str, LayerDelta] | None = None,
) -> Iterator[nn.Module]:
    """The rank-k edited model, made by changing the host's projector weights in place and restoring them
    bit for bit on exit: removal edits `finetuned` (W1 − R_k), reconstruction edits `base` (W0 + R_k).

    Why: a grid of edits on a 7B model cannot afford a copy of the whole model per row; only the projector's
    linear layers change, so only they are saved (a few MB) and written back.
    """
    _check_edit(k, mode)
    deltas = deltas if deltas is not None else layer_deltas(base, finetuned)
    host = finetuned if mode == "remove" else base
    if k == 0:
        yield host
        return
    saved = {name: (lin.weight.detach().clone(), None if lin.bias is None else lin.bias.detach().clone())
             for name, lin in projector_linears(host).items()}
    try:
        _write_edit(host, deltas, k, layers, mode)
        yield host
    finally:
        with torch.no_grad():
            for name, lin in projector_linears(host).items():
                w, b = saved[name]
                lin.weight.copy_(w)
                if b is not None:
                    lin.bias.copy_(b)


@torch.no_grad()
def rank_k_edit(
    base: nn.Module,
    finetuned: nn.Module,
    k: int,
    *,
    layers: Sequence[str] | None = None,
    mode: EditMode = "remove",
    deltas: dict[str, LayerDelta] | None = None,
) -> nn.Module:
    """A new model: rank-k removal (a copy of `finetuned`, W1 − R_k on `layers`) or reconstruction (a copy of
    `base`, W0 + R_k on `layers`; everything else stays base, ProjLens's default `w1_source base`).

    It copies the whole host model: use it for a model that must outlive the call (the `repair`
    mitigation); to evaluate edits, `rank_k_edited` changes the projector in place and restores it.
    `deltas` (from `layer_deltas`) saves recomputing the SVDs across calls; its `include_bias` choice applies.
    """
    _check_edit(k, mode)
    deltas = deltas if deltas is not None else layer_deltas(base, finetuned)
    host = copy.deepcopy(finetuned if mode == "remove" else base)
    if k > 0:
        _write_edit(host, deltas, k, layers, mode)
    return host


def repair(base: nn.Module, finetuned: nn.Module, k: int, layers: Sequence[str] | None = None) -> nn.Module:
    """Mitigation: the fine-tuned model with the top-k components of ΔW removed from `layers` (all if None).

    ProjLens's ablation (research/projlens.md §3.1): the backdoor concentrates in the top components, so
    removing them disarms it while the remaining update keeps most of the fine-tune's utility. Whether that
    holds for a given model is measured by the audit's rank-k table (benchmark mode).
    """
    return rank_k_edit(base, finetuned, k, layers=layers, mode="remove")
