"""The GX release gate: a valid report passes (repeatedly), and each rule refuses its planted problem."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from poisonguard.gate import GateConfig, GateFailed, ReportError, check_release, load_report, run_gate
from poisonguard.gate.tables import releasable_ids
from tests.pipeline.reports import FLAGGED, QUARANTINED, Report, make_report


def failures(report: Report, gx_root: str, **kwargs) -> list[str]:
    with pytest.raises(GateFailed) as info:
        run_gate(report.dir, gate_root=gx_root, **kwargs)
    assert info.value.failures == info.value.result.failures
    assert all(f in str(info.value) for f in info.value.failures)
    return info.value.failures


def test_valid_report_passes_and_reruns(report: Report, tmp_path: Path) -> None:
    fresh_root = tmp_path / "fresh_gx"
    first = run_gate(report.dir, gate_root=fresh_root)
    second = run_gate(report.dir, gate_root=fresh_root)  # suites, checkpoint and source already exist
    assert first.success and second.success and not second.failures
    assert second.summary | {"report_dir": None, "input": None} == {
        "report_dir": None, "input": None, "n_input": 10, "n_verdicts": 10, "n_ok": 9, "n_quarantined": 1,
        "n_flagged": 2, "flag_rate": pytest.approx(2 / 9), "max_flag_rate": 0.3, "n_release": 7}
    docs = Path(second.data_docs.removeprefix("file://"))
    assert docs.is_file() and docs.is_relative_to(fresh_root)
    suites = sorted(p.stem for p in (fresh_root / "expectations").glob("*.json"))
    assert suites == ["poisonguard_provenance", "poisonguard_release", "poisonguard_verdicts"]
    assert (fresh_root / "checkpoints" / "poisonguard_release_gate.json").is_file()


def test_releasable_ids_leave_out_flagged_and_quarantined(report: Report) -> None:
    keep = releasable_ids(load_report(report.dir))
    assert keep == [i for i in report.ids if i not in FLAGGED and i not in QUARANTINED]


def _edit(fn: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable[[Report], None]:
    """A verdict-table edit re-recorded in the manifest: only the table rules can catch it."""

    def apply(report: Report) -> None:
        report.write_verdicts(fn(report.read_verdicts()), update_manifest=True)

    return apply


def _set(sid: str, column: str, value) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def fn(t: pd.DataFrame) -> pd.DataFrame:
        if value is None and not pd.api.types.is_string_dtype(t[column]):
            t[column] = t[column].astype(object)  # e.g. a null in the bool `flagged` column
        t.loc[t["id"] == sid, column] = value  # in a string column None becomes pd.NA, as pandas writes it
        return t

    return fn


TABLE_PROBLEMS = {
    "missing id": (_edit(lambda t: t[t["id"] != "s04"]), "one verdict row per input sample"),
    "duplicate id": (_edit(lambda t: pd.concat([t, t[t["id"] == "s01"]], ignore_index=True)), "ids are unique"),
    "unknown id": (_edit(_set("s02", "id", "zz")), "every verdict id is an id of the input dataset"),
    "wrong index": (_edit(_set("s02", "index", 7)), "`index` is the id's position in the input file"),
    "bad status": (_edit(_set("s02", "status", "maybe")), "status is ok or quarantined"),
    "missing status": (_edit(_set("s02", "status", None)), "every row has a status"),
    "p_poison above 1": (_edit(_set("s02", "p_poison", 1.5)), "p_poison lies in [0, 1]"),
    "ok without p_poison": (_edit(_set("s02", "p_poison", float("nan"))), "every screened (ok) sample has"),
    "missing flag": (_edit(_set("s02", "flagged", None)), "every row has a flag"),
    "missing column": (_edit(lambda t: t.drop(columns=["reason"])), "the verdict table has the contract's"),
    "too many flagged": (_edit(lambda t: t.assign(flagged=t["status"] == "ok")), "of the screened samples"),
}


@pytest.mark.parametrize("problem", sorted(TABLE_PROBLEMS))
def test_each_table_rule_refuses_its_problem(problem: str, report: Report, gx_root: str) -> None:
    plant, rule = TABLE_PROBLEMS[problem]
    plant(report)
    found = failures(report, gx_root)
    assert any(rule in f for f in found), found


def test_flag_rate_bound_comes_from_the_config(report: Report, gx_root: str) -> None:
    _edit(lambda t: t.assign(flagged=t["id"].isin(["s01", "s02", "s03", "s04"])))(report)  # 4 of 9 screened
    assert any("at most 0.3 of the screened samples" in f for f in failures(report, gx_root))
    assert run_gate(report.dir, gate_root=gx_root, config=GateConfig(max_flag_rate=0.5)).success
    with pytest.raises(ValueError, match="max_flag_rate"):
        GateConfig(max_flag_rate=1.5)


def test_edited_table_refused_by_checksum(report: Report, gx_root: str) -> None:
    report.write_verdicts(_set("s03", "flagged", False)(report.read_verdicts()), update_manifest=False)
    found = failures(report, gx_root)
    assert found == [f for f in found if f.startswith("provenance: verdicts_sha256 now equals")] and found


def test_changed_dataset_refused(report: Report, gx_root: str) -> None:
    records = json.loads(report.dataset.read_text())
    records[0]["conversations"][1]["value"] = "blue"  # same ids, different bytes
    report.dataset.write_text(json.dumps(records, indent=2))
    found = failures(report, gx_root)
    assert any(f.startswith("provenance: input_sha256 now equals") for f in found), found
    assert not any("ids_sha256 now equals" in f for f in found)


def test_vanished_dataset_refused(report: Report, gx_root: str) -> None:
    report.dataset.unlink()
    found = failures(report, gx_root)
    assert any("the input dataset named in manifest.json is readable" in f and "no longer exists" in f
               for f in found), found


@pytest.mark.parametrize(("extra", "rule"), [("s03", "no flagged id is released"),
                                             ("s05", "no quarantined id is released"),
                                             ("s01", "no sample is released twice"),
                                             ("intruder", "only input samples are released")])
def test_release_manifest_rules(extra: str, rule: str, report: Report, gx_root: str) -> None:
    loaded = load_report(report.dir)
    keep = releasable_ids(loaded)
    assert check_release(loaded, keep, gate_root=gx_root).success
    with pytest.raises(GateFailed) as info:
        check_release(loaded, [*keep, extra], gate_root=gx_root)
    assert any(f.startswith("release: ") and rule in f for f in info.value.failures), info.value.failures


def test_unreadable_report_is_bad_input(tmp_path: Path, gx_root: str) -> None:
    with pytest.raises(ReportError, match="manifest.json not found"):
        run_gate(tmp_path, gate_root=gx_root)
    report = make_report(tmp_path / "r")
    report.verdicts.write_bytes(b"not parquet")
    with pytest.raises(ReportError, match="not a readable Parquet table"):
        run_gate(report.dir, gate_root=gx_root)
