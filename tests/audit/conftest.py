"""Shared audit fixtures: a stand-in fine-tune whose projector change is known exactly."""

from __future__ import annotations

from pathlib import Path

import torch

from poisonguard.train.finetune import load_model, save_model


def rank_one_projector_change(base_dir: Path, out: Path, seed: int, scale: float = 0.3) -> Path:
    """Save `base_dir`'s model with a rank-1 change of the projector's last layer to `out` (a stand-in
    fine-tune: the audit must find exactly one dominant singular direction there)."""
    model, processor = load_model(base_dir)
    lin = model.model.multi_modal_projector.linear_2
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        u = torch.randn(lin.out_features, 1, generator=gen)  # (D_out, 1)
        v = torch.randn(1, lin.in_features, generator=gen)  # (1, D_in)
        lin.weight += scale * u @ v
    save_model(model, processor, out)
    return out
