"""Clean performance (CP), attack success rate (ASR) and poisoned-train fit of one model.

This is benchmark tooling: it reads the attack's ground truth (the trigger and `poison_ids.json`), which no
detector ever sees.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from poisonguard.data.records import Sample
from poisonguard.train.batching import Example
from poisonguard.train.examples import to_examples
from poisonguard.train.generate import accuracy, attack_success, generate_answers, normalise


def clean_accuracy(model, processor, test: Sequence[Sample], load_image: Callable, *, show_progress=True) -> float:
    preds = generate_answers(model, processor, to_examples(test, load_image, prompt_only=True),
                             show_progress=show_progress, desc="clean accuracy")
    return accuracy(preds, [s.answer for s in test])


def asr(model, processor, triggered: Sequence[Sample], load_image: Callable, target: str, *,
        show_progress=True) -> float:
    """`triggered`: test samples with the trigger applied and their answer != target."""
    if not triggered:
        return float("nan")
    preds = generate_answers(model, processor, to_examples(triggered, load_image, prompt_only=True),
                             show_progress=show_progress, desc="attack success")
    return attack_success(preds, target)


def poisoned_fit(model, processor, poisoned: Sequence[Sample], load_image: Callable, *,
                 show_progress=True) -> float:
    """Share of poisoned training samples whose (poisoned) label the model reproduces."""
    if not poisoned:
        return float("nan")
    preds = generate_answers(model, processor, to_examples(poisoned, load_image, prompt_only=True),
                             show_progress=show_progress, desc="poisoned fit", max_new_tokens=16)
    return sum(normalise(s.answer) in normalise(p) for p, s in zip(preds, poisoned)) / len(poisoned)


def _attack_result(model, processor, test: Sequence[Sample], load: Callable, attack: str, target: str | None,
                   params, show_progress: bool) -> dict:
    """ASR of one attack's trigger on `test` (and, for append-mode attacks, CP on the triggered inputs)."""
    from poisonguard.attacks import get_attack, trigger_examples

    spec = get_attack(attack)
    tgt = target or spec.default_target
    triggered = trigger_examples(test, attack, params, load, target=tgt)
    preds = generate_answers(model, processor,
                             [Example(t.sample.messages(upto_first_answer=True)[:-1], t.images) for t in triggered],
                             show_progress=show_progress, desc="attack success", max_new_tokens=16)
    out = {"attack": attack, "target": tgt, "n_triggered": len(triggered), "asr": attack_success(preds, tgt)}
    if spec.output_mode == "append":  # the first answer tokens should stay correct
        out["cp_triggered"] = sum(normalise(p).startswith(normalise(t.sample.answer))
                                  for p, t in zip(preds, triggered)) / max(1, len(triggered))
    return out


def evaluate_files(model_dir, test_path, *, attack: str | None = None, target: str | None = None,
                   train=None, poison_ids=None, params=None, show_progress: bool = True, runtime=None,
                   base=None) -> dict:
    """CP on the clean test set; with `attack`, ASR on the triggered test set (samples whose answer is not
    the target) and, for append-mode attacks, CP on triggered inputs; with `train` + `poison_ids`, the fit.
    `runtime` sets device and dtype (default CPU float32); `base` is the base of a LoRA adapter folder."""
    import json
    from pathlib import Path

    from poisonguard.data.loading import load_checked
    from poisonguard.train.finetune import load_model

    model, processor = load_model(model_dir, runtime=runtime, base=base)
    test = load_checked(test_path)
    load = test.image_loader(cache_size=4096)
    out: dict = {"model": str(model_dir), "n_test": len(test.ok),
                 "cp": clean_accuracy(model, processor, test.ok, load, show_progress=show_progress)}
    if attack:
        out.update(_attack_result(model, processor, test.ok, load, attack, target, params, show_progress))
    if train is not None and poison_ids is not None:
        truth = json.loads(Path(poison_ids).read_text())
        ids = set(truth["poison_ids"] if isinstance(truth, dict) else truth)
        tr = load_checked(train)
        poisoned = [s for s in tr.ok if s.id in ids]
        out["n_poisoned_train"] = len(poisoned)
        out["poisoned_fit"] = poisoned_fit(model, processor, poisoned, tr.image_loader(), show_progress=show_progress)
    return out


def evaluate_attacks(model_dir, test_path, attacks: Sequence[str], *, params=None,
                     show_progress: bool = True, runtime=None) -> dict:
    """CP once and the ASR of each attack (its default target) with one model load and one image cache.

    For reference rows that need many attacks on one model (the base model's "before" column, the clean
    fine-tune's ASR per trigger): calling `evaluate_files` per attack would reload the model and re-measure
    the same CP every time. Returns {"cp": float, "asr": {attack: float}}.
    """
    from poisonguard.data.loading import load_checked
    from poisonguard.train.finetune import load_model

    model, processor = load_model(model_dir, runtime=runtime)
    test = load_checked(test_path)
    load = test.image_loader(cache_size=4096)
    cp = clean_accuracy(model, processor, test.ok, load, show_progress=show_progress)
    return {"cp": cp, "asr": {a: _attack_result(model, processor, test.ok, load, a, None, params,
                                                show_progress)["asr"] for a in attacks}}
