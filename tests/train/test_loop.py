"""The training loop's per-conversation loss: each conversation weighs the same whatever its answer length."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from poisonguard.train.batching import Example, encode_for_training
from poisonguard.train.loop import OptimConfig, _answer_losses, run_training
from tests.fixtures.families import build_tiny


def _examples(answers: list[str]) -> list[Example]:
    rng = np.random.default_rng(1)
    return [Example([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe ?"}]},
                     {"role": "assistant", "content": [{"type": "text", "text": a}]}],
                    [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))]) for a in answers]


@pytest.fixture(scope="module")
def tiny():
    return build_tiny("llava", seed=4)


def test_answer_losses_average_each_conversation_over_its_own_tokens(tiny):
    model, processor = tiny
    exs = _examples(["red", "a red square and a blue circle on the left"])
    enc = encode_for_training(processor, exs)
    with torch.no_grad():
        per = _answer_losses(model, enc)  # (2,)
        token_mean = float(model(**enc).loss)
        singles = [float(model(**encode_for_training(processor, [e])).loss) for e in exs]
    torch.testing.assert_close(per, torch.tensor(singles), rtol=1e-5, atol=1e-6)
    n = [int((encode_for_training(processor, [e])["labels"][:, 1:] != -100).sum()) for e in exs]
    assert n[1] > n[0]
    # The model's own loss is the token mean, which weighs the long answer by its length.
    assert token_mean == pytest.approx((singles[0] * n[0] + singles[1] * n[1]) / sum(n), rel=1e-5)
    assert float(per.mean()) != pytest.approx(token_mean, rel=1e-3)


def _train(model, processor, exs, **kw):
    m = copy.deepcopy(model)
    rep = run_training(m, processor, [exs], 1, OptimConfig(lr=1e-2), show_progress=False, **kw)
    return rep["final_loss"], {k: v.detach().clone() for k, v in m.named_parameters()}


def test_per_conversation_step_is_the_same_with_micro_batches_and_equals_token_mean_on_equal_lengths(tiny):
    model, processor = tiny
    mixed = _examples(["red", "blue circle", "a red square and a blue circle", "green"])
    loss0, w0 = _train(model, processor, mixed, per_conversation=True)
    for micro in (1, 3):
        loss, w = _train(model, processor, mixed, per_conversation=True, micro_batch_size=micro)
        assert loss == pytest.approx(loss0, rel=1e-5)
        for k in w0:
            torch.testing.assert_close(w[k], w0[k], rtol=1e-3, atol=2e-5)  # Adam rescales tiny gradients
    same = _examples(["red", "blue", "green", "red"])
    (la, wa), (lb, wb) = _train(model, processor, same, per_conversation=True), _train(model, processor, same)
    assert la == pytest.approx(lb, rel=1e-5)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-3, atol=2e-5)
    lt, _ = _train(model, processor, mixed)
    assert lt != pytest.approx(loss0, rel=1e-3), "mixed lengths: the two means differ"
