"""The capture path equals the eager reference, leaves the model's outputs alone, and is scoped."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model

from poisonguard.extract.capture import CAPTURE, capture_rows, decision_row, eager_rows, lm_attention
from poisonguard.extract.extraction import extract
from tests.fixtures.families import build_tiny
from poisonguard.extract.spans import prompt_messages
from poisonguard.train.batching import Example, encode_prompts

from .conftest import mixed_examples, sharpen, tiny

TOL = 1e-5


def _inputs(processor, examples):
    return encode_prompts(processor, [Example(prompt_messages(ex.messages), ex.images) for ex in examples])


def _n_layers(model) -> int:
    return model.config.get_text_config().num_hidden_layers


@torch.no_grad()
def test_capture_rows_equal_eager_rows(family):
    model, processor = tiny(family)
    inputs = _inputs(processor, mixed_examples())
    assert (inputs["attention_mask"] == 0).any(), "the batch must be left-padded to test the padding mask"
    with capture_rows(model) as recorder:
        model(**inputs, use_cache=False)
    captured = recorder.stacked(_n_layers(model))  # (B, L, H, N)
    with lm_attention(model, "eager"):
        reference = eager_rows(model(**inputs, use_cache=False, output_attentions=True), _n_layers(model))
    assert captured.shape == reference.shape
    assert torch.allclose(captured, reference, atol=TOL, rtol=0)
    # sharpened attention: rows are far from uniform, so the comparison can catch a wrong mask or head map
    assert captured.max() > 0.3
    # padded keys get nothing
    pad = inputs["attention_mask"] == 0  # (B, N)
    assert captured.permute(0, 3, 1, 2)[pad].abs().max() == 0


def test_extraction_backends_agree(family):
    model, processor = tiny(family)
    examples = mixed_examples()
    cap = extract(model, processor, examples, batch_size=5, backend="capture", show_progress=False)
    eag = extract(model, processor, examples, batch_size=5, backend="eager", show_progress=False)
    np.testing.assert_allclose(cap.alloc, eag.alloc, atol=TOL, rtol=0)
    np.testing.assert_allclose(cap.vis_entropy, eag.vis_entropy, atol=TOL, rtol=0)  # NaN == NaN here
    np.testing.assert_allclose(cap.hidden, eag.hidden, atol=TOL, rtol=0)
    assert (cap.meta["backend"], eag.meta["backend"]) == ("capture", "eager")
    assert cap.meta["dtype"] == "float32"


@torch.no_grad()
def test_capture_does_not_change_logits(family):
    model, processor = tiny(family)
    inputs = _inputs(processor, mixed_examples())
    plain = model(**inputs, use_cache=False).logits
    with capture_rows(model) as recorder:
        captured = model(**inputs, use_cache=False).logits
    assert len(recorder.rows) == _n_layers(model)
    assert torch.equal(plain, captured)


@torch.no_grad()
def test_only_the_language_model_is_switched():
    model, _ = tiny("qwen2_vl")
    vision_before = model.config.vision_config._attn_implementation
    with capture_rows(model):
        assert model.config.get_text_config()._attn_implementation == CAPTURE
        assert model.config.vision_config._attn_implementation == vision_before
    assert model.config.get_text_config()._attn_implementation == "sdpa"


@torch.no_grad()
def test_capture_is_scoped_and_restored_after_errors():
    model, processor = tiny("llava")
    inputs = _inputs(processor, mixed_examples()[:2])
    with pytest.raises(KeyboardInterrupt), capture_rows(model):
        raise KeyboardInterrupt
    assert model.config.get_text_config()._attn_implementation == "sdpa"
    with capture_rows(model) as first:
        model(**inputs, use_cache=False)
    model(**inputs, use_cache=False)  # outside the block: recorded nowhere
    assert sorted(first.rows) == [0, 1]
    with capture_rows(model) as second:
        pass
    assert second.rows == {}
    with capture_rows(model):
        model(**inputs, use_cache=False)
        with pytest.raises(RuntimeError, match="recorded twice"):
            model(**inputs, use_cache=False)
    with (lm_attention(model, "eager"), pytest.raises(RuntimeError, match="held as 'eager'"),
          capture_rows(model)):
        pass
    assert model.config.get_text_config()._attn_implementation == "sdpa"


@torch.no_grad()
def test_forward_in_another_thread_is_not_recorded():
    model, processor = tiny("llava")
    inputs = _inputs(processor, mixed_examples()[:2])
    with capture_rows(model) as recorder:
        worker = threading.Thread(target=lambda: model(**inputs, use_cache=False))
        worker.start()
        worker.join()
        assert recorder.rows == {}
        model(**inputs, use_cache=False)
    assert sorted(recorder.rows) == [0, 1]


def _reference_row(q, k, mask, scaling):
    """Naive (B, H, Nq, N) attention with repeat_kv, last row only."""
    rep = q.shape[1] // k.shape[1]
    scores = q @ k.repeat_interleave(rep, dim=1).transpose(-1, -2) * scaling  # (B, H, Nq, N)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    return torch.softmax(scores, dim=-1)[:, :, -1, :]


@pytest.mark.parametrize("mask_kind", ["none", "bool", "float"])
def test_decision_row_matches_naive_softmax_with_gqa(mask_kind):
    gen = torch.Generator().manual_seed(0)
    b, h, h_kv, n, d = 3, 6, 2, 7, 5
    q, k = torch.randn(b, h, n, d, generator=gen), torch.randn(b, h_kv, n, d, generator=gen)
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    keep = torch.ones(b, n, dtype=torch.bool)
    keep[1, :3] = False  # left padding of row 1
    bool_mask = (causal[None] & keep[:, None, :])[:, None]  # (B, 1, N, N)
    float_mask = torch.zeros(b, 1, n, n).masked_fill(~bool_mask, torch.finfo(torch.float32).min)
    mask = {"none": None, "bool": bool_mask, "float": float_mask}[mask_kind]
    got = decision_row(q, k, mask, 0.3)
    assert torch.allclose(got, _reference_row(q, k, mask, 0.3), atol=1e-6)
    assert torch.allclose(got.sum(-1), torch.ones(b, h))
    if mask_kind != "none":
        assert got[1, :, :3].abs().max() == 0


@torch.no_grad()
def test_hidden_is_the_lm_head_input(family):
    model, processor = tiny(family)
    examples = mixed_examples()
    ext = extract(model, processor, examples, batch_size=5, show_progress=False)
    logits = model(**_inputs(processor, examples), use_cache=False).logits[:, -1]  # (B, V)
    head = model.get_output_embeddings()
    assert torch.allclose(head(torch.from_numpy(ext.hidden)), logits, atol=1e-4)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # peft calls a deprecated transformers helper
@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_peft_lora_model(family):
    model, processor = build_tiny(family)
    sharpen(model)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))  # a non-trivial adapter
    peft_model.train()
    examples = mixed_examples()
    cap = extract(peft_model, processor, examples, batch_size=5, backend="capture", show_progress=False)
    eag = extract(peft_model, processor, examples, batch_size=5, backend="eager", show_progress=False)
    np.testing.assert_allclose(cap.alloc, eag.alloc, atol=TOL, rtol=0)
    assert cap.meta["family"] == model.config.model_type
    assert peft_model.training  # the caller's mode is restored
    with peft_model.disable_adapter():
        base = extract(peft_model, processor, examples, batch_size=5, show_progress=False)
    assert np.abs(base.alloc - cap.alloc).max() > 1e-3  # the adapter's attention is what was read


def test_bfloat16_model_records_dtype_and_rows_stay_normalised():
    model, processor = build_tiny("llava")
    model.to(torch.bfloat16)
    cap = extract(model, processor, mixed_examples(), batch_size=5, show_progress=False)
    eag = extract(model, processor, mixed_examples(), batch_size=5, backend="eager", show_progress=False)
    assert cap.meta["dtype"] == "bfloat16"
    np.testing.assert_allclose(cap.alloc.sum(-1), 1.0, atol=1e-5)  # fp32 softmax on the side
    np.testing.assert_allclose(cap.alloc, eag.alloc, atol=2e-2)  # eager rounds its rows to bf16
