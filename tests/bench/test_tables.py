"""The benchmark's Markdown tables: mean ± std over seeds, controls as flag rates, the defence table and the
goal check, computed from a hand-written summary whose right answers are known."""

from __future__ import annotations

import pytest

from poisonguard.bench.tables import (
    cell_kind,
    controls_table,
    defence_table,
    detection_table,
    fmt,
    goal_check,
    markdown_tables,
    mean_std,
)


def _det(f1, auroc, flag_rate, n_flagged, p=None, r=None):
    return {"precision": p if p is not None else f1, "recall": r if r is not None else f1, "f1": f1,
            "auroc": auroc, "flag_rate": flag_rate, "n_flagged": n_flagged}


def _summary():
    cells = []
    for seed, (f1, auc) in enumerate([(0.9, 0.97), (1.0, 0.99), (0.8, 0.98)]):
        cells.append({"cell": f"badnet_r0.1_s{seed}", "kind": "attack", "attack": "badnet", "rate": 0.1,
                      "seed": seed, "relabel": True, "n_poison": 10, "finetune_seconds": 5.0,
                      "after": {"cp": 0.60 + 0.01 * seed, "asr": 0.99, "poisoned_fit": 1.0},
                      "detection": {"fused": _det(f1, auc, 0.1, 10), "tcap": _det(0.2, 0.5, 0.5, 50)},
                      "retrain": {"oracle": {"cp": 0.61, "asr": 0.0, "n_removed": 10, "n_poison_removed": 10,
                                             "n_clean_removed": 0},
                                  "fused": {"cp": 0.60, "asr": 0.02 * seed, "n_removed": 10,
                                            "n_poison_removed": 9, "n_clean_removed": 1},
                                  "tcap": {"cp": 0.55, "asr": 0.9, "n_removed": 50, "n_poison_removed": 5,
                                           "n_clean_removed": 45}}})
        cells.append({"cell": f"clean_s{seed}", "kind": "clean", "attack": "clean", "rate": 0.0, "seed": seed,
                      "relabel": True, "n_poison": 0, "finetune_seconds": 5.0,
                      "after": {"cp": 0.61, "asr": 0.0}, "asr_by_attack": {"badnet": 0.0},
                      "detection": {"fused": _det(0.0, None, 0.0, 0), "tcap": _det(0.0, None, 0.4, 40)}})
        cells.append({"cell": f"badnet_r0.1_s{seed}_basemodel", "kind": "base_model", "attack": "badnet",
                      "rate": 0.1, "seed": seed, "relabel": True, "n_poison": 10,
                      "detection": {"fused": _det(0.0, 0.5, 0.0, 0), "tcap": _det(0.1, 0.5, 0.3, 30)}})
    return {"config": {"attacks": ["badnet"], "detectors": ["fused", "tcap"]},
            "base": {"attacks": {"badnet": {"cp": 0.58, "asr": 0.0}}}, "cells": cells}


def test_mean_and_sample_std_over_seeds():
    assert mean_std([0.9, 1.0, 0.8]) == (pytest.approx(0.9), pytest.approx(0.1), 3)
    assert fmt([0.9, 1.0, 0.8]) == "0.90 ± 0.10"
    assert fmt([0.5]) == "0.50"  # one seed: no spread is claimed
    assert fmt([None, float("nan")]) == "–"
    assert fmt([0.004, 0.006], 1, pct=True) == "0.5% ± 0.1"


def test_kind_of_results_written_before_kinds_existed():
    assert cell_kind({"attack": "clean", "relabel": True}) == "clean"
    assert cell_kind({"attack": "badnet", "relabel": False}) == "no_relabel"
    assert cell_kind({"attack": "badnet", "relabel": True}) == "attack"


def test_detection_table_aggregates_seeds_per_attack_and_detector():
    table = detection_table(_summary())
    assert "| attack | seeds | ASR | fit | learned | fused | tcap |" in table
    assert ("| badnet 10% | 3 | 0.990 ± 0.000 | 1.000 ± 0.000 | yes | 0.90 ± 0.10 / 0.98 ± 0.01 | "
            "0.20 ± 0.00 / 0.50 ± 0.00 |") in table


def test_controls_are_flag_rates():
    table = controls_table(_summary())
    assert "| base model on badnet 10% | 3 | 0.0% ± 0.0 (0) | 30.0% ± 0.0 (30) |" in table
    assert "| clean set (0%) | 3 | 0.0% ± 0.0 (0) | 40.0% ± 0.0 (40) |" in table


def test_defence_table_puts_methods_side_by_side():
    table = defence_table(_summary())
    assert "| attack | vanilla FT | clean FT | oracle | fused | tcap |" in table
    assert "| badnet 10% | 0.610 ± 0.010 / 0.990 ± 0.000 | 0.610 ± 0.000 / 0.000 ± 0.000 |" in table
    assert "| badnet 10% | 10 ± 0 / 0 ± 0 | 9 ± 0 / 1 ± 0 | 5 ± 0 / 45 ± 0 |" in table


def test_goal_check_reports_the_distance():
    text = goal_check(_summary())
    assert "Goal check for `fused`" in text
    assert "F1 ≥ 0.95 (mean over seeds): met in 0 of 1; worst badnet 10% at 0.90" in text
    assert "AUROC ≥ 0.98: met in 1 of 1" in text
    assert "flags ≤ 1% on the clean set: met in 3 of 3" in text
    assert "no flag with the base model on the poisoned data: met in 3 of 3" in text
    assert "no flag on the no-relabel controls: not measured" in text
    assert "ASR ≤ 1% after retraining on the cleaned set: met in 0 of 1; worst badnet 10% at 2.0%" in text
    assert "CP within 0.5 point of the clean fine-tune (clean − retrained): met in 0 of 1; worst badnet 10% at 0.010" in text
    assert "met in 1 of 1" in goal_check(_summary(), "fused").splitlines()[2]
    assert "worst badnet 10% at 0.20" in goal_check(_summary(), "tcap")


def test_markdown_block_separates_every_table_by_a_blank_line():
    md = markdown_tables(_summary())
    lines = md.splitlines()
    for i, line in enumerate(lines[1:], 1):
        if line.startswith("|") and not lines[i - 1].startswith("|"):
            assert lines[i - 1] == "", f"table at line {i} follows text without a blank line"


def test_scoped_defence_loop_compares_only_the_retrained_seeds():
    """--retrain-seeds 0: the vanilla and clean references come from seed 0 alone, not from all seeds."""
    s = _summary()
    for c in s["cells"]:
        if c["kind"] == "attack" and c["seed"] != 0:
            del c["retrain"]
    table = defence_table(s)
    assert "| badnet 10% | 0.600 / 0.990 | 0.610 / 0.000 | 0.610 / 0.000 | 0.600 / 0.000 | 0.550 / 0.900 |" in table
    assert "| badnet 10% | 10 / 0 | 9 / 1 | 5 / 45 |" in table


def test_goal_check_also_for_fused_when_another_detector_is_the_default():
    s = _summary()
    s["config"]["detectors"] = ["tcap", "fused"]
    md = markdown_tables(s)
    assert md.index("Goal check for `tcap`") < md.index("Goal check for `fused`")


def _with_unlearned_rows():
    """The summary plus an attack nobody learned (ASR 0.1, 0.2) and one learned in one seed of two."""
    s = _summary()
    for seed, (asr, f1) in enumerate([(0.1, 0.0), (0.2, 0.0)]):
        s["cells"].append({"cell": f"all_to_all_r0.1_s{seed}", "kind": "attack", "attack": "all_to_all", "rate": 0.1,
                           "seed": seed, "relabel": True, "n_poison": 10,
                           "after": {"cp": 0.6, "asr": asr, "poisoned_fit": 0.3},
                           "detection": {"fused": _det(f1, 0.5, 0.0, 0), "tcap": _det(f1, 0.5, 0.0, 0)}})
    for seed, (asr, f1) in enumerate([(0.9, 1.0), (0.3, 0.0)]):
        s["cells"].append({"cell": f"conservatism_r0.1_s{seed}", "kind": "attack", "attack": "conservatism",
                           "rate": 0.1, "seed": seed, "relabel": True, "n_poison": 10,
                           "after": {"cp": 0.6, "asr": asr, "poisoned_fit": 0.5},
                           "detection": {"fused": _det(f1, 1.0, 0.1, 10), "tcap": _det(f1, 1.0, 0.1, 10)}})
    s["config"]["attacks"] += ["all_to_all", "conservatism"]
    return s


def test_a_backdoor_that_was_not_learned_is_marked_and_no_detection_miss():
    from poisonguard.bench.tables import LEARNED_ASR, full_detection_table, learned

    assert LEARNED_ASR == 0.5 and learned({"after": {"asr": 0.5}}) and not learned({"after": {"asr": 0.49}})
    assert learned({"after": {}}) is None
    s = _with_unlearned_rows()
    table = detection_table(s)
    assert "| all_to_all 10% | 2 | 0.150 ± 0.071 | 0.300 ± 0.000 | not learned | not learned | not learned |" in table
    # mixed: the detection figures are those of the learned seed only
    assert "| conservatism 10% | 2 | 0.600 ± 0.424 | 0.500 ± 0.000 | 1 of 2 seeds | 1.00 / 1.00 | 1.00 / 1.00 |" in table
    full = full_detection_table(s)
    assert "| all_to_all 10% | 0.150 ± 0.071 | 0.300 ± 0.000 | not learned | fused | 0.00 ± 0.00 |" in full
    goal = goal_check(s)
    assert "not learned (ASR < 0.5 on triggered test inputs; not counted as misses): all_to_all 10%" in goal
    assert "F1 ≥ 0.95 (mean over seeds): met in 1 of 2; worst badnet 10% at 0.90" in goal  # conservatism counts 1.00


def test_the_vote_gets_a_column_when_the_cells_measured_it():
    summary = _summary()
    for c in summary["cells"]:
        c["detection"]["vote"] = _det(0.5, 0.7, 0.05, 5)
    table = detection_table(summary)
    assert "| attack | seeds | ASR | fit | learned | fused | tcap | vote |" in table
    assert "0.50 ± 0.00 / 0.70 ± 0.00 |" in table
    assert "| vote |" not in detection_table(_summary())  # not measured: no column
