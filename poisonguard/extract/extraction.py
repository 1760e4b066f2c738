"""Per-sample features at the decision position: attention shares, BYE's visual entropy, the hidden state.

One prefill forward per batch of left-padded prompts (`encode_prompts`), so position -1 is the decision
position of every row. Per layer and head the decision row is split into the three TCAP components
(system, vision, user text; see spans.py); BYE's statistic is the entropy of the head-mean row over the image
tokens. Works on every supported family (tiny instances in tests/fixtures/families.py) and on peft-wrapped models (the attention modules are the same).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from poisonguard.extract.capture import CAPTURE, eager_rows, lm_attention, recording, text_config
from poisonguard.extract.spans import ROLE_NAMES, VIS, batch_roles, prompt_messages
from poisonguard.runtime import to_device, to_numpy
from poisonguard.train.batching import Example, encode_prompts

BACKENDS = ("capture", "eager")


@dataclass
class Extraction:
    """Features of N samples for a model with L layers of H heads and hidden size D."""

    alloc: np.ndarray  # (N, L, H, 3) float32: attention shares (sys, vis, txt) of the decision row, sum 1
    vis_entropy: np.ndarray  # (N, L) float32: entropy of the head-mean row renormalised over image tokens
    hidden: np.ndarray  # (N, D) float32: final normed hidden state at the decision position (LM head input)
    n_tokens: np.ndarray  # (N, 3) int64: number of (sys, vis, txt) tokens
    meta: dict = field(default_factory=dict)
    ids: list[str] | None = None

    def __len__(self) -> int:
        return len(self.alloc)

    @staticmethod
    def concat(parts: Sequence[Extraction]) -> Extraction:
        if not parts:
            raise ValueError("nothing to concatenate")
        ids = None if any(p.ids is None for p in parts) else [i for p in parts for i in p.ids]
        return Extraction(
            alloc=np.concatenate([p.alloc for p in parts]),
            vis_entropy=np.concatenate([p.vis_entropy for p in parts]),
            hidden=np.concatenate([p.hidden for p in parts]),
            n_tokens=np.concatenate([p.n_tokens for p in parts]),
            meta=dict(parts[0].meta), ids=ids,
        )


def image_token_id(model) -> int:
    config = model.config
    tid = getattr(config, "image_token_id", None)
    return int(tid if tid is not None else config.image_token_index)


def model_meta(model, backend: str) -> dict:
    import transformers

    text = text_config(model)
    return {
        "family": model.config.model_type,
        "backend": backend,
        "shares": list(ROLE_NAMES),  # order of alloc's last axis
        "dtype": str(model.get_input_embeddings().weight.dtype).removeprefix("torch."),
        "n_layers": int(text.num_hidden_layers),
        "n_heads": int(text.num_attention_heads),
        "hidden_size": int(text.hidden_size),
        "transformers": transformers.__version__,
    }


def shares(rows: torch.Tensor, roles: torch.Tensor) -> torch.Tensor:
    """(B, L, H, 3) attention mass per role from rows (B, L, H, N) and roles (B, N); padding gets none."""
    onehot = torch.stack([roles == r for r in range(3)], dim=-1).to(rows.dtype)  # (B, N, 3)
    return torch.einsum("blhn,bnc->blhc", rows, onehot)


def visual_entropy(rows: torch.Tensor, roles: torch.Tensor) -> torch.Tensor:
    """(B, L) BYE entropy (natural log) of the head-mean row over image tokens, renormalised over them;
    NaN for a sample without image tokens."""
    is_vis = (roles == VIS).to(rows.dtype)[:, None, :]  # (B, 1, N)
    mass = rows.mean(dim=2) * is_vis  # (B, L, N)
    p = mass / mass.sum(dim=-1, keepdim=True)  # (B, L, N); NaN rows where there is no image token
    entropy = -torch.special.xlogy(p, p).sum(dim=-1)  # (B, L)
    return torch.where(is_vis.sum(dim=-1) > 0, entropy, torch.full_like(entropy, float("nan")))


@torch.no_grad()
def _forward(model, inputs: dict, backend: str, n_layers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Decision rows (B, L, H, N) and final hidden states (B, D), both fp32, from one prefill forward.

    The caller holds the language model's attention switch (`lm_attention`) for the backend.
    """
    seen: list[torch.Tensor] = []
    hook = model.get_output_embeddings().register_forward_pre_hook(
        lambda _module, args: seen.append(args[0][:, -1, :].float()))  # LM head input (B, D)
    try:
        if backend == "capture":
            with recording() as recorder:
                model(**inputs, use_cache=False, logits_to_keep=1)
            rows = recorder.stacked(n_layers)
        else:
            out = model(**inputs, use_cache=False, logits_to_keep=1, output_attentions=True)
            rows = eager_rows(out, n_layers)
    finally:
        hook.remove()
    return rows, seen[-1]


def _extract_batch(model, processor, examples: Sequence[Example], backend: str, meta: dict) -> Extraction:
    chunk = [Example(prompt_messages(ex.messages), ex.images) for ex in examples]
    batch = encode_prompts(processor, chunk)
    roles_np = batch_roles(processor, [ex.messages for ex in chunk], batch["input_ids"],
                           batch["attention_mask"], image_token_id(model))  # (B, N)
    rows, hidden = _forward(model, to_device(batch, model), backend, meta["n_layers"])
    roles = torch.from_numpy(roles_np).to(rows.device)  # (B, N)
    return Extraction(
        alloc=to_numpy(shares(rows, roles)).astype(np.float32),
        vis_entropy=to_numpy(visual_entropy(rows, roles)).astype(np.float32),
        hidden=to_numpy(hidden).astype(np.float32),
        n_tokens=np.stack([(roles_np == r).sum(axis=1) for r in range(3)], axis=1).astype(np.int64),
        meta=meta,
    )


def extract(model, processor, examples: Sequence[Example], *, batch_size: int = 16, backend: str = "capture",
            show_progress: bool = True) -> Extraction:
    """Decision-position features of every example, in order (assistant turns are ignored).

    backend "capture" (SDPA + the last row computed on the side; O(B*H*N) per layer) or "eager"
    (`output_attentions`, O(B*H*N*N) per layer; the reference). The model runs in eval mode and is returned
    to its previous mode; its attention implementation is restored on exit.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    meta = model_meta(model, backend)
    parts: list[Extraction] = []
    was_training = model.training
    model.eval()
    try:
        with lm_attention(model, CAPTURE if backend == "capture" else "eager"):
            for start in tqdm(range(0, len(examples), batch_size), desc=f"extract[{backend}]",
                              disable=not show_progress, leave=False):
                chunk = examples[start:start + batch_size]
                parts.append(_extract_batch(model, processor, chunk, backend, meta))
    finally:
        model.train(was_training)
    if not parts:
        n_layers, n_heads, dim = meta["n_layers"], meta["n_heads"], meta["hidden_size"]
        return Extraction(np.zeros((0, n_layers, n_heads, 3), np.float32),
                          np.zeros((0, n_layers), np.float32), np.zeros((0, dim), np.float32),
                          np.zeros((0, 3), np.int64), meta)
    return Extraction.concat(parts)
