"""Answer-span log-probabilities on tiny real models: they equal a one-sample reference forward whatever the
batch padding, cover every answer of a multi-turn sample (capped), give NaN rows for answerless samples, and the stored file
is reused for the same plan only. The base-model control (the same model twice) gives zero gain exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from poisonguard.detect.span import answer_gain
from poisonguard.extract.span import (
    NO_TOKEN,
    SPAN_FILE,
    extract_span,
    extract_span_to_dir,
    answered,
    load_span,
)
from poisonguard.train.batching import IGNORE_INDEX, Example, encode_for_training

from .conftest import image, tiny, user

FAMILIES_HERE = ("world", "llava", "qwen2_vl")


def _examples() -> list[Example]:
    a, b = image(48, 48, 1), image(64, 32, 2)
    return [
        Example([user(a, "What colour is the banana?"), {"role": "assistant", "content": "yellow"}], [a]),
        Example([user(b, "Describe the scene."),
                 {"role": "assistant", "content": "a red circle and a blue square, side by side"},
                 user("And the colour of the square?"), {"role": "assistant", "content": "blue"}], [b]),
        Example([user("Is there a red circle?")], []),  # no answer: a NaN row
        Example([user("Say hello."), {"role": "assistant", "content": "hello there"}], []),
    ]


@torch.no_grad()
def _reference(model, processor, ex: Example) -> tuple[np.ndarray, np.ndarray]:
    """Log-probabilities of the answers' tokens from a one-sample forward (no padding at all)."""
    batch = encode_for_training(processor, [Example(answered(ex.messages), ex.images)])
    labels = batch.pop("labels")[0]
    logits = model(**batch, use_cache=False).logits[0].float()  # (S, V)
    pos = torch.nonzero(labels[1:] != IGNORE_INDEX).flatten()
    lp = torch.log_softmax(logits[pos], dim=-1).gather(1, labels[1:][pos][:, None])[:, 0]
    return lp.numpy(), labels[1:][pos].numpy()


@pytest.mark.parametrize("family", FAMILIES_HERE)
def test_batched_span_equals_one_sample_reference(family):
    model, processor = tiny(family)
    examples = _examples()
    ext = extract_span(model, processor, examples, max_tokens=64, batch_size=4)
    assert ext.logp.shape == (4, 64)
    for i in (0, 1, 3):
        lp, ids = _reference(model, processor, examples[i])
        n = len(ids)
        assert n >= 1
        np.testing.assert_allclose(ext.logp[i, :n], lp, atol=2e-4)
        np.testing.assert_array_equal(ext.tokens[i, :n], ids)
        assert np.isnan(ext.logp[i, n:]).all() and (ext.tokens[i, n:] == NO_TOKEN).all()
    assert np.isnan(ext.logp[2]).all()  # the answerless sample
    # multi-turn: the second answer is scored too (a payload can sit there), after the first one's tokens
    lp_first, _ = _reference(model, processor, Example(examples[1].messages[:2], examples[1].images))
    assert (~np.isnan(ext.logp[1])).sum() > len(lp_first)
    np.testing.assert_allclose(ext.logp[1, :len(lp_first)], lp_first, atol=2e-4)


def test_span_is_capped_at_max_tokens():
    model, processor = tiny("world")
    full = extract_span(model, processor, _examples(), max_tokens=64)
    capped = extract_span(model, processor, _examples(), max_tokens=3)
    assert capped.logp.shape == (4, 3)
    np.testing.assert_allclose(capped.logp[[0, 1, 3]], full.logp[[0, 1, 3], :3], atol=1e-5)


def test_base_model_control_gives_zero_gain():
    model, processor = tiny("llava")
    a = extract_span(model, processor, _examples(), batch_size=2)
    b = extract_span(model, processor, _examples(), batch_size=3)  # other padding, same numbers
    gain = answer_gain(a.logp, b.logp)
    assert np.abs(gain["max"]).max() < 1e-4 and np.abs(gain["mean"]).max() < 1e-4


def test_stored_span_is_reused_for_the_same_plan_only(tmp_path):
    model, processor = tiny("world")
    ids = ["a", "b", "c", "d"]
    first = extract_span_to_dir(model, processor, _examples(), ids, tmp_path, tag="m1", max_tokens=8)
    assert (tmp_path / SPAN_FILE).exists()
    np.testing.assert_array_equal(load_span(tmp_path / SPAN_FILE, ids=ids).tokens, first.tokens)
    stamp = (tmp_path / SPAN_FILE).stat().st_mtime_ns
    logs = []
    extract_span_to_dir(model, processor, _examples(), ids, tmp_path, tag="m1", max_tokens=8, log=logs.append)
    assert (tmp_path / SPAN_FILE).stat().st_mtime_ns == stamp and "reused" in logs[0]  # same plan
    extract_span_to_dir(model, processor, _examples(), ids, tmp_path, tag="m2", max_tokens=8, log=logs.append)
    assert len(logs) == 1 and (tmp_path / SPAN_FILE).stat().st_mtime_ns != stamp  # another model: recomputed
    with pytest.raises(ValueError, match="different samples"):
        load_span(tmp_path / SPAN_FILE, ids=["x", "b", "c", "d"])


def test_single_answer_plans_keep_their_identity_and_multi_answer_plans_are_named():
    """Scoring every answer equals the first-answer scoring of version 1 on single-answer samples, so those
    stored files stay valid; a plan with a multi-answer sample gets another identity."""
    import hashlib
    import json

    from poisonguard.extract.span import span_fingerprint

    v1_plan = {"version": 1, "ids": ["a"], "tag": "m", "inputs": None, "max_tokens": 8}  # as version 1 wrote it
    v1 = hashlib.sha256(json.dumps(v1_plan, sort_keys=True).encode()).hexdigest()
    assert span_fingerprint(["a"], tag="m", inputs=None, max_tokens=8) == v1
    assert span_fingerprint(["a"], tag="m", inputs=None, max_tokens=8, multi_answer=True) != v1
