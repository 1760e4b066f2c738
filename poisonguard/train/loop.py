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
from tqdm.auto import tqdm

from poisonguard.runtime import to_device
from poisonguard.train.batching import Example, encode_for_training


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
) -> dict:
    """Train `model` on `batches` (an iterable of example lists) for `total_steps` optimiser steps."""
    params = trainable_parameters(model)
    if not params:
        raise ValueError("no trainable parameters: check the freeze settings")
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
        inputs = to_device(encode_for_training(processor, list(batch)), model)
        out = model(**inputs)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, optim.grad_clip)
        opt.step()
        sched.step()
        loss = float(out.loss.detach())
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
