"""benchmarks/probe_trigger.py: the linear probe that asks whether the frozen vision tower sees a trigger, and
bench_recipe.py's cell naming for the probe's follow-up cells."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_recipe
import probe_trigger


def test_the_probe_separates_a_shifted_class_and_not_a_copy_of_the_clean_one():
    rng = np.random.default_rng(0)
    clean_tr, clean_te = rng.normal(size=(400, 6)), rng.normal(size=(300, 6))
    shifted = lambda n: rng.normal(size=(n, 6)) + np.r_[3.0, np.zeros(5)]
    assert probe_trigger.probe_auroc(clean_tr, shifted(50), clean_te, shifted(300)) > 0.97
    same = lambda n: rng.normal(size=(n, 6))
    assert abs(probe_trigger.probe_auroc(clean_tr, same(50), clean_te, same(300)) - 0.5) < 0.1


def test_the_features_pool_the_towers_patch_tokens(tiny_world, world_processor):
    from poisonguard.models import load_full

    world, _ = tiny_world
    model, processor = load_full(world / "base_model")
    images = probe_trigger.draw(3, np.random.default_rng(0))
    feats = probe_trigger.tower_features(model, processor, images)
    hidden = model.config.vision_config.hidden_size
    assert feats.shape == (3, 2 * hidden)
    # max-pooled half >= mean-pooled half, elementwise
    assert np.all(feats[:, :hidden] >= feats[:, hidden:] - 1e-6)


def test_a_run_gives_one_row_per_variant_and_probe_size(tiny_world):
    world, _ = tiny_world
    rows = probe_trigger.run(world, "badnet", {"random": {"position": "random"}, "corner": {}}, [4, 8],
                             n_clean=16, n_test=8, seed=0)
    assert [(r["variant"], r["triggered_train"]) for r in rows] == [("random", 4), ("random", 8), ("corner", 4),
                                                                    ("corner", 8)]
    assert all(0.0 <= r["auroc"] <= 1.0 for r in rows)


def test_a_text_trigger_is_refused():
    with pytest.raises(SystemExit, match="not a single image trigger"):
        probe_trigger.run(Path("unused"), "text_prefix", {"default": {}}, [4], 8, 4, 0)


def test_recipe_cells_name_the_patch_size_so_their_poisoned_data_is_not_shared():
    bn6 = bench_recipe.Cell("base", "badnet", 0.01, 0, params=bench_recipe.BADNET_RANDOM)
    bn12 = bench_recipe.Cell("base", "badnet", 0.01, 0, params=bench_recipe.BADNET_RANDOM_12PX)
    assert bn6.data_name == "bnrand1_s0"  # the name of the cells measured before 2026-12-06
    assert bn12.data_name == "bnrand1_side0.25_s0"
    coarse = bench_recipe.Cell("ep10", "badnet", 0.01, 0, params=bench_recipe.BADNET_RANDOM_12PX_4PXCELLS)
    assert coarse.data_name == "bnrand1_side0.25_cells3_s0", "the cell count is part of the data's name too"
    names = [c.name for c in bench_recipe._cells("all")]
    assert len(names) == len(set(names))
