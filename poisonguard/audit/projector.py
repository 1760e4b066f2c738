"""Where each family's projector sits, and what goes into and comes out of it, image by image.

Why: the projector audit (ProjLens, research/projlens.md §0, §3–4) reads two things: the weights of the
projector's linear layers (for ΔW = W1 − W0) and, per visual token, the projector input v and output E (for
ΔE = P1(v1) − P0(v0)). The drift probe (research/detector-probe.md, B) found that the *full* visual path
must be used, each model with its own vision tower, or a backdoor learned in a trainable tower is missed
(Blend: AUROC 0.89 with the full path, 0.53 with the projector alone). So E is captured while the model runs
its own `get_image_features`, i.e. exactly what it hands to its LM.

Module names in transformers 5.23 (checked on the tiny family models of the tests):
- LLaVA, LLaVA-NeXT, the embedded world: `model.multi_modal_projector` = linear_1 → GELU → linear_2.
- InternVL: `model.multi_modal_projector` = layer_norm → linear_1 → GELU → linear_2, after a pixel shuffle.
- Qwen2-VL / Qwen2.5-VL: `model.visual.merger` = ln_q → (4 patches concatenated) → mlp.0 → GELU → mlp.2.
  Qwen2.5-VL runs the merger in window order and un-permutes afterwards; the rows are put back here.
- Original LLaVA checkpoints (`mm_projector.0` / `.2`): found by name for the weight audit; no transformers
  class runs them, so activations are not available.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from poisonguard.runtime import to_device
from poisonguard.train.batching import prepare_images

PROJECTOR_PATHS = (
    "model.multi_modal_projector",
    "multi_modal_projector",
    "model.mm_projector",
    "mm_projector",
    "model.visual.merger",
    "visual.merger",
)
# Keys of an image processor's output that `get_image_features` consumes, per family.
_FEATURE_KEYS = ("pixel_values", "image_sizes", "image_grid_thw")


class AuditInputError(ValueError):
    """The models or files handed to the audit cannot be audited (no projector, mismatched layers, bad
    options): the CLI reports it as bad input (exit 2), not as a crash."""


@dataclass
class ProjectorFeatures:
    """Per image, one row per projected token, in the order the model hands them to its LM.

    v: projector inputs, each (T_i, D_in) (Qwen: the merge unit's patches concatenated, before ln_q).
    e: projector outputs, each (T_i, D_out) (D_out = the LM's hidden size).
    """

    v: list[torch.Tensor]
    e: list[torch.Tensor]


def find_projector(model: nn.Module) -> tuple[str, nn.Module]:
    """(dotted name, module) of the projector; raises if the model has none under a known name."""
    modules = dict(model.named_modules())
    for path in PROJECTOR_PATHS:
        if path in modules:
            return path, modules[path]
    raise AuditInputError(f"no projector found in {type(model).__name__}: looked for {PROJECTOR_PATHS}")


def projector_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The projector's linear layers by full module name, in forward (registration) order.

    Every supported projector is an MLP whose linears run in registration order, so "first" and "last" here
    are ProjLens's W1 and W2 (research/projlens.md §0).
    """
    path, proj = find_projector(model)
    linears = {f"{path}.{n}": m for n, m in proj.named_modules() if isinstance(m, nn.Linear)}
    if not linears:
        raise AuditInputError(f"projector {path} has no nn.Linear layers")
    return linears


def image_inputs(processor: Any, images: Sequence[Any]) -> dict[str, torch.Tensor]:
    """The image processor's tensors for `images` (PIL), as the model's processor would produce them.

    The processor's own image defaults are applied (InternVL tiles with `crop_to_patches`, LLaVA-NeXT pads);
    without them the image processor alone would feed the model different crops than it sees in use.
    """
    defaults = dict(getattr(processor, "images_kwargs", None) or {})
    return dict(processor.image_processor(prepare_images(processor, images), return_tensors="pt", **defaults))


def _split_counts(model: nn.Module, inputs: Mapping[str, torch.Tensor], n_rows: int) -> list[int]:
    """Projector rows per image, for the family's batching of images into the projector call."""
    kind = model.config.model_type
    if kind == "llava_next":
        from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

        cfg = model.config
        crops = [
            image_size_to_num_patches(
                image_size=s, grid_pinpoints=cfg.image_grid_pinpoints, patch_size=cfg.vision_config.image_size
            )
            for s in inputs["image_sizes"]
        ]
        per_crop = n_rows // sum(crops)
        return [c * per_crop for c in crops]
    if kind in ("qwen2_vl", "qwen2_5_vl"):
        merge = model.model.visual.spatial_merge_size
        return (inputs["image_grid_thw"].prod(-1) // merge**2).tolist()
    if kind == "internvl":
        tiles = inputs["num_patches"].tolist()
        per_tile = n_rows // sum(tiles)
        return [t * per_tile for t in tiles]
    n_images = inputs["pixel_values"].shape[0]
    return [n_rows // n_images] * n_images


def _qwen_rows(
    model: nn.Module, inputs: Mapping[str, torch.Tensor], v: torch.Tensor, e: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merger input (P, C) → (P / m², m²·C) token rows; Qwen2.5-VL rows back from window order."""
    visual = model.model.visual
    v = v.reshape(-1, visual.merger.hidden_size)  # (T, m²·C): the view the merger's MLP reads
    if model.config.model_type == "qwen2_5_vl":
        from transformers.vision_utils import get_vision_window_index

        window_index, _ = get_vision_window_index(
            inputs["image_grid_thw"],
            spatial_merge_size=visual.spatial_merge_size,
            window_size=visual.window_size,
            patch_size=visual.patch_size,
        )
        order = torch.argsort(window_index)
        v, e = v[order], e[order]
    return v, e


@torch.no_grad()
def projector_features(
    model: nn.Module, inputs: Mapping[str, torch.Tensor], *, on_device: bool = False
) -> ProjectorFeatures:
    """v and E for a batch of images (`image_inputs` output), through the model's own vision path; float32,
    on the CPU, or on the projector's device with `on_device` (the drift pass reduces them there)."""
    if model.config.model_type not in ("llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "internvl"):
        raise NotImplementedError(f"projector activations for model_type {model.config.model_type!r}")
    _, proj = find_projector(model)
    captured: dict[str, torch.Tensor] = {}

    def hook(_module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        captured["v"], captured["e"] = args[0], output

    handle = proj.register_forward_hook(hook)
    try:
        # on the projector's device and in its dtype (the model's, or the visual path's alone)
        model.get_image_features(**to_device({k: v for k, v in inputs.items() if k in _FEATURE_KEYS}, proj))
    finally:
        handle.remove()
    v, e = captured["v"], captured["e"]
    if model.config.model_type in ("qwen2_vl", "qwen2_5_vl"):
        v, e = _qwen_rows(model, inputs, v, e)
    v = v.reshape(-1, v.shape[-1]).float()  # (R, D_in)
    e = e.reshape(-1, e.shape[-1]).float()  # (R, D_out)
    if not on_device:  # on the CPU for the audit's float64 statistics
        v, e = v.cpu(), e.cpu()
    counts = _split_counts(model, inputs, e.shape[0])
    return ProjectorFeatures(list(v.split(counts)), list(e.split(counts)))


@torch.no_grad()
def apply_projector(model: nn.Module, v: torch.Tensor, *, on_device: bool = False) -> torch.Tensor:
    """E = P(v) for token rows v (T, D_in) as `projector_features` returns them: the projector alone.

    Used to separate the projector's own change from the vision tower's (P1(v0) − P0(v0) vs. the full ΔE).
    float32, on the CPU, or on the projector's device with `on_device`.
    """
    _, proj = find_projector(model)
    v = to_device(v, proj)
    if model.config.model_type in ("qwen2_vl", "qwen2_5_vl"):
        context = proj.ln_q.weight.shape[0]
        e = proj(v.reshape(-1, context)).float()  # (T, D_out): the merger regroups the rows itself
    else:
        e = proj(v).float()  # (T, D_out)
    return e if on_device else e.cpu()
