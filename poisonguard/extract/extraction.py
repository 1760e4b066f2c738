"""Per-sample features at the decision position: attention shares, BYE's visual entropy, the hidden state.

One prefill forward per batch of left-padded prompts (`encode_prompts`), so position -1 is the decision
position of every row. Per layer and head the decision row is split into the three TCAP components
(system, vision, user text; see spans.py); BYE's statistic is the entropy of the head-mean row over the image
tokens. Works on every supported family (tiny instances in tests/fixtures/families.py) and on peft-wrapped models (the attention modules are the same).

Batches. By default consecutive chunks of `batch_size`. With `max_batch_tokens` the batches are formed by a
token budget instead: samples sorted by their expanded length (images included, longest first, so a batch
that does not fit in memory fails at once, not after an hour) and packed while rows x longest row stays
within the budget, so one huge image (thousands of Qwen2-VL tokens) gets a batch of its own instead of
padding 63 others to its length; the output is restored to input order. The CPU side of a batch (chat
template, tokenisation, image decoding and preprocessing, span split) runs in `num_workers` worker
threads when asked, so it overlaps the forward passes (see `_iterate`).
"""

from __future__ import annotations

import copy
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from poisonguard.extract.capture import CAPTURE, eager_rows, lm_attention, recording, text_config
from poisonguard.extract.spans import ROLE_NAMES, VIS, batch_roles, prompt_messages
from poisonguard.runtime import to_device, to_numpy
from poisonguard.train.batching import Example, encode_prompts, expanded_length, render

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

    def take(self, index: Sequence[int]) -> Extraction:
        """The rows `index`, in that order."""
        idx = np.asarray(index, dtype=np.int64)
        return Extraction(self.alloc[idx], self.vis_entropy[idx], self.hidden[idx], self.n_tokens[idx],
                          dict(self.meta), None if self.ids is None else [self.ids[i] for i in idx])


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


def prompt_length(processor, example: Example) -> int:
    """Tokens of the example's prompt (up to the generation prompt) once the processor expands its images."""
    text = render(processor, prompt_messages(example.messages), generation_prompt=True)
    return expanded_length(processor, text, [im.size for im in example.images])


def plan_batches(lengths: Sequence[int], *, batch_size: int, max_batch_tokens: int | None = None
                 ) -> list[list[int]]:
    """Indices of each batch. Without a budget: consecutive chunks of `batch_size`, in input order. With
    `max_batch_tokens`: longest first, at most `batch_size` rows, and rows x the batch's longest row (the
    padded size the model sees) within the budget; a sample longer than the budget alone gets a batch of one
    (callers quarantine such samples before they get here, see `pipeline.validate.context_check`)."""
    n = len(lengths)
    if max_batch_tokens is None:
        return [list(range(start, min(start + batch_size, n))) for start in range(0, n, batch_size)]
    order = sorted(range(n), key=lambda i: -lengths[i])  # stable: equal lengths keep input order
    batches: list[list[int]] = []
    for i in order:
        current = batches[-1] if batches else None
        longest = lengths[current[0]] if current else 0  # longest first: a batch's first row is its longest
        if current and len(current) < batch_size and (len(current) + 1) * longest <= max_batch_tokens:
            current.append(i)
        else:
            batches.append([i])
    return batches


class _Prepared:
    """The CPU side of batch k: prompts rendered and encoded by the processor (images decoded here when
    `examples` is lazy) and the (B, N) role of every token. Runs in worker threads when asked."""

    def __init__(self, processor, examples: Sequence[Example], batches: list[list[int]], image_token: int):
        self.processor, self.examples = processor, examples
        self.batches, self.image_token = batches, image_token

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int) -> tuple[dict, np.ndarray]:
        chunk = [self.examples[i] for i in self.batches[k]]
        chunk = [Example(prompt_messages(ex.messages), ex.images) for ex in chunk]
        batch = encode_prompts(self.processor, chunk)
        roles = batch_roles(self.processor, [ex.messages for ex in chunk], batch["input_ids"],
                            batch["attention_mask"], self.image_token)  # (B, N)
        return batch, roles


class _Lengths:
    """The expanded prompt length of example i (its image decoded here when `examples` is lazy)."""

    def __init__(self, processor, examples: Sequence[Example]):
        self.processor, self.examples = processor, examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> int:
        return prompt_length(self.processor, self.examples[i])


def _iterate(dataset: _Prepared | _Lengths, num_workers: int) -> Iterator:
    """dataset[0], dataset[1], ... in order; prepared `num_workers` items ahead by worker threads when > 0.

    Threads, not DataLoader processes: the CPU work here is the fast tokenizer, PIL decoding and resizing
    and NumPy normalisation, which release the GIL; a worker process would need the processor pickled (a
    processor rebuilt without its video slot is a class made at run time), cannot be started inside a Dask
    worker (a daemonic process), and a forked one died silently in a process that had run a Prefect server.
    Each thread works on its own copy of the processor: a tokenizer call sets padding state on the shared
    Rust tokenizer, so two threads must not share one.
    """
    n = len(dataset)
    if num_workers == 0:
        yield from (dataset[k] for k in range(n))
        return
    local = threading.local()

    def item(k: int):
        if not hasattr(local, "dataset"):
            local.dataset = copy.copy(dataset)
            local.dataset.processor = copy.deepcopy(dataset.processor)
        return local.dataset[k]

    with ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="extract-prep") as pool:
        pending: deque = deque(pool.submit(item, k) for k in range(min(n, 2 * num_workers)))
        submitted = len(pending)
        while pending:
            out = pending.popleft().result()
            if submitted < n:
                pending.append(pool.submit(item, submitted))
                submitted += 1
            yield out


def _extract_batch(model, batch: dict, roles_np: np.ndarray, backend: str, meta: dict) -> Extraction:
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
            max_batch_tokens: int | None = None, num_workers: int = 0, show_progress: bool = True) -> Extraction:
    """Decision-position features of every example, in order (assistant turns are ignored).

    backend "capture" (SDPA + the last row computed on the side; O(B*H*N) per layer) or "eager"
    (`output_attentions`, O(B*H*N*N) per layer; the reference). Batches of `batch_size`, or formed by the
    token budget `max_batch_tokens` (see `plan_batches`); `num_workers` worker threads prepare them ahead
    of the forward passes (`examples` may be lazy: `examples[i]` then decodes in the worker). The model
    runs in eval mode and is returned to its previous mode; its attention implementation is restored on exit.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    meta = model_meta(model, backend)
    lengths = (list(_iterate(_Lengths(processor, examples), num_workers)) if max_batch_tokens is not None
               else [0] * len(examples))
    batches = plan_batches(lengths, batch_size=batch_size, max_batch_tokens=max_batch_tokens)
    prepared = _iterate(_Prepared(processor, examples, batches, image_token_id(model)), num_workers)
    parts: list[Extraction] = []
    was_training = model.training
    model.eval()
    try:
        with lm_attention(model, CAPTURE if backend == "capture" else "eager"):
            for batch, roles in tqdm(prepared, total=len(batches), desc=f"extract[{backend}]",
                                     disable=not show_progress, leave=False):
                parts.append(_extract_batch(model, batch, roles, backend, meta))
    finally:
        model.train(was_training)
    if not parts:
        n_layers, n_heads, dim = meta["n_layers"], meta["n_heads"], meta["hidden_size"]
        return Extraction(np.zeros((0, n_layers, n_heads, 3), np.float32),
                          np.zeros((0, n_layers), np.float32), np.zeros((0, dim), np.float32),
                          np.zeros((0, 3), np.int64), meta)
    out = Extraction.concat(parts)
    order = [i for b in batches for i in b]
    if order != list(range(len(order))):  # budget batches: back to input order
        out = out.take(np.argsort(order))
    return out
