"""Answer-span log-likelihoods: each model's log-probability of every token of a sample's own answers,
teacher-forced, stored per model so that the detector differences them (`detect.span`).

Why: the decision features read only the state that emits the first answer token. A backdoor that keeps the
correct first words and appends or swaps text later (content injection, concept substitution) leaves that
state where it was; it shows in how much more likely the fine-tuned model finds the *rest* of the dataset
answer than the base model does. Teacher-forcing a dataset answer makes the target words themselves
unusual even for the base model (DESIGN §7), so nothing here is a score on its own: the detector uses
log p_finetuned − log p_base of the same tokens, which is exactly 0 when the base stands in for the
fine-tuned model (the base-model control).

Choices:
- every answer of the conversation (the turns through the last assistant turn), teacher-forced in one forward
  as the fine-tune's loss sees them: a payload can sit in a later answer of a multi-turn sample, and each
  later answer is conditioned on the whole conversation before it (the trigger included). A trailing user
  turn without an answer is dropped;
- at most `max_tokens` answer tokens (the first ones of the conversation; default 64,
  `extract_attention.span_max_tokens`): enough for a sentence-long answer with an appended sentence, and it
  bounds the stored (N, T) arrays; raise it for long multi-turn conversations;
- the answer span is the training loss's span (`encode_for_training`: the answer's tokens and the turn's
  end-of-turn tokens), so an appended payload shows also as an end-of-sequence token the fine-tune no longer
  predicts where the base does;
- logits are computed only at the positions that predict an answer token of some row of the batch
  (`logits_to_keep` as a 1-D tensor, every supported family takes it): a batch of 64 × 1,000 tokens with
  Qwen's 152k vocabulary would otherwise hold ~19 GB of bf16 logits. Those rows become float32
  log-probabilities, so bf16 models lose no precision in the softmax.

Storage: one `span.npz` per model folder (`extract/finetuned/`, `extract/base/`, next to the decision shards),
with a fingerprint of the plan (ids, input digests, model tag, max_tokens); a rerun of the same plan reuses
it, any other plan recomputes it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from poisonguard.atomic import atomic_path
from poisonguard.runtime import model_device_dtype, to_device, to_numpy
from poisonguard.train.batching import IGNORE_INDEX, Example, encode_for_training

SPAN_FILE = "span.npz"
DEFAULT_MAX_TOKENS = 64
SPAN_VERSION = 1
NO_TOKEN = -1  # token id of the padding beyond a sample's answer


@dataclass
class SpanExtraction:
    """Teacher-forced log-probabilities of N samples' answers under one model."""

    logp: np.ndarray  # (N, T) float32: log p(answer token t | prompt, answer tokens < t); NaN beyond the answer
    tokens: np.ndarray  # (N, T) int64: the answer's token ids; NO_TOKEN beyond the answer
    meta: dict = field(default_factory=dict)
    ids: list[str] | None = None

    def __post_init__(self) -> None:
        if self.logp.shape != self.tokens.shape or self.logp.ndim != 2:
            raise ValueError(f"logp {self.logp.shape} and tokens {self.tokens.shape} must be the same (N, T)")
        if not np.array_equal(np.isnan(self.logp), self.tokens == NO_TOKEN):
            raise ValueError("logp must be NaN exactly where tokens are NO_TOKEN (beyond the answer)")


def model_device(model) -> torch.device:
    return model_device_dtype(model)[0]


def answered(messages: list[dict]) -> list[dict] | None:
    """The turns through the last assistant turn; None when the sample has no answer."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    return None if last is None else messages[: last + 1]


def n_answers(messages: list[dict]) -> int:
    return sum(m["role"] == "assistant" for m in messages)


def _images_in(messages: list[dict]) -> int:
    return sum(1 for m in messages if not isinstance(m["content"], str)
               for part in m["content"] if part.get("type") == "image")


@torch.no_grad()
def span_batch(model, processor, examples: Sequence[Example], max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """(logp, tokens), each (B, max_tokens), of the examples' answers under `model` (in eval mode)."""
    b = len(examples)
    logp = np.full((b, max_tokens), np.nan, dtype=np.float32)
    tokens = np.full((b, max_tokens), NO_TOKEN, dtype=np.int64)
    rows, chunk = [], []
    for i, ex in enumerate(examples):
        msgs = answered(ex.messages)
        if msgs is not None:
            rows.append(i)
            chunk.append(Example(msgs, list(ex.images[:_images_in(msgs)])))
    if not chunk:
        return logp, tokens
    batch = encode_for_training(processor, chunk)
    labels = batch.pop("labels")  # (B', S): token ids on the answer, IGNORE_INDEX elsewhere
    target = labels[:, 1:]  # (B', S-1): the token that position s predicts is the one at s + 1
    wanted = [torch.nonzero(row != IGNORE_INDEX).flatten()[:max_tokens] for row in target]  # B' × (t,)
    keep = torch.unique(torch.cat(wanted))  # (P,) sorted: the predicting positions of any row
    logits = model(**to_device(batch, model), use_cache=False,
                   logits_to_keep=keep.to(model_device(model))).logits  # (B', P, V)
    for j, i in enumerate(rows):
        pos = wanted[j]  # (t,) predicting positions of row j
        ids = target[j, pos]  # (t,)
        cols = torch.searchsorted(keep, pos)  # (t,) their columns in `logits`
        lp = torch.log_softmax(logits[j, cols.to(logits.device)].float(), dim=-1)  # (t, V)
        picked = lp.gather(1, ids.to(lp.device)[:, None])[:, 0]  # (t,)
        logp[i, : len(pos)] = to_numpy(picked)
        tokens[i, : len(pos)] = ids.numpy()
    return logp, tokens


def extract_span(model, processor, examples: Sequence[Example], *, max_tokens: int = DEFAULT_MAX_TOKENS,
                 batch_size: int = 16, show_progress: bool = False) -> SpanExtraction:
    """Answer-span log-probabilities of every example (full conversations), in order. The model runs in eval
    mode and is returned to its previous mode."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    was_training = model.training
    model.eval()
    try:
        for start in tqdm(range(0, len(examples), batch_size), desc="span", disable=not show_progress,
                          leave=False):
            parts.append(span_batch(model, processor, examples[start:start + batch_size], max_tokens))
    finally:
        model.train(was_training)
    meta = {"max_tokens": max_tokens, "turns": "all answers", "version": SPAN_VERSION}
    if not parts:
        return SpanExtraction(np.zeros((0, max_tokens), np.float32), np.zeros((0, max_tokens), np.int64), meta)
    return SpanExtraction(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), meta)


def span_fingerprint(ids: Sequence[str], *, tag: str, inputs: Sequence[str] | None, max_tokens: int,
                     multi_answer: bool = False) -> str:
    """Identity of a span extraction: equal only for the same samples, contents, model and cap.

    Version 1 scored the first answer only. On samples with one answer each that is the same computation as
    scoring every answer, so such plans keep their version-1 identity (their stored files stay valid); a plan
    with a multi-answer sample (`multi_answer`) is named by how its turns were scored."""
    plan = {"version": SPAN_VERSION, "ids": [str(i) for i in ids], "tag": tag,
            "inputs": None if inputs is None else list(inputs), "max_tokens": max_tokens}
    if multi_answer:
        plan["turns"] = "all answers"
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()


def save_span(ext: SpanExtraction, ids: Sequence[str], path: str | Path, fingerprint: str) -> None:
    with atomic_path(path, ".npz") as tmp:
        np.savez(tmp, ids=np.asarray(ids, dtype=str), logp=ext.logp, tokens=ext.tokens,
                 meta=np.array(json.dumps(ext.meta, sort_keys=True)), fingerprint=np.array(fingerprint))


def load_span(path: str | Path, *, ids: Sequence[str] | None = None) -> SpanExtraction:
    with np.load(path, allow_pickle=False) as z:
        ext = SpanExtraction(z["logp"], z["tokens"], json.loads(str(z["meta"])), [str(i) for i in z["ids"]])
    if ids is not None and ext.ids != [str(i) for i in ids]:
        raise ValueError(f"{path} covers different samples than asked for; re-run extraction")
    return ext


def _stored_fingerprint(path: Path) -> str | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            return str(z["fingerprint"]) if "fingerprint" in z.files else None
    except (OSError, ValueError, KeyError, EOFError):
        return None


def extract_span_to_dir(model, processor, examples: Sequence[Example], ids: Sequence[str], out_dir: str | Path,
                        *, tag: str = "", inputs: Sequence[str] | None = None,
                        max_tokens: int = DEFAULT_MAX_TOKENS, batch_size: int = 16, show_progress: bool = False,
                        multi_answer: bool | None = None, log=None) -> SpanExtraction:
    """`out_dir/span.npz` of the examples (reused when it was computed for this very plan), and its content.

    `multi_answer`: whether any sample has more than one answer (part of the plan's identity); None reads it
    off `examples`, which decodes every image of a lazy sequence, so callers holding the records pass it."""
    if len(examples) != len(ids):
        raise ValueError(f"{len(examples)} examples but {len(ids)} ids")
    path = Path(out_dir) / SPAN_FILE
    fingerprint = span_fingerprint(ids, tag=tag, inputs=inputs, max_tokens=max_tokens,
                                   multi_answer=any(n_answers(ex.messages) > 1 for ex in examples)
                                   if multi_answer is None else multi_answer)
    if _stored_fingerprint(path) == fingerprint:
        if log:
            log(f"{path}: already extracted for this plan; reused")
        return load_span(path, ids=ids)
    ext = extract_span(model, processor, examples, max_tokens=max_tokens, batch_size=batch_size,
                       show_progress=show_progress)
    save_span(ext, ids, path, fingerprint)
    return SpanExtraction(ext.logp, ext.tokens, ext.meta, [str(i) for i in ids])
