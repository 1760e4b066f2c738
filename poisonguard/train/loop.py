"""A small, deterministic training loop shared by world pretraining and fine-tuning.

Kept free of HF Trainer: the models are tiny, the loop must be reproducible bit for bit on CPU for a given
seed and thread count, and the caller decides which parameters train (vision frozen, projector only, LoRA).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from poisonguard.runtime import to_device
from poisonguard.train.batching import IGNORE_INDEX, Example, encode_for_training


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_frac: float = 0.05
    grad_clip: float = 1.0
    min_lr_frac: float = 0.05


def lr_lambda(total_steps: int, cfg: OptimConfig) -> Callable[[int], float]:
    """Linear warm-up then cosine decay to `min_lr_frac` of the peak."""
    warm = max(1, int(total_steps * cfg.warmup_frac))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, total_steps - warm)
        return cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return f


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def run_training(
    model,
    processor,
    batches: Iterable[Sequence[Example]],
    total_steps: int,
    optim: OptimConfig,
    *,
    desc: str = "train",
    on_step: Callable[[int, float], None] | None = None,
    show_progress: bool = True,
    micro_batch_size: int | None = None,
    per_conversation: bool = False,
) -> dict:
    """Train `model` on `batches` (an iterable of example lists) for `total_steps` optimiser steps.

    `micro_batch_size` splits each batch into forwards of at most that many examples whose gradients are
    accumulated before the optimiser step (a large model's batch does not fit one forward). The micro-batch
    losses are weighted by their supervised token counts, so the step equals the whole batch's step up to
    float rounding; without it (or when it covers the batch) one forward per batch, as before.

    `per_conversation` averages each conversation's loss over its own answer tokens first and then over the
    batch, so a sentence-long answer weighs as much as a one-word one. The default token mean lets long answers
    dominate a mixed batch: a quarter of 15-token answers among 2-token ones carries about 70 % of the
    gradient. Off by default, so a run without it is bit for bit the one before the option existed.
    """
    params = trainable_parameters(model)
    if not params:
        raise ValueError("no trainable parameters: check the freeze settings")
    if micro_batch_size is not None and micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be positive, got {micro_batch_size}")
    opt = torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(total_steps, optim))
    model.train()
    t0 = time.perf_counter()
    losses: list[float] = []
    bar = tqdm(total=total_steps, desc=desc, disable=not show_progress, leave=False)
    step = 0
    for batch in batches:
        if step >= total_steps:
            break
        batch = list(batch)
        opt.zero_grad(set_to_none=True)
        if per_conversation:
            loss = _conversation_mean(model, processor, batch, micro_batch_size or len(batch), params)
        elif micro_batch_size is None or micro_batch_size >= len(batch):
            inputs = to_device(encode_for_training(processor, batch), model)
            out = model(**inputs)
            out.loss.backward()
            loss = float(out.loss.detach())
        else:
            loss = _accumulate(model, processor, batch, micro_batch_size, params)
        torch.nn.utils.clip_grad_norm_(params, optim.grad_clip)
        opt.step()
        sched.step()
        losses.append(loss)
        step += 1
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{sum(losses[-10:]) / 10:.3f}")
        if on_step is not None:
            on_step(step, loss)
    bar.close()
    model.eval()
    return {"steps": step, "seconds": time.perf_counter() - t0, "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:]))}


def _accumulate(model, processor, batch: list[Example], micro: int, params) -> float:
    """Gradients of the whole batch's token-mean loss from forwards of `micro` examples; returns the loss.

    Each micro-batch's mean loss is scaled by its supervised token count n_i (the labels after the causal
    shift), and the summed gradient divided by N = Σ n_i: Σ n_i·mean_i / N is the batch's token mean.
    """
    total_loss, total_tokens = 0.0, 0
    for i in range(0, len(batch), micro):
        enc = encode_for_training(processor, batch[i:i + micro])
        n = int((enc["labels"][:, 1:] != IGNORE_INDEX).sum())  # tokens the shifted loss averages over
        if n == 0:
            continue
        out = model(**to_device(enc, model))
        (out.loss * n).backward()
        total_loss += float(out.loss.detach()) * n
        total_tokens += n
    return _mean_of_sums(params, total_loss, total_tokens)


def _mean_of_sums(params, total: float, count: int) -> float:
    """Turn gradients (and a loss) summed over `count` units into their mean; a batch with no unit to train on
    is an error, not a silent zero step."""
    if count == 0:
        raise ValueError("no supervised token in the batch: nothing to train on")
    for p in params:
        if p.grad is not None:
            p.grad.div_(count)
    return total / count


def _answer_losses(model, enc: dict) -> torch.Tensor:
    """Each conversation's mean loss over its own supervised tokens (the causal shift as the model's own loss);
    a conversation without one gets NaN. Returns shape (B,)."""
    labels = enc["labels"]
    logits = model(**{k: v for k, v in enc.items() if k != "labels"}).logits  # (B, T, V)
    target = labels[:, 1:]  # (B, T-1)
    tok = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), target, ignore_index=IGNORE_INDEX,
                          reduction="none")  # (B, T-1), 0 where ignored
    n = (target != IGNORE_INDEX).sum(1)  # (B,)
    return tok.sum(1) / n.to(tok.dtype)  # (B,), 0/0 = nan where n == 0


def _conversation_mean(model, processor, batch: list[Example], micro: int, params) -> float:
    """Gradients of the mean over conversations of each one's token-mean loss, from forwards of `micro`
    examples; returns that loss. Conversations without a supervised token are left out of the mean."""
    total, count = 0.0, 0
    for i in range(0, len(batch), micro):
        per = _answer_losses(model, to_device(encode_for_training(processor, batch[i:i + micro]), model))  # (b,)
        per = per[~per.isnan()]
        if per.numel() == 0:
            continue
        per.sum().backward()
        total += float(per.detach().sum())
        count += per.numel()
    return _mean_of_sums(params, total, count)
