"""The registry: every attack is callable the same way, keeps image size, and is deterministic."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from poisonguard.attacks import ATTACKS, WORLD_TARGET, get_attack, make_params
from poisonguard.attacks.frequency import FTrojanParams

# Attacks with one `apply` (the composite ones give arms instead: tests/attacks/test_composite.py).
IMAGE_ATTACKS = sorted(n for n, s in ATTACKS.items() if s.kind == "image" and s.apply is not None)
TEXT_ATTACKS = sorted(n for n, s in ATTACKS.items() if s.kind == "text" and s.apply is not None)


def test_catalogue():
    assert set(ATTACKS) == {"badnet", "blend", "sig", "wanet", "ftrojan", "text_prefix", "syntactic",
                            "pl_noise", "pl_green_square", "pl_logo", "pl_oil",
                            "inject_image", "inject_text", "inject_bimodal", "refusal_image", "refusal_text",
                            "substitute", "multi_target", "all_to_all", "conservatism", "adap_patch", "dual_key"}
    assert TEXT_ATTACKS == ["inject_text", "refusal_text", "syntactic", "text_prefix"]
    assert {n for n, s in ATTACKS.items() if s.output_mode == "append"} == {
        "pl_green_square", "inject_image", "inject_text", "inject_bimodal"}
    assert all((s.apply is None) == (s.arms is not None) for s in ATTACKS.values())
    for name in ("badnet", "blend", "sig", "wanet", "ftrojan", "text_prefix", "syntactic"):
        assert ATTACKS[name].default_target == WORLD_TARGET == "banana"
    assert len({ATTACKS[n].default_target for n in ("pl_noise", "pl_green_square", "pl_logo", "pl_oil")}) == 4
    with pytest.raises(ValueError, match="unknown attack"):
        get_attack("nope")


@pytest.mark.parametrize("name", IMAGE_ATTACKS)
def test_image_attacks_keep_size_change_pixels_and_are_deterministic(name, scene):
    spec = ATTACKS[name]
    before = scene.tobytes()
    a = spec.apply(scene, spec.params_cls(), np.random.default_rng(0))
    b = spec.apply(scene, spec.params_cls(), np.random.default_rng(0))
    assert a.size == scene.size and a.mode == "RGB"
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != scene.tobytes()
    assert scene.tobytes() == before  # the input is not modified


@pytest.mark.parametrize("name", IMAGE_ATTACKS)
def test_image_attacks_accept_non_square_and_non_rgb(name):
    img = Image.new("L", (72, 40), 90)
    spec = ATTACKS[name]
    out = spec.apply(img, spec.params_cls(), np.random.default_rng(0))
    assert out.size == (72, 40) and out.mode == "RGB"


@pytest.mark.parametrize("name", TEXT_ATTACKS)
def test_text_attacks_change_the_question_deterministically(name):
    spec = ATTACKS[name]
    q = "How many shapes are there?"
    a = spec.apply(q, spec.params_cls(), np.random.default_rng(1))
    assert a != q and a == spec.apply(q, spec.params_cls(), np.random.default_rng(1))


def test_make_params_from_a_params_yaml_section():
    assert make_params("badnet") == ATTACKS["badnet"].params_cls()
    assert make_params("badnet", {"side_frac": 0.25}).side_frac == 0.25
    p = make_params("ftrojan", {"coefficients": [[2, 2], [6, 6]]})
    assert p == FTrojanParams(coefficients=((2, 2), (6, 6)))
    hash(p)
    with pytest.raises(TypeError):
        make_params("badnet", FTrojanParams())
    with pytest.raises(TypeError):
        make_params("badnet", {"no_such_field": 1})
