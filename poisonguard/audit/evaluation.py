"""Benchmark side of the weight audit: CP and ASR of rank-k edited projectors (reads the known trigger).

Why (ProjLens, research/projlens.md §3.3–3.5): whether the top-k components of ΔW *are* the backdoor is
tested by behaviour: removal should drop ASR at little clean-accuracy (CP) cost, reconstruction into the base
projector should bring ASR back. Only a benchmark knows the trigger, so this never runs on customer data.
The test prompts are built once and reused for every edited model.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from poisonguard.audit.weights import EditMode, LayerDelta, rank_k_edited
from poisonguard.train.batching import Example
from poisonguard.train.examples import to_examples
from poisonguard.train.generate import accuracy, attack_success, generate_answers


@dataclass
class EvalSet:
    """Clean test prompts with their answers, and the same test set triggered (answer ≠ target)."""

    clean: list[Example]
    answers: list[str]
    triggered: list[Example]
    attack: str
    target: str


def build_eval_set(
    test_path: str | Path,
    attack: str,
    *,
    target: str | None = None,
    params: Any = None,
    max_samples: int | None = None,
) -> EvalSet:
    """From a test file (LLaVA JSON / HF messages) and an attack name; the first `max_samples` usable ones."""
    from poisonguard.attacks import get_attack, trigger_examples
    from poisonguard.data.loading import load_checked

    test = load_checked(test_path)
    samples = test.ok[:max_samples] if max_samples else test.ok
    load = test.image_loader(cache_size=4096)
    spec = get_attack(attack)
    if spec.fixed_targets:  # several targets or a mapping: one `target` string cannot score them
        raise ValueError(f"the audit's ASR counts one target; {attack!r} has one per trigger or a mapping "
                         "(use poisonguard.train.evaluate for its ASR)")
    tgt = target or spec.default_target
    triggered = trigger_examples(samples, attack, params, load, target=tgt)
    return EvalSet(
        clean=to_examples(samples, load, prompt_only=True),
        answers=[s.answer for s in samples],
        triggered=[Example(t.sample.messages(upto_first_answer=True)[:-1], t.images) for t in triggered],
        attack=attack,
        target=tgt,
    )


def evaluate_model(model: nn.Module, processor: Any, evalset: EvalSet) -> dict[str, float]:
    """CP (exact answer on clean prompts) and ASR (target in the answer to triggered prompts), as
    `poisonguard.train.evaluate.evaluate_files` counts them."""
    clean = generate_answers(model, processor, evalset.clean, show_progress=False)
    trig = generate_answers(model, processor, evalset.triggered, show_progress=False, max_new_tokens=16)
    return {"cp": accuracy(clean, evalset.answers), "asr": attack_success(trig, evalset.target)}


def rank_k_table(
    base: nn.Module,
    finetuned: nn.Module,
    processor: Any,
    evalset: EvalSet,
    deltas: dict[str, LayerDelta],
    ks: Iterable[int],
    layer_sets: dict[str, Sequence[str]],
    modes: Sequence[EditMode] = ("remove", "reconstruct"),
    *,
    show_progress: bool = False,
) -> list[dict[str, Any]]:
    """One row per (mode, layer set, k): CP and ASR of the edited model (ProjLens's ablation / injection).

    Each edit changes the host's projector in place and restores it (`rank_k_edited`): no model copies."""
    grid = [(mode, name, layers, int(k)) for mode in modes for name, layers in layer_sets.items() for k in ks]
    rows = []
    for mode, set_name, layers, k in tqdm(grid, desc="rank-k edits", disable=not show_progress, leave=False):
        with rank_k_edited(base, finetuned, k, layers=layers, mode=mode, deltas=deltas) as model:
            rows.append({"mode": mode, "layers": set_name, "k": k, **evaluate_model(model, processor, evalset)})
    return rows
