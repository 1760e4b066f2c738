"""Attention rows of the decision position, without materialising (B, H, N, N) attention matrices.

Why: TCAP and BYE only need, per layer, the softmax row of the last prompt position (the one whose logits
emit the first answer token). `output_attentions=True` forces eager attention and keeps a full (B, H, N, N)
matrix per layer; at LLaVA-1.5 sizes that is ~0.9 GB per sample. The capture path instead registers an
attention function with transformers' `AttentionInterface` that runs the normal SDPA kernel (so the model's
outputs are untouched) and, on the side, computes only the last query row from q and k (after RoPE, which the
function receives) and the mask it receives: O(B*H*N) memory per layer.

The function is installed on the language model only (per-sub-config `set_attn_implementation`); the vision
tower keeps its own implementation. Rows go to the `RowRecorder` bound in a `ContextVar`, so a forward outside
`capture_rows` (or in another thread) records nothing and behaves exactly like SDPA.

The eager reference path (`eager_rows`) reads `[:, :, -1, :]` of `output_attentions`; tests check both agree.

Under `torch.compile` (`--compile`, `poisonguard.extract.compiled`) the capture function runs outside the
compiled graphs (`torch.compiler.disable`): TorchDynamo cannot trace the `ContextVar` lookup that finds the
recorder, and a traced recorder would be baked into the graph. Each layer's attention is one deliberate graph
break; norms, projections, RoPE and MLPs around it are compiled.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch

CAPTURE = "pg_capture"

_ACTIVE: ContextVar[RowRecorder | None] = ContextVar("poisonguard_row_recorder", default=None)
_SWITCH_LOCK = threading.Lock()


@dataclass
class _Switch:
    implementation: str  # what the language model runs now
    holders: int  # open `lm_attention` blocks sharing the switch
    restore: str  # what it ran before


_SWITCHED: dict[int, _Switch] = {}  # keyed by id(text config)


class RowRecorder:
    """Decision-position rows of one forward pass, keyed by the attention module's `layer_idx`."""

    def __init__(self) -> None:
        self.rows: dict[int, torch.Tensor] = {}

    def record(self, layer_idx: int | None, row: torch.Tensor) -> None:
        if layer_idx is None:
            raise RuntimeError("attention module without layer_idx: cannot place its row")
        if layer_idx in self.rows:
            raise RuntimeError(f"layer {layer_idx} recorded twice in one forward (reuse of a recorder?)")
        self.rows[layer_idx] = row

    def stacked(self, n_layers: int) -> torch.Tensor:
        """(B, L, H, N) fp32; raises unless exactly layers 0..n_layers-1 were seen."""
        if sorted(self.rows) != list(range(n_layers)):
            raise RuntimeError(f"captured layers {sorted(self.rows)}, expected 0..{n_layers - 1}")
        return torch.stack([self.rows[i] for i in range(n_layers)], dim=1)


def decision_row(query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None,
                 scaling: float | None) -> torch.Tensor:
    """Softmax attention row of the last query position, in fp32.

    query (B, H, Nq, d) and key (B, Hkv, N, d) are after RoPE; with GQA, query head h reads key head
    h // (H / Hkv), which is what `repeat_kv` does. `attention_mask` is what the attention function receives:
    None (pure causal: the last query sees every key), boolean (True = attend), or additive float.
    Returns (B, H, N).
    """
    b, h, _, d = query.shape
    h_kv, n = key.shape[1], key.shape[2]
    q = query[:, :, -1, :].float().reshape(b, h_kv, h // h_kv, d)  # (B, Hkv, G, d)
    scores = torch.einsum("bkgd,bknd->bkgn", q, key.float()).reshape(b, h, n)  # (B, H, N)
    scores = scores * (scaling if scaling is not None else d ** -0.5)
    if attention_mask is not None:
        m = attention_mask[:, :, -1, :n]  # (B, 1 or H, N)
        if m.dtype == torch.bool:
            scores = scores.masked_fill(~m, float("-inf"))
        else:
            scores = scores + m.float()
    return torch.softmax(scores, dim=-1)  # (B, H, N)


@torch.compiler.disable
def _capture_attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
    """SDPA attention that also hands the decision-position row to the active recorder, if any."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    recorder = _ACTIVE.get()
    if recorder is not None:
        recorder.record(getattr(module, "layer_idx", None), decision_row(query, key, attention_mask, scaling))
    return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)


def register() -> None:
    """Register the capture function and its mask builder (idempotent).

    The mask builder matters: for an implementation name missing from `AttentionMaskInterface`, transformers
    builds no mask at all (no causal, no padding mask), so SDPA's own boolean mask builder is registered too.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(CAPTURE, _capture_attention)
    AttentionMaskInterface.register(CAPTURE, sdpa_mask)


def text_config(model):
    """The language model's config (works through a peft wrapper, which forwards attribute access)."""
    return model.config.get_text_config()


def _text_config_key(model) -> str | None:
    """The sub-config name of the language model (e.g. 'text_config'), None for a text-only model."""
    config, text = model.config, text_config(model)
    for key in getattr(config, "sub_configs", {}):
        if getattr(config, key, None) is text:
            return key
    return None


def _set_lm_attention(model, implementation: str) -> None:
    key = _text_config_key(model)
    model.set_attn_implementation(implementation if key is None else {key: implementation})
    if text_config(model)._attn_implementation != implementation:
        raise RuntimeError(f"could not set the language model's attention to {implementation!r}")


@contextmanager
def lm_attention(model, implementation: str) -> Iterator[None]:
    """Switch the language model (never the vision tower) to `implementation`, restoring it on exit.

    Nested or concurrent holders of the same implementation share the switch; asking for a different one
    while it is held raises instead of silently changing another thread's extraction.
    """
    if implementation == CAPTURE:
        register()
    cid = id(text_config(model))
    with _SWITCH_LOCK:
        held = _SWITCHED.get(cid)
        if held is None:
            original = text_config(model)._attn_implementation
            _set_lm_attention(model, implementation)
            _SWITCHED[cid] = _Switch(implementation, 1, original)
        elif held.implementation != implementation:
            raise RuntimeError(f"the model's attention is held as {held.implementation!r}; "
                               f"cannot switch to {implementation!r}")
        else:
            held.holders += 1
    try:
        yield
    finally:
        with _SWITCH_LOCK:
            held = _SWITCHED[cid]
            held.holders -= 1
            if held.holders == 0:
                del _SWITCHED[cid]
                _set_lm_attention(model, held.restore)


@contextmanager
def recording() -> Iterator[RowRecorder]:
    """Bind a fresh recorder for the forwards run in this block, in this thread or task.

    The model must already be switched with `lm_attention(model, CAPTURE)`; otherwise nothing is recorded
    and `RowRecorder.stacked` raises. Use one recorder per forward (it refuses a layer seen twice).
    """
    recorder = RowRecorder()
    token = _ACTIVE.set(recorder)
    try:
        yield recorder
    finally:
        _ACTIVE.reset(token)


@contextmanager
def capture_rows(model) -> Iterator[RowRecorder]:
    """Switch `model` to the capture function and record one forward's decision rows.

    Switching walks the module tree; for many forwards hold `lm_attention(model, CAPTURE)`
    once and open a `recording()` per forward, as `extract` does.
    """
    with lm_attention(model, CAPTURE), recording() as recorder:
        yield recorder


def eager_rows(outputs, n_layers: int) -> torch.Tensor:
    """(B, L, H, N) fp32 from the `attentions` of an eager forward with `output_attentions=True`."""
    attentions = outputs.attentions
    if attentions is None or len(attentions) != n_layers:
        got = None if attentions is None else len(attentions)
        raise RuntimeError(f"expected {n_layers} attention maps from the eager forward, got {got}")
    return torch.stack([a[:, :, -1, :].float() for a in attentions], dim=1)
