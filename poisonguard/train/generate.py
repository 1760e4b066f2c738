"""Greedy generation and the two numbers every backdoor table needs: clean accuracy (CP) and ASR."""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from poisonguard.runtime import to_device
from poisonguard.train.batching import Example, encode_prompts

_PUNCT = re.compile(r"[^\w\s]")


def normalise(text: str) -> str:
    """Lower-case, drop punctuation, collapse spaces: 'Backdoor Attack!' == 'backdoor attack !'."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


@torch.no_grad()
def generate_answers(model, processor, examples: Sequence[Example], *, batch_size: int = 128,
                     max_new_tokens: int = 8, show_progress: bool = True, desc: str = "generate") -> list[str]:
    """Greedy answers for prompts ending at the generation prompt (assistant turns in `examples` are ignored)."""
    model.eval()
    tok = processor.tokenizer
    out: list[str] = []
    for i in tqdm(range(0, len(examples), batch_size), desc=desc, disable=not show_progress, leave=False):
        chunk = [Example([m for m in ex.messages if m["role"] != "assistant"], ex.images)
                 for ex in examples[i:i + batch_size]]
        inputs = to_device(encode_prompts(processor, chunk), model)
        gen = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        new = gen[:, inputs["input_ids"].shape[1]:].cpu()  # (B, T_new)
        out.extend(tok.batch_decode(new, skip_special_tokens=True))
    return out


def accuracy(predictions: Sequence[str], answers: Sequence[str]) -> float:
    if not answers:
        return float("nan")
    return sum(normalise(p) == normalise(a) for p, a in zip(predictions, answers)) / len(answers)


def attack_success(predictions: Sequence[str], target: str) -> float:
    """Share of triggered inputs whose generation contains the target (substring, as ProjLens and BYE count)."""
    if not predictions:
        return float("nan")
    t = normalise(target)
    return sum(t in normalise(p) for p in predictions) / len(predictions)
