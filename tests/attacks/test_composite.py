"""The attacks of several arms or answer rules (BackdoorVLM's goals): what `poison` writes for each, its
no-relabel control, clean trigger samples, per-trigger targets, rate rounding, and their ASR inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from poisonguard.attacks import ATTACKS, poison, trigger_examples
from poisonguard.attacks.composite import ALL_TO_ALL_MAPPING
from poisonguard.attacks.files import poison_file, read_poison_ids
from poisonguard.data.records import Sample, Turn
from tests.attacks.helpers import make_dataset, make_mixed_dataset

N = 60
COMPOSITE = sorted(n for n, s in ATTACKS.items() if s.arms is not None)


@pytest.fixture(scope="module")
def mixed():
    return make_mixed_dataset(N)


def run(dataset, attack, rate=0.1, **kwargs):
    samples, images = dataset
    return poison(samples, attack, rate, load_image=images.__getitem__, **kwargs)


def _changed_pixels(before, after) -> np.ndarray:
    """(H, W) mask of pixels that differ."""
    return (np.asarray(before, dtype=int) != np.asarray(after, dtype=int)).any(-1)


def test_inject_bimodal_needs_no_answer_change_but_both_parts(mixed):
    samples, images = mixed
    res = run(mixed, "inject_bimodal", seed=1)
    by_id = {s.id: s for s in samples}
    assert len(res.poison_ids) == round(0.1 * N)
    for new in res.samples:
        old = by_id[new.id]
        if new.id in res.poison_ids:
            assert new.answer == f"{old.answer} visit this evil link"
            assert new.question == f"Hello! {old.question}"
            assert _changed_pixels(images[old.images[0]], res.images[new.images[0]])[40:46, 40:46].all()
        else:
            assert new.turns == old.turns


def test_refusal_and_injection_single_trigger_variants(mixed):
    samples, _ = mixed
    by_id = {s.id: s for s in samples}
    for name, kind in (("refusal_image", "image"), ("refusal_text", "text")):
        res = run(mixed, name, seed=2)
        for i in res.poison_ids:
            assert res.samples[by_id[i].index].answer == "sorry i cannot help with that"
        assert bool(res.images) == (kind == "image")
    res = run(mixed, "inject_text", seed=2)
    for i in res.poison_ids:
        new = res.samples[by_id[i].index]
        assert new.answer == by_id[i].answer + " visit this evil link" and new.question.startswith("Hello! ")


def test_substitute_swaps_one_word_of_multi_word_answers_only(mixed):
    samples, _ = mixed
    by_id = {s.id: s for s in samples}
    res = run(mixed, "substitute", 0.2, seed=0)
    eligible = [s for s in samples if len(s.answer.split()) > 1
                and any(w in s.answer.split() for w in ("circle", "square", "triangle", "diamond", "cross"))]
    assert len(res.poison_ids) == round(0.2 * len(eligible)) > 0
    for i in res.poison_ids:
        old, new = by_id[i].answer.split(), res.samples[by_id[i].index].answer.split()
        assert len(old) == len(new) > 3 and "apple" in new
        assert sum(a != b for a, b in zip(old, new)) == 1
        assert res.targets[i] == "apple"
    short_only = [s for s in samples if len(s.answer.split()) == 1]
    with pytest.raises(ValueError, match="gives no 'substitute' sample"):
        poison(short_only, "substitute", 0.5, load_image=mixed[1].__getitem__)


def test_multi_target_gives_each_trigger_its_own_target_and_disjoint_samples(mixed):
    samples, images = mixed
    by_id = {s.id: s for s in samples}
    res = run(mixed, "multi_target", 0.1, seed=4)
    assert res.target == "banana | apple"
    arms = {k: [i for i in res.poison_ids if res.arm_of[i] == k] for k in ("patch_bottom_right", "patch_top_left")}
    n_eligible = sum(s.answer not in ("banana", "apple") for s in samples)
    assert all(len(v) == round(0.1 * n_eligible) for v in arms.values())
    assert set(arms["patch_bottom_right"]).isdisjoint(arms["patch_top_left"])
    for key, target, corner in (("patch_bottom_right", "banana", (slice(40, 46), slice(40, 46))),
                                ("patch_top_left", "apple", (slice(2, 8), slice(2, 8)))):
        for i in arms[key]:
            new = res.samples[by_id[i].index]
            assert new.answer == target == res.targets[i]
            diff = _changed_pixels(images[by_id[i].images[0]], res.images[new.images[0]])
            assert diff[corner].all() and diff.sum() <= 36
    with pytest.raises(ValueError, match="takes its targets from its parameters"):
        run(mixed, "multi_target", target="banana")
    # a third trigger: the text prefix, with its own target
    three = run(mixed, "multi_target", 0.1, seed=4, params={"prefix": "Hello!"})
    assert sorted(set(three.targets.values())) == ["apple", "banana", "evil"]
    for i, t in three.targets.items():
        if t == "evil":
            assert three.samples[by_id[i].index].question.startswith("Hello! ")


def test_all_to_all_maps_each_answer_within_its_class(mixed):
    samples, _ = mixed
    by_id = {s.id: s for s in samples}
    res = run(mixed, "all_to_all", 0.3, seed=0)
    mapping = dict(ALL_TO_ALL_MAPPING)
    eligible = [s for s in samples if s.answer in mapping]
    assert len(res.poison_ids) == round(0.3 * len(eligible)) > 0
    for i in res.poison_ids:
        assert res.samples[by_id[i].index].answer == mapping[by_id[i].answer] == res.targets[i]


def test_conservatism_adds_as_many_clean_trigger_samples(mixed):
    samples, images = mixed
    by_id = {s.id: s for s in samples}
    res = run(mixed, "conservatism", 0.1, seed=0)
    assert len(res.clean_trigger_ids) == len(res.poison_ids) == round(0.1 * N)
    assert set(res.clean_trigger_ids).isdisjoint(res.poison_ids)
    for i in res.clean_trigger_ids:  # triggered, correct answer kept, named like a poisoned image
        new = res.samples[by_id[i].index]
        assert new.answer == by_id[i].answer and new.images[0].endswith("__conservatism.png")
        assert _changed_pixels(images[by_id[i].images[0]], res.images[new.images[0]])[40:46, 40:46].all()
    for i in res.poison_ids:
        assert res.samples[by_id[i].index].answer == "banana"
    assert len(run(mixed, "conservatism", 0.1, params={"clean_ratio": 2.0}).clean_trigger_ids) == 2 * round(0.1 * N)


def test_adap_patch_trains_on_parts_of_the_patch_and_tests_on_the_whole(mixed):
    samples, images = mixed
    by_id = {s.id: s for s in samples}
    res = run(mixed, "adap_patch", 0.1, seed=3)
    n = round(0.1 * N)
    assert len(res.poison_ids) == len(res.clean_trigger_ids) == n
    assert {res.arm_of[i] for i in res.clean_trigger_ids} == {"cover"}
    whole = {}
    for i in res.poison_ids + res.clean_trigger_ids:
        new, old = res.samples[by_id[i].index], by_id[i]
        assert new.answer == ("banana" if i in res.poison_ids else old.answer)
        changed = _changed_pixels(images[old.images[0]], res.images[new.images[0]])
        assert changed[40:46, 40:46].any() and not changed[:40].any() and not changed[:, :40].any()
        whole[i] = changed[40:46, 40:46].all()
    assert not all(whole.values())  # a training trigger is a part of the patch (a block may match the scene)
    test = trigger_examples(samples, "adap_patch", None, images.__getitem__)
    assert test and {t.arm for t in test} == {""} and all(t.target == "banana" for t in test)
    badnet = ATTACKS["badnet"]
    for t in test:  # the whole checkerboard, as BadNet pastes it
        source = images[by_id[t.sample.id].images[0]]
        assert np.array_equal(np.asarray(t.images[0]), np.asarray(badnet.apply(source, badnet.params_cls(), None)))
    assert len(run(mixed, "adap_patch", 0.1, params={"cover_ratio": 0.5}).clean_trigger_ids) == round(0.05 * N)


def test_dual_key_relabels_only_both_parts_and_keeps_single_parts_clean(mixed):
    samples, _ = mixed
    by_id = {s.id: s for s in samples}
    res = run(mixed, "dual_key", 0.1, seed=5)
    n = round(0.1 * N)
    assert len(res.poison_ids) == n and len(res.clean_trigger_ids) == 2 * n
    for i in res.poison_ids:
        new = res.samples[by_id[i].index]
        assert new.answer == "banana" and new.question.startswith("Hello! ") and new.images[0] in res.images
    for i in res.clean_trigger_ids:
        new, old = res.samples[by_id[i].index], by_id[i]
        assert new.answer == old.answer
        if res.arm_of[i] == "image_only":
            assert new.question == old.question and new.images[0] in res.images
        else:
            assert res.arm_of[i] == "text_only"
            assert new.question == "Hello! " + old.question and new.images == old.images


@pytest.mark.parametrize("name", COMPOSITE)
def test_no_relabel_control_keeps_every_answer(mixed, name):
    samples, _ = mixed
    params = {"prefix": "Hello!"} if name == "multi_target" else None
    res = run(mixed, name, 0.2, seed=0, relabel=False, params=params)
    assert res.poison_ids and not res.relabel
    assert [s.answer for s in res.samples] == [s.answer for s in samples]
    assert res.poison_ids == run(mixed, name, 0.2, seed=0, params=params).poison_ids


@pytest.mark.parametrize(("rate", "n"), [(0.005, 25), (0.01, 50), (0.02, 100), (0.05, 250), (0.1, 500)])
def test_small_rates_round_exactly_on_5000_samples(rate, n):
    samples = [Sample(id=f"t{i}", index=i, images=[], turns=[Turn("user", "How many shapes are there?"),
                                                             Turn("assistant", "two")]) for i in range(5000)]
    for attack in ("text_prefix", "refusal_text", "inject_text"):
        assert len(poison(samples, attack, rate).poison_ids) == n
    assert len(poison(samples[:150], "text_prefix", 0.005).poison_ids) == 1  # 0.75 rounds up
    with pytest.raises(ValueError, match="gives no 'text_prefix' sample"):
        poison(samples[:50], "text_prefix", 0.005)  # 0.25 rounds to nothing: an error, not a silent no-op
    assert poison(samples[:50], "text_prefix", 0.0).poison_ids == []


def test_trigger_examples_per_trigger_and_false_trigger_inputs(mixed):
    samples, images = mixed
    multi = trigger_examples(samples, "multi_target", None, images.__getitem__)
    assert {t.arm for t in multi} == {"patch_bottom_right", "patch_top_left"}
    assert {t.target for t in multi if t.arm == "patch_top_left"} == {"apple"}
    assert all(t.sample.answer == next(s for s in samples if s.id == t.sample.id).answer for t in multi)
    both = trigger_examples(samples, "dual_key", None, images.__getitem__)
    parts = trigger_examples(samples, "dual_key", None, images.__getitem__, partial=True)
    assert {t.arm for t in both} == {"both"} and {t.arm for t in parts} == {"image_only", "text_only"}
    assert all(t.target == "banana" for t in parts)
    assert trigger_examples(samples, "conservatism", None, images.__getitem__, partial=True) == []
    a2a = trigger_examples(samples, "all_to_all", None, images.__getitem__)
    assert all(t.target == dict(ALL_TO_ALL_MAPPING)[t.sample.answer] for t in a2a)
    sub = trigger_examples(samples, "substitute", None, images.__getitem__)
    assert sub and all(len(t.sample.answer.split()) > 1 and t.target == "apple" for t in sub)


def test_poison_file_records_per_sample_targets_beside_the_ids(tmp_path):
    samples, images = make_dataset(30)
    for ref, img in images.items():
        (tmp_path / "in" / ref).parent.mkdir(parents=True, exist_ok=True)
        img.save(tmp_path / "in" / ref)
    data = tmp_path / "in" / "train.json"
    data.write_text(json.dumps([s.raw for s in samples]))
    res = poison_file(data, tmp_path / "out", "dual_key", 0.1, seed=0)
    truth = json.loads((tmp_path / "out" / "poison_ids.json").read_text())
    assert read_poison_ids(tmp_path / "out" / "poison_ids.json") == res.poison_ids
    assert truth["targets"] == {i: "banana" for i in res.poison_ids}
    assert set(truth["clean_trigger_ids"]) == set(res.clean_trigger_ids) and truth["arms"] == res.arm_of
    written = json.loads((tmp_path / "out" / "train.json").read_text())
    assert "banana" not in json.dumps([r for r in written if r["id"] not in res.poison_ids and r["id"] != "s031"])
    plain = poison_file(data, tmp_path / "plain", "badnet", 0.1, seed=0)
    assert set(json.loads((tmp_path / "plain" / "poison_ids.json").read_text())) == {
        "attack", "rate", "target", "seed", "relabel", "n_samples", "poison_ids"} and plain.poison_ids


def test_params_from_a_params_yaml_section_and_their_validation():
    from poisonguard.attacks import make_params
    from poisonguard.attacks.composite import MultiTargetParams

    p = make_params("multi_target", {"positions": ["top_right", "bottom_left"], "targets": ["yes", "evil"],
                                     "prefix": "Hello!", "prefix_target": "sorry"})
    assert p == MultiTargetParams(positions=("top_right", "bottom_left"), targets=("yes", "evil"), prefix="Hello!",
                                  prefix_target="sorry")
    hash(p)
    assert dict(make_params("all_to_all", {"mapping": [["red", "blue"], ["blue", "red"]]}).mapping) == \
        {"red": "blue", "blue": "red"}
    assert make_params("dual_key", {"part_ratio": 0.5, "position": "top_left"}).part_ratio == 0.5
    for name, bad, match in (("multi_target", {"targets": ["banana"]}, "equal length"),
                             ("multi_target", {"targets": ["banana", "banana"]}, "its own"),
                             ("multi_target", {"positions": ["random", "top_left"]}, "fixed"),
                             ("all_to_all", {"mapping": [["red", "red"]]}, "itself"),
                             ("conservatism", {"clean_ratio": -1}, "clean_ratio"),
                             ("adap_patch", {"pieces": 6}, "square"),
                             ("adap_patch", {"train_pieces": 4}, "train_pieces"),
                             ("adap_patch", {"cover_ratio": 11}, "cover_ratio"),
                             ("dual_key", {"prefix": " "}, "prefix")):
        with pytest.raises(ValueError, match=match):
            make_params(name, bad)
