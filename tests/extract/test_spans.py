"""The three spans: user text covers exactly the question, vision the image tokens, the rest is system."""

from __future__ import annotations

import numpy as np
import pytest

from poisonguard.extract.extraction import extract, image_token_id
from poisonguard.extract.spans import PAD, SYS, TXT, VIS, batch_roles, prompt_messages, user_text_spans
from poisonguard.train.batching import Example, encode_prompts

from .conftest import MARKER, QUESTION, image, mixed_examples, tiny, user


def _squash(text: str) -> str:
    return "".join(text.lower().split())


def _roles(family, examples):
    model, processor = tiny(family)
    batch = encode_prompts(processor, [Example(prompt_messages(ex.messages), ex.images) for ex in examples])
    roles = batch_roles(processor, [ex.messages for ex in examples], batch["input_ids"],
                        batch["attention_mask"], image_token_id(model))
    return processor, batch, roles


def test_user_text_span_is_exactly_the_question(family):
    examples = mixed_examples()
    processor, batch, roles = _roles(family, examples)
    tok = processor.tokenizer
    ids = batch["input_ids"].numpy()
    marker_ids = set(tok(" " + MARKER, add_special_tokens=False)["input_ids"])  # mid-sentence form
    for b, ex in enumerate(examples):
        turn = prompt_messages(ex.messages)[-1]
        question = "".join(c["text"] for c in turn["content"] if c["type"] == "text")
        txt = tok.decode(ids[b, roles[b] == TXT].tolist())
        assert _squash(txt) == _squash(question), (family, txt, question)
        sys_text = tok.decode(ids[b, roles[b] == SYS].tolist())
        assert _squash(question) not in _squash(sys_text)
    # the distinctive word sits in the user text of sample 0 and nowhere in its system span
    assert marker_ids <= set(ids[0, roles[0] == TXT].tolist())
    assert not marker_ids & set(ids[0, roles[0] == SYS].tolist())


def test_vision_span_is_the_image_tokens_and_padding_is_excluded(family):
    examples = mixed_examples()
    model, _ = tiny(family)
    _, batch, roles = _roles(family, examples)
    ids, keep = batch["input_ids"].numpy(), batch["attention_mask"].numpy().astype(bool)
    np.testing.assert_array_equal(roles == VIS, (ids == image_token_id(model)) & keep)
    np.testing.assert_array_equal(roles == PAD, ~keep)
    assert (roles[2] == VIS).sum() == 0  # the text-only sample
    assert (roles[0] == SYS).sum() > 0 and (roles[0] == TXT).sum() > 0


def test_shares_sum_to_one_and_text_only_has_no_vision(family):
    model, processor = tiny(family)
    ext = extract(model, processor, mixed_examples(), batch_size=2, show_progress=False)
    n, layers, heads = 5, ext.meta["n_layers"], ext.meta["n_heads"]
    assert ext.alloc.shape == (n, layers, heads, 3) and ext.alloc.dtype == np.float32
    assert ext.vis_entropy.shape == (n, layers) and ext.hidden.shape == (n, ext.meta["hidden_size"])
    np.testing.assert_allclose(ext.alloc.sum(-1), 1.0, atol=1e-5)
    assert (ext.alloc >= 0).all()
    assert (ext.alloc[2, :, :, VIS] == 0).all() and ext.n_tokens[2, VIS] == 0
    assert np.isnan(ext.vis_entropy[2]).all()
    with_image = np.delete(np.arange(n), 2)
    ent = ext.vis_entropy[with_image]
    assert np.isfinite(ent).all() and (ent >= 0).all()
    assert (ent <= np.log(ext.n_tokens[with_image, VIS])[:, None] + 1e-5).all()
    assert ext.meta["family"] == model.config.model_type


def test_batching_does_not_change_results():
    model, processor = tiny("internvl")  # variable tile counts: the padding differs between batch sizes
    one = extract(model, processor, mixed_examples(), batch_size=1, show_progress=False)
    all_ = extract(model, processor, mixed_examples(), batch_size=5, show_progress=False)
    np.testing.assert_allclose(one.alloc, all_.alloc, atol=1e-5)
    np.testing.assert_array_equal(one.n_tokens, all_.n_tokens)


def test_text_parts_around_an_image_are_all_user_text():
    a = image(32, 32, 7)
    ex = Example([user(f"Look at the {MARKER}.", a, " Which colour is it?")], [a])
    processor, batch, roles = _roles("llava", [ex])
    ids = batch["input_ids"][0].numpy()
    txt_positions = np.flatnonzero(roles[0] == TXT)
    vis_positions = np.flatnonzero(roles[0] == VIS)
    assert txt_positions.min() < vis_positions.min() and txt_positions.max() > vis_positions.max()
    assert _squash(processor.tokenizer.decode(ids[roles[0] == TXT].tolist())) == _squash(
        f"Look at the {MARKER}. Which colour is it?")


def test_assistant_turns_are_not_in_the_prompt():
    msgs = [user("hi"), {"role": "assistant", "content": "hello"}, user("again")]
    assert prompt_messages(msgs) == msgs[:1]
    _, processor = tiny("llava")
    rendered, spans = user_text_spans(processor, msgs)
    assert "hello" not in rendered and [rendered[a:b] for a, b in spans] == ["hi"]


def test_a_template_that_edits_the_question_is_refused():
    _, processor = tiny("llava")

    class Upper:
        tokenizer = processor.tokenizer

        @staticmethod
        def apply_chat_template(messages, **_):
            text = " ".join(c["text"].upper() for m in messages for c in m["content"])
            return f"USER: {text} ASSISTANT:"

    with pytest.raises(ValueError, match="alters or drops"):
        user_text_spans(Upper(), [user(QUESTION)])


@pytest.mark.parametrize("family", ["llava", "internvl"])
def test_two_images_are_both_vision(family):
    model, _ = tiny(family)
    a, b = image(32, 32, 8), image(16, 16, 9)
    ex = Example([user(a, b, QUESTION)], [a, b])
    processor, batch, roles = _roles(family, [ex])
    ids = batch["input_ids"][0].numpy()
    vis = np.flatnonzero(roles[0] == VIS)
    np.testing.assert_array_equal(vis, np.flatnonzero(ids == image_token_id(model)))
    ext = extract(model, processor, [ex], batch_size=1, show_progress=False)
    assert ext.n_tokens[0, VIS] == len(vis) and np.isfinite(ext.vis_entropy).all()
