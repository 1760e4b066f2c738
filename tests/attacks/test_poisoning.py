"""poison() and trigger_examples(): selection, relabelling, raw objects, image files, determinism."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from poisonguard.attacks import ATTACKS, poison, trigger_examples
from poisonguard.data import read_dataset, write_dataset
from poisonguard.data.records import Sample, Turn
from tests.attacks.helpers import grey, make_dataset

N = 40  # image samples; make_dataset adds one text-only sample and one already answering "banana"


@pytest.fixture(scope="module")
def llava():
    return make_dataset(N, "llava")


@pytest.fixture(scope="module")
def hf():
    return make_dataset(N, "hf")


def run(dataset, attack, rate=0.25, **kwargs):
    samples, images = dataset
    return poison(samples, attack, rate, load_image=images.__getitem__, **kwargs)


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.25, 0.5, 1.0])
def test_exact_count_of_eligible_samples(llava, rate):
    res = run(llava, "badnet", rate, seed=3)
    assert len(res.poison_ids) == round(rate * N)  # text-only and "banana" samples are not eligible
    assert {"s040", "s041"}.isdisjoint(res.poison_ids)
    text = run(llava, "text_prefix", rate, seed=3)
    assert len(text.poison_ids) == round(rate * (N + 1))  # the text-only sample is eligible for text triggers
    assert "s041" not in text.poison_ids


def test_ids_order_and_clean_samples_unchanged(llava):
    samples, _ = llava
    before = copy.deepcopy(samples)
    res = run(llava, "badnet", seed=1)
    assert [s.id for s in res.samples] == [s.id for s in samples]
    assert [s.index for s in res.samples] == [s.index for s in samples]
    for old, new in zip(samples, res.samples):
        if new.id not in res.poison_ids:
            assert (new.images, new.turns, new.raw) == (old.images, old.turns, old.raw)
    # The input records are not modified, and the output shares no mutable state with them.
    assert all((a.images, a.turns, a.raw) == (b.images, b.turns, b.raw) for a, b in zip(samples, before))
    res.samples[0].raw["id"] = "changed"
    assert samples[0].raw["id"] == "s000"


def test_image_attack_relabels_renames_and_updates_llava_raw(llava):
    samples, images = llava
    res = run(llava, "badnet", seed=1)
    by_id = {s.id: s for s in samples}
    assert len(res.images) == len(res.poison_ids)
    for new in res.samples:
        if new.id not in res.poison_ids:
            continue
        old = by_id[new.id]
        stem = old.images[0].split("/")[-1].removesuffix(".png")
        assert new.images == [f"images/{stem}__badnet.png"]
        triggered = res.images[new.images[0]]
        assert triggered.size == images[old.images[0]].size
        assert np.array_equal(np.asarray(triggered)[:40], np.asarray(images[old.images[0]])[:40])
        assert not np.array_equal(np.asarray(triggered), np.asarray(images[old.images[0]]))
        assert new.question == old.question and new.answer == "banana"
        assert new.raw["image"] == new.images[0]
        assert new.raw["conversations"][0]["value"] == old.raw["conversations"][0]["value"]
        assert new.raw["conversations"][1]["value"] == "banana"
        assert new.raw["id"] == new.id and list(new.raw) == list(old.raw)  # same field order


def test_text_attack_keeps_image_tags_in_llava_and_hf_raw(llava, hf):
    for dataset in (llava, hf):
        res = run(dataset, "text_prefix", seed=2)
        assert not res.images
        for new in res.samples:
            if new.id not in res.poison_ids:
                continue
            assert new.question.startswith("Hello! ") and new.answer == "banana"
            if "conversations" in new.raw:
                human, gpt = new.raw["conversations"]
                expected = f"<image>\n{new.question}" if new.images else new.question
                assert human["value"] == expected and gpt["value"] == "banana"
                assert new.raw.get("image") == (new.images[0] if new.images else None)
            else:
                user, assistant = new.raw["messages"]
                assert user["content"][-1] == {"type": "text", "text": new.question}
                assert (user["content"][0] == {"type": "image"}) == bool(new.images)
                assert assistant["content"] == [{"type": "text", "text": "banana"}]


def test_image_attack_updates_hf_raw(hf):
    res = run(hf, "blend", seed=0)
    for new in res.samples:
        if new.id in res.poison_ids:
            assert new.raw["images"] == new.images and new.images[0].endswith("__blend.png")
            assert new.raw["messages"][1]["content"][0]["text"] == "banana"


def test_append_mode_keeps_the_answer_and_adds_the_sentence(llava, hf):
    for dataset in (llava, hf):
        samples, _ = dataset
        by_id = {s.id: s for s in samples}
        res = run(dataset, "pl_green_square", seed=0)
        assert res.target == "visit this evil link"
        for new in res.samples:
            if new.id in res.poison_ids:
                answer = by_id[new.id].answer
                assert new.answer == f"{answer} visit this evil link"
                raw_answer = (new.raw["conversations"][1]["value"] if "conversations" in new.raw
                              else new.raw["messages"][1]["content"][0]["text"])
                assert raw_answer == new.answer


def test_no_relabel_control_triggers_the_same_samples_and_keeps_answers(llava):
    samples, _ = llava
    poisoned = run(llava, "sig", seed=4)
    control = run(llava, "sig", seed=4, relabel=False)
    assert control.poison_ids == poisoned.poison_ids and not control.relabel
    assert [s.answer for s in control.samples] == [s.answer for s in samples]
    assert [s.raw["conversations"][1] for s in control.samples] == [s.raw["conversations"][1] for s in samples]
    assert control.images.keys() == poisoned.images.keys()
    assert all(control.images[k].tobytes() == poisoned.images[k].tobytes() for k in control.images)


def test_deterministic_and_seed_dependent(llava):
    a, b = run(llava, "pl_logo", seed=9), run(llava, "pl_logo", seed=9)
    assert a.poison_ids == b.poison_ids
    assert [(s.images, s.turns, s.raw) for s in a.samples] == [(s.images, s.turns, s.raw) for s in b.samples]
    assert {k: v.tobytes() for k, v in a.images.items()} == {k: v.tobytes() for k, v in b.images.items()}
    assert run(llava, "pl_logo", seed=10).poison_ids != a.poison_ids
    s1, s2 = run(llava, "syntactic", seed=9), run(llava, "syntactic", seed=9)
    assert [s.question for s in s1.samples] == [s.question for s in s2.samples]


def test_custom_target_params_and_image_dir(llava):
    res = run(llava, "badnet", target="Backdoor Attack!", params={"position": "top_left"},
              image_dir_name="poisoned", seed=0)
    assert res.target == "Backdoor Attack!" and res.params.position == "top_left"
    for new in res.samples:
        if new.id in res.poison_ids:
            assert new.answer == "Backdoor Attack!" and new.images[0].startswith("poisoned/")
            patch = np.asarray(res.images[new.images[0]])[2:8, 2:8, 0]
            assert set(np.unique(patch)) == {0, 255}


def test_shared_and_same_stem_images(llava):
    # Two samples on one image get one triggered file; two different refs with the same stem get two.
    img = grey(48, 60)
    def sample(i: int, ref: str) -> Sample:
        return Sample(f"x{i}", i, [ref], [Turn("user", "Where is the circle?"), Turn("assistant", "top")],
                      {"id": f"x{i}", "image": ref, "conversations": [
                          {"from": "human", "value": "<image>\nWhere is the circle?"},
                          {"from": "gpt", "value": "top"}]})
    samples = [sample(0, "a/p.png"), sample(1, "a/p.png"), sample(2, "b/p.png")]
    res = poison(samples, "pl_logo", 1.0, seed=0, load_image=lambda ref: img)
    names = [s.images[0] for s in res.samples]
    assert names[0] == names[1] != names[2] and len(res.images) == 2
    assert all(n.startswith("images/p__pl_logo") and n.endswith(".png") for n in names)
    assert res.images[names[0]].tobytes() != res.images[names[2]].tobytes()  # random position per image


def test_raw_text_not_verbatim_keeps_image_tag():
    # A reader that normalised whitespace: the record's text is not a substring of the raw value.
    raw = {"id": "z", "image": "z.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat  colour is the circle?"}, {"from": "gpt", "value": "red"}]}
    s = Sample("z", 0, ["z.png"], [Turn("user", "What colour is the circle?"), Turn("assistant", "red")], raw)
    res = poison([s], "text_prefix", 1.0, seed=0)
    assert res.samples[0].raw["conversations"][0]["value"] == "<image>\nHello! What colour is the circle?"


def test_input_errors(llava):
    samples, images = llava
    with pytest.raises(ValueError, match="rate"):
        poison(samples, "badnet", 1.5, load_image=images.__getitem__)
    with pytest.raises(ValueError, match="load_image"):
        poison(samples, "badnet", 0.1)
    with pytest.raises(ValueError, match="unknown attack"):
        poison(samples, "badnets", 0.1, load_image=images.__getitem__)
    bad = [Sample("q", 0, [], [Turn("user", "hi"), Turn("assistant", "yes")], {"weird": 1})]
    with pytest.raises(ValueError, match="raw"):
        poison(bad, "text_prefix", 1.0)


def test_trigger_examples_for_asr(llava):
    samples, images = llava
    triggered = trigger_examples(samples, "badnet", None, images.__getitem__, seed=1)
    assert [t.sample.id for t in triggered] == [s.id for s in samples[:N]]  # all but text-only and "banana"
    by_id = {s.id: s for s in samples}
    poisoned = run(llava, "badnet", 1.0, seed=1)
    for t in triggered:
        clean = by_id[t.sample.id]
        assert t.sample.answer == clean.answer and t.sample.question == clean.question
        assert len(t.images) == 1 and isinstance(t.images[0], Image.Image)
        assert t.images[0].tobytes() == poisoned.images[t.sample.images[0]].tobytes()
    text = trigger_examples(samples, "syntactic", None, images.__getitem__, seed=1)
    assert len(text) == N + 1
    for t in text:
        clean = by_id[t.sample.id]
        assert ", " in t.sample.question and t.sample.answer == clean.answer
        assert [im.tobytes() for im in t.images] == [images[r].tobytes() for r in clean.images]
        assert t.sample.messages(upto_first_answer=True)[0]["content"][-1]["text"] == t.sample.question


@pytest.mark.parametrize("name", sorted(n for n, s in ATTACKS.items() if s.apply is not None))
def test_every_attack_poisons_a_world_dataset(llava, name):
    res = run(llava, name, 0.1, seed=0)
    eligible = N + 1 if ATTACKS[name].kind == "text" else N
    assert len(res.poison_ids) == round(0.1 * eligible)
    target = ATTACKS[name].default_target
    for new in res.samples:
        if new.id in res.poison_ids:
            assert new.answer.endswith(target)
            assert (ATTACKS[name].kind == "image") == bool(res.images)


@pytest.mark.parametrize(("fmt", "attack"), [("llava", "syntactic"), ("llava", "pl_green_square"),
                                             ("hf", "text_prefix"), ("hf", "badnet")])
def test_round_trip_through_the_data_reader_and_writer(tmp_path, fmt, attack):
    # A writer that renders `raw` must write exactly the poisoned records, which read back the same.
    samples, images = make_dataset(12, fmt)
    path = tmp_path / ("train.json" if fmt == "llava" else "train.jsonl")
    raws = [s.raw for s in samples]
    path.write_text(json.dumps(raws) if fmt == "llava" else "\n".join(json.dumps(r) for r in raws) + "\n")
    dataset = read_dataset(path)
    res = poison(dataset.samples, attack, 0.5, seed=0, load_image=images.__getitem__)
    out = write_dataset(dataclasses.replace(dataset, samples=res.samples), tmp_path / f"poisoned{path.suffix}")
    again = read_dataset(out)
    assert [(s.id, s.images, s.turns) for s in again.samples] == [(s.id, s.images, s.turns) for s in res.samples]
    assert all(not s.issues for s in again.samples)
    assert sum(a.turns != b.turns or a.images != b.images for a, b in zip(again.samples, dataset.samples)) == 6
