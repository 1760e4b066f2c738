"""Batching of the extraction: token-budget batches (one huge image gets a batch of its own, output in input
order, features unchanged) and preprocessing worker threads (the same features as the main process)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.fixtures.families import build_tiny
from poisonguard.extract.extraction import extract, plan_batches, prompt_length
from poisonguard.extract.storage import ARRAYS, extract_to_dir
from poisonguard.models import configure_processor
from poisonguard.runtime import Runtime
from poisonguard.train.batching import Example

from .conftest import QUESTION, image, mixed_examples, sharpen, tiny, user

BIG = 96  # px: 144 LM tokens once Qwen2-VL's pixel bound allows it, against 4 for a 16 px image


@pytest.fixture(scope="module")
def qwen():
    """A tiny Qwen2-VL whose processor takes images up to 96 x 96 pixels (its own bound is 32 x 32)."""
    model, processor = build_tiny("qwen2_vl")
    sharpen(model)
    configure_processor(processor, Runtime(torch.device("cpu"), torch.float32, max_pixels=BIG * BIG))
    return model, processor


def _drop(n_small: int = 6, big_at: int = 2) -> list[Example]:
    out = []
    for i in range(n_small):
        im = image(16, 16, i)
        out.append(Example([user(im, QUESTION if i % 2 else "How many shapes are there?")], [im]))
    big = image(BIG, BIG, 99)
    out.insert(big_at, Example([user(big, QUESTION)], [big]))
    return out


def test_plan_batches_by_budget_longest_first_and_a_long_sample_alone():
    lengths = [10, 50, 12, 11, 30, 10]
    assert plan_batches(lengths, batch_size=4) == [[0, 1, 2, 3], [4, 5]]  # no budget: input order
    batches = plan_batches(lengths, batch_size=4, max_batch_tokens=40)
    assert batches == [[1], [4], [2, 3, 0], [5]]  # 50 > 40 alone; 3 x 12 <= 40; a 4th row would exceed it
    assert sorted(i for b in batches for i in b) == list(range(6))
    for b in batches[1:]:
        assert len(b) * max(lengths[i] for i in b) <= 40


def test_a_huge_image_gets_its_own_batch_and_features_do_not_change(qwen):
    model, processor = qwen
    examples = _drop()
    lengths = [prompt_length(processor, ex) for ex in examples]
    assert lengths[2] > 3 * max(lengths[:2] + lengths[3:])  # the image tokens dominate
    budget = lengths[2] + 10
    batches = plan_batches(lengths, batch_size=64, max_batch_tokens=budget)
    assert batches[0] == [2] and all(2 not in b for b in batches[1:])
    by_budget = extract(model, processor, examples, batch_size=64, max_batch_tokens=budget, show_progress=False)
    plain = extract(model, processor, examples, batch_size=len(examples), show_progress=False)  # one batch
    np.testing.assert_array_equal(by_budget.n_tokens, plain.n_tokens)  # same rows, in input order
    assert by_budget.n_tokens[2, 1] == 144  # the big image's tokens
    for name in ("alloc", "vis_entropy", "hidden"):
        np.testing.assert_allclose(getattr(by_budget, name), getattr(plain, name), rtol=1e-4, atol=1e-5)


def test_workers_give_the_features_of_the_main_process(qwen, tmp_path):
    model, processor = qwen
    examples = _drop()
    ids = [f"s{i}" for i in range(len(examples))]
    inline = extract_to_dir(model, processor, examples, ids, tmp_path / "w0", shard_size=4, batch_size=2,
                            show_progress=False)
    workers = extract_to_dir(model, processor, examples, ids, tmp_path / "w2", shard_size=4, batch_size=2,
                             num_workers=2, show_progress=False)
    for name in ARRAYS:
        np.testing.assert_array_equal(getattr(workers, name), getattr(inline, name))
    budget = extract(model, processor, examples, batch_size=8, max_batch_tokens=200, num_workers=2,
                     show_progress=False)
    again = extract(model, processor, examples, batch_size=8, max_batch_tokens=200, show_progress=False)
    for name in ARRAYS:
        np.testing.assert_array_equal(getattr(budget, name), getattr(again, name))


def test_default_batching_is_unchanged_on_every_family_with_a_budget_near_equal(family):
    """No budget: consecutive batches exactly as before; a budget only regroups rows (left padding is masked,
    so each row's features stay within float rounding)."""
    model, processor = tiny(family)
    examples = mixed_examples()
    fixed = extract(model, processor, examples, batch_size=2, show_progress=False)
    budget = extract(model, processor, examples, batch_size=8, max_batch_tokens=120, show_progress=False)
    np.testing.assert_array_equal(fixed.n_tokens, budget.n_tokens)
    np.testing.assert_allclose(fixed.alloc, budget.alloc, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fixed.hidden, budget.hidden, rtol=1e-4, atol=1e-4)
