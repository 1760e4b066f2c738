"""Training labels: exactly the assistant turns' tokens are supervised, for one or several turns, per family."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.fixtures.families import FAMILIES, build_tiny
from poisonguard.train.batching import IGNORE_INDEX, Example, encode_for_training

_PROCESSORS: dict = {}


def _processor(family: str):
    if family not in _PROCESSORS:
        _PROCESSORS[family] = build_tiny(family)[1]
    return _PROCESSORS[family]


def _image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (48, 48, 3), dtype=np.uint8))


def _conversation(qas: list[tuple[str, str]], with_image: bool = True) -> Example:
    msgs = []
    for k, (q, a) in enumerate(qas):
        content = ([{"type": "image"}] if k == 0 and with_image else []) + [{"type": "text", "text": q}]
        msgs.append({"role": "user", "content": content})
        msgs.append({"role": "assistant", "content": [{"type": "text", "text": a}]})
    return Example(msgs, [_image(len(qas))] if with_image else [])


def _labelled_runs(labels) -> list[list[int]]:
    """Contiguous runs of supervised token ids in one row."""
    runs, cur = [], []
    for t in labels.tolist():
        if t == IGNORE_INDEX:
            if cur:
                runs.append(cur)
            cur = []
        else:
            cur.append(t)
    return runs + ([cur] if cur else [])


@pytest.mark.parametrize("family", FAMILIES)
def test_only_answers_are_supervised_single_and_multi_turn(family):
    processor = _processor(family)
    tok = processor.tokenizer
    examples = [
        _conversation([("What colour is the circle?", "red")]),
        _conversation([("What colour is the circle?", "red"), ("Where is the square?", "top left"),
                       ("How many shapes are there?", "two")]),
        _conversation([("Say yes.", "yes")], with_image=False),
    ]
    batch = encode_for_training(processor, examples)
    for row, ex in enumerate(examples):
        answers = [m["content"][0]["text"] for m in ex.messages if m["role"] == "assistant"]
        runs = _labelled_runs(batch["labels"][row])
        assert len(runs) == len(answers), (family, row, runs)
        for run, answer in zip(runs, answers):
            text = tok.decode(run, skip_special_tokens=True).strip()
            # the answer plus, at most, the template's end-of-turn marker (special, or a newline)
            assert text == answer, (family, text, answer)
            assert len(run) <= len(tok(answer, add_special_tokens=False)["input_ids"]) + 2
        # padding and everything before the first answer is never supervised
        first = int((batch["labels"][row] != IGNORE_INDEX).nonzero()[0])
        assert first > 0
        assert (batch["labels"][row][batch["attention_mask"][row] == 0] == IGNORE_INDEX).all()
