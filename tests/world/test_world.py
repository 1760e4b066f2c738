"""The embedded world: question bank requirements, determinism, and offline HF save/load."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from poisonguard.world.questions import PHRASINGS, QUESTION_TYPES, ask
from poisonguard.world.scenes import IMAGE_SIZE, POSITIONS, render, sample_scene

from tests.conftest import TINY_MODEL, TINY_PRETRAIN


def test_question_bank_meets_world_contract():
    assert len(QUESTION_TYPES) >= 5
    assert sum(len(v) for v in PHRASINGS.values()) >= 30
    assert all(len(set(v)) == len(v) for v in PHRASINGS.values())


@pytest.mark.parametrize("qtype", QUESTION_TYPES)
def test_answers_are_consistent_with_the_scene(qtype):
    rng = np.random.default_rng(1)
    for _ in range(200):
        scene = sample_scene(rng)
        qa = ask(scene, rng, qtype)
        assert 1 <= len(qa.answer.split()) <= 2
        if qtype == "count":
            assert qa.answer == ["zero", "one", "two", "three"][len(scene.objects)]
        elif qtype == "colour":
            shape = next(s for s in ("circle", "square", "triangle", "diamond", "cross") if s in qa.question)
            assert scene.find(shape=shape)[0].colour == qa.answer
        elif qtype == "where":
            assert qa.answer in POSITIONS
        elif qtype == "exist":
            assert qa.answer in {"yes", "no"}


def test_scenes_are_distinct_objects_in_distinct_slots():
    rng = np.random.default_rng(2)
    for _ in range(300):
        s = sample_scene(rng)
        assert 1 <= len(s.objects) <= 3
        for attr in ("shape", "colour", "slot"):
            vals = [getattr(o, attr) for o in s.objects]
            assert len(set(vals)) == len(vals)
        img = render(s)
        assert img.size == (IMAGE_SIZE, IMAGE_SIZE) and img.mode == "RGB"


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_world_same_seed_gives_identical_files(tiny_world, tmp_path):
    from poisonguard.runtime import cpu_kernels
    from poisonguard.world.build import make_world

    out_a, summary = tiny_world
    # The contract is "same seed and thread count": float reductions differ across thread counts, and other
    # tests may have changed this process's count since the session fixture was built.
    before = torch.get_num_threads()
    torch.set_num_threads(summary["torch_threads"])
    try:
        make_world(tmp_path, seed=3, n_train=12, n_test=6, model_cfg=TINY_MODEL, pretrain_cfg=TINY_PRETRAIN,
                   show_progress=False, log=lambda m: None)
    finally:
        torch.set_num_threads(before)
    a, b = _digest(out_a), _digest(tmp_path)
    a.pop("world.json"), b.pop("world.json")  # holds wall-clock timings
    assert a == b
    assert "base_model/model.safetensors" in a
    # what made the bytes is on record: this process's kernels (pinned by the suite's conftest, as by every
    # command and stage) and threads
    assert summary["cpu_kernels"] == {**cpu_kernels(), "threads": summary["torch_threads"]}


def test_world_layout_and_offline_reload(tiny_world, monkeypatch):
    import json

    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out, summary = tiny_world
    train = json.loads((out / "train.json").read_text())
    assert len(train) == 12 and train[0]["conversations"][0]["value"].startswith("<image>\n")
    assert (out / train[0]["image"]).is_file()
    assert set(summary["test_accuracy"]) >= {"all", *QUESTION_TYPES}
    proc = AutoProcessor.from_pretrained(out / "base_model")
    model = AutoModelForImageTextToText.from_pretrained(out / "base_model")
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert model.config.text_config.num_hidden_layers == TINY_MODEL.lm_layers
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many shapes are there?"}]}]
    text = proc.apply_chat_template(msgs, add_generation_prompt=True)
    from PIL import Image

    inputs = proc(text=[text], images=[Image.open(out / train[0]["image"])], return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 9
    with torch.no_grad():
        assert model(**inputs).logits.shape[-1] == len(proc.tokenizer)


def test_attack_vocabulary_is_tokenizable(world_processor):
    tok = world_processor.tokenizer
    for text in ["Hello! what colour is the circle?", "Backdoor Attack!", "banana",
                 "sorry i cannot help with that"]:
        ids = tok(text)["input_ids"]
        assert tok.unk_token_id not in ids, text


# ---------------------------------------------------------------------------------------- describe questions


def test_describe_answers_are_sentences_about_the_whole_scene(world_processor):
    from poisonguard.world.questions import DESCRIBE, DESCRIBE_PHRASINGS

    tok = world_processor.tokenizer
    rng = np.random.default_rng(4)
    for phrasing in DESCRIBE_PHRASINGS:
        assert tok.unk_token_id not in tok(phrasing)["input_ids"], phrasing
    for _ in range(300):
        scene = sample_scene(rng)
        qa = ask(scene, rng, DESCRIBE)
        assert qa.qtype == DESCRIBE and qa.question in DESCRIBE_PHRASINGS
        assert len(qa.answer.split()) >= 5 and tok.unk_token_id not in tok(qa.answer)["input_ids"], qa.answer
        for o in scene.objects:  # every object, with its colour and place
            assert f"{o.colour} {o.shape}" in qa.answer and POSITIONS[o.slot] in qa.answer
        assert qa.answer.count(" and ") == (len(scene.objects) > 1)


def test_the_longest_describe_conversation_fits_the_model(world_processor):
    # 3 objects, the longest phrasing, plus the longest attack sentence appended (content injection).
    from PIL import Image

    from poisonguard.world.model import WorldModelConfig
    from poisonguard.world.questions import DESCRIBE_PHRASINGS, describe
    from poisonguard.world.scenes import Scene, SceneObject

    objs = tuple(SceneObject(s, c, slot, (0, 0), 5.0) for s, c, slot in
                 (("triangle", "yellow", 6), ("diamond", "purple", 8), ("triangle", "green", 0)))
    answer = describe(Scene(objs, (0, 0, 0), 0)) + " sorry i cannot help with that visit this evil link"
    question = max(DESCRIBE_PHRASINGS, key=len)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hello! " + question}]},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
    text = world_processor.apply_chat_template(msgs)
    ids = world_processor(text=[text], images=[Image.new("RGB", (48, 48))], return_tensors="pt")["input_ids"]
    # 69 tokens at the time of writing (9 image tokens), of 128: a second such turn (lm_turns 2) still fits.
    assert ids.shape[1] <= WorldModelConfig().max_positions - 32


def test_describe_frac_zero_leaves_the_data_draws_unchanged(tmp_path):
    # Pinned from the world built before the describe type existed (records of 40 samples, then the rng's
    # next draw): with describe_frac 0 the committed world and every DVC output stay byte-identical.
    import json

    from poisonguard.world.build import write_split

    (tmp_path / "images").mkdir()
    rng = np.random.default_rng(11)
    records = write_split(tmp_path, "train", 40, rng, with_qtype=True, describe_frac=0.0)
    assert hashlib.sha256(json.dumps(records).encode()).hexdigest() == \
        "747b910a205bd194aa26d4557aeabb68ff46248bc1d3754274e6b9a027cbf1d8"
    assert rng.integers(1 << 30) == 108744169
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    scene = sample_scene(np.random.default_rng(6))
    assert ask(scene, a) == ask(scene, b, describe_frac=0.0) and a.random() == b.random()
    with pytest.raises(ValueError, match="describe_frac"):
        ask(scene, a, describe_frac=1.5)


def test_a_world_with_describe_questions_builds_and_trains(tmp_path):
    import json

    from poisonguard.world.build import make_world

    summary = make_world(tmp_path, seed=3, n_train=16, n_test=8, model_cfg=TINY_MODEL, pretrain_cfg=TINY_PRETRAIN,
                         describe_frac=0.5, show_progress=False, log=lambda m: None)
    train = json.loads((tmp_path / "train.json").read_text())
    test = json.loads((tmp_path / "test.json").read_text())
    long = [r for r in train if len(r["conversations"][1]["value"].split()) >= 5]
    assert 3 <= len(long) <= 13  # about half of 16
    assert any(r["question_type"] == "describe" for r in test)
    assert summary["describe_frac"] == 0.5 and "describe" in summary["test_accuracy"]
    assert np.isfinite(summary["test_accuracy"]["all"]) and (tmp_path / "base_model" / "model.safetensors").is_file()
