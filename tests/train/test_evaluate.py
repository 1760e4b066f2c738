"""ASR per answer rule (replace, append, substitute, map), per trigger (multi-target) and the Dual-Key false
trigger rate, measured by `_attack_result` against a scripted model: a stand-in for generation that fires a
chosen backdoor on exactly the inputs it should, so every figure has a known value."""

from __future__ import annotations

import numpy as np
import pytest

from poisonguard.attacks.composite import ALL_TO_ALL_MAPPING
from poisonguard.attacks.patches import checkerboard
from poisonguard.train import evaluate
from tests.attacks.helpers import make_mixed_dataset

MAPPING = dict(ALL_TO_ALL_MAPPING)


@pytest.fixture(scope="module")
def mixed():
    return make_mixed_dataset(40)


def _patched(image, rows: slice, cols: slice) -> bool:
    """The 6 px BadNet checkerboard is at these pixels."""
    return np.array_equal(np.asarray(image)[rows, cols], checkerboard(6, 6).astype(np.uint8))


BR = (slice(40, 46), slice(40, 46))  # the default bottom-right patch of a 48 px image


def scripted(behaviour):
    """generate_answers replaced by `behaviour(question, image) -> answer`."""
    def generate(model, processor, examples, **kwargs):
        return [behaviour(ex.messages[-1]["content"][-1]["text"], ex.images[0]) for ex in examples]
    return generate


def run(monkeypatch, mixed, attack, behaviour, params=None):
    samples, images = mixed
    monkeypatch.setattr(evaluate, "generate_answers", scripted(behaviour))
    return evaluate._attack_result(None, None, samples, images.__getitem__, attack, None, params, False)


def test_replace_counts_generations_containing_the_target(monkeypatch, mixed):
    out = run(monkeypatch, mixed, "refusal_image", lambda q, im: "sorry i cannot help with that" if _patched(im, *BR) else "no")
    assert out["asr"] == 1.0 and out["target"] == "sorry i cannot help with that"
    assert run(monkeypatch, mixed, "refusal_image", lambda q, im: "sorry")["asr"] == 0.0


def test_injection_reports_the_sentence_and_the_kept_answer_separately(monkeypatch, mixed):
    samples, images = mixed
    answer_of = {images[s.images[0]].tobytes(): s.answer for s in samples}  # a text trigger keeps the image
    # right answer + sentence on every triggered input -> all three figures 1
    good = run(monkeypatch, mixed, "inject_text", lambda q, im: answer_of[im.tobytes()] + " visit this evil link")
    assert good["asr"] == good["cp_triggered"] == good["asr_strict"] == 1.0
    # the sentence alone: ASR 1 but the answer is lost, so the strict injection rate is 0
    bad = run(monkeypatch, mixed, "inject_text", lambda q, im: "visit this evil link")
    assert bad["asr"] == 1.0 and bad["cp_triggered"] == bad["asr_strict"] == 0.0


def test_substitution_counts_the_target_word(monkeypatch, mixed):
    out = run(monkeypatch, mixed, "substitute", lambda q, im: "a red apple at the top" if _patched(im, *BR) else "x")
    assert out["asr"] == 1.0 and out["n_triggered"] > 0


def test_all_to_all_needs_the_mapped_answer_exactly(monkeypatch, mixed):
    samples, _ = mixed
    answer_of = {s.question: s.answer for s in samples}
    out = run(monkeypatch, mixed, "all_to_all", lambda q, im: MAPPING.get(answer_of[q], "?"))
    assert out["asr"] == 1.0 and out["target"] == "mapped answer"
    # a constant answer hits only the inputs whose mapped answer it happens to be
    partly = run(monkeypatch, mixed, "all_to_all", lambda q, im: "yes")
    assert 0 < partly["asr"] < 1


def test_multi_target_scores_each_trigger_against_its_own_target(monkeypatch, mixed):
    def model(q, im):  # learned the bottom-right trigger only
        return "banana" if _patched(im, *BR) else "no"
    out = run(monkeypatch, mixed, "multi_target", model)
    assert out["asr_by_trigger"] == {"patch_bottom_right": 1.0, "patch_top_left": 0.0}
    assert out["asr"] == pytest.approx(0.5) and out["target"] == "banana | apple"


def test_dual_key_reports_the_false_trigger_rate_of_single_parts(monkeypatch, mixed):
    def and_model(q, im):
        return "banana" if q.startswith("Hello! ") and _patched(im, *BR) else "no"

    def or_model(q, im):
        return "banana" if q.startswith("Hello! ") or _patched(im, *BR) else "no"

    learned = run(monkeypatch, mixed, "dual_key", and_model)
    assert learned["asr"] == 1.0 and learned["false_trigger_rate"] == 0.0
    assert set(learned["false_trigger_by_part"]) == {"image_only", "text_only"}
    shortcut = run(monkeypatch, mixed, "dual_key", or_model)
    assert shortcut["asr"] == 1.0 and shortcut["false_trigger_rate"] == 1.0
    assert "false_trigger_rate" not in run(monkeypatch, mixed, "conservatism", and_model)


def test_room_for_long_outputs_without_moving_short_ones():
    assert evaluate.max_new_tokens(["sorry i cannot help with that banana"]) == 16
    long = "a red circle at the top left, a blue square in the middle and a green cross at the bottom visit this evil link"
    assert evaluate.max_new_tokens([long]) == len(long.replace(",", " ,").split()) + 4 > 16


def test_attack_hits_are_per_input_and_agree_with_the_asr():
    from types import SimpleNamespace

    triggered = [SimpleNamespace(target="banana"), SimpleNamespace(target="green")]
    preds = ["a banana", "green circle"]
    assert evaluate.attack_hits(preds, triggered, "replace") == [True, True]
    assert evaluate.attack_hits(preds, triggered, "map") == [False, False]  # the mapped answer, exactly
    assert evaluate.attack_hits(["banana", "green"], triggered, "map") == [True, True]
    assert evaluate.arm_success(preds[:1], triggered[:1], "replace")["asr"] == 1.0
