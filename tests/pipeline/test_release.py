"""Release: written only through a passing gate, in the input's own format, atomically; bypasses refused."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from poisonguard.data import read_dataset
from poisonguard.gate import GateFailed, file_sha256, release, release_cli
from tests.pipeline.reports import FLAGGED_AT, QUARANTINED_AT, Report, make_report, verdict_table


def kept_positions(report: Report) -> list[int]:
    return [i for i in range(len(report.ids)) if i not in FLAGGED_AT and i not in QUARANTINED_AT]


def kept_ids(report: Report) -> list[str]:
    return [report.ids[i] for i in kept_positions(report)]


@pytest.mark.parametrize(("fmt", "with_ids"), [("llava", True), ("hf_messages", True), ("hf_messages", False)])
def test_release_writes_input_format_images_and_record(fmt: str, with_ids: bool, tmp_path: Path,
                                                       gx_root: str) -> None:
    report = make_report(tmp_path, fmt=fmt, with_ids=with_ids)
    out = tmp_path / "release"
    path = release(report.dir, out, gate_root=gx_root)

    assert path == out / report.dataset.name
    released = read_dataset(path)
    assert released.format == fmt and len(released.samples) == 7
    # Same records, same key order: only the removed samples differ from the input.
    if fmt == "llava":
        original = json.loads(report.dataset.read_text())
        assert json.loads(path.read_text()) == [original[i] for i in kept_positions(report)]
    else:
        original = report.dataset.read_text().splitlines(keepends=True)
        assert path.read_text() == "".join(original[i] for i in kept_positions(report))

    refs = sorted(ref for s in released.samples for ref in s.images)
    assert sorted(str(p.relative_to(out)) for p in (out / "images").iterdir()) == refs  # only kept images
    for ref in refs:  # hard links: no copy of the image bytes
        assert os.path.samefile(out / ref, report.dataset.parent / ref)

    record = json.loads((out / "release.json").read_text())
    assert record["kept"] == kept_ids(report)
    assert {r["id"]: r["reason"].split(":")[0].split(" ")[0] for r in record["removed"]} == {
        report.ids[3]: "flagged", report.ids[5]: "quarantined", report.ids[7]: "flagged"}
    assert record["output"] == {"file": path.name, "sha256": file_sha256(path), "n_samples": 7}
    assert record["input"]["sha256"] == file_sha256(report.dataset)
    assert record["images"] == {ref: file_sha256(out / ref) for ref in refs}
    assert record["gate"]["success"] is True
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".release.")]  # no staging left behind


def _stale(report: Report) -> None:
    """The verdict table of an earlier screen (s03 not yet flagged) put back after a newer one."""
    old = verdict_table(report.ids)
    old.loc[old["id"] == "s03", "flagged"] = False
    report.write_verdicts(old, update_manifest=False)


def _edited(report: Report) -> None:
    table = report.read_verdicts()
    table.loc[table["id"] == "s07", "flagged"] = False  # un-flag a sample to smuggle it into the release
    report.write_verdicts(table, update_manifest=False)


def _missing_ids(report: Report) -> None:
    table = report.read_verdicts()
    report.write_verdicts(table[~table["id"].isin(["s01", "s02"])], update_manifest=True)


def _dataset_changed(report: Report) -> None:
    records = json.loads(report.dataset.read_text())
    records.append({**records[0], "id": "s99"})  # a sample nobody screened
    report.dataset.write_text(json.dumps(records, indent=2))


BYPASSES = {"stale verdict table": (_stale, "verdicts_sha256"),
            "edited verdict table": (_edited, "verdicts_sha256"),
            "verdict table missing ids": (_missing_ids, "one verdict row per input sample"),
            "dataset hash no longer matches": (_dataset_changed, "input_sha256")}


@pytest.mark.parametrize("bypass", sorted(BYPASSES))
def test_bypass_refused_and_nothing_written(bypass: str, report: Report, tmp_path: Path, gx_root: str) -> None:
    plant, rule = BYPASSES[bypass]
    plant(report)
    out = tmp_path / "release"
    with pytest.raises(GateFailed) as info:
        release(report.dir, out, gate_root=gx_root)
    assert any(rule in f for f in info.value.failures), info.value.failures
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".release")]


def test_rerelease_replaces_an_earlier_release_but_never_other_folders(report: Report, tmp_path: Path,
                                                                      gx_root: str) -> None:
    out = tmp_path / "release"
    release(report.dir, out, gate_root=gx_root)
    (out / "stale.txt").write_text("left from before")
    release(report.dir, out, gate_root=gx_root)
    assert not (out / "stale.txt").exists() and (out / "release.json").is_file()

    foreign = tmp_path / "someone_elses"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an earlier release"):
        release(report.dir, foreign, gate_root=gx_root)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_release_cli_exit_codes(report: Report, tmp_path: Path, gx_root: str, monkeypatch, capsys) -> None:
    monkeypatch.setenv("PG_GX_ROOT", gx_root)  # the CLI takes the GX project from the environment
    assert release_cli(report.dir, tmp_path / "ok") == 0
    assert "released 7 of 10 samples" in capsys.readouterr().out
    _edited(report)
    assert release_cli(report.dir, tmp_path / "blocked") == 1
    assert "release blocked" in capsys.readouterr().err and not (tmp_path / "blocked").exists()
    assert release_cli(tmp_path / "no_such_report", tmp_path / "bad") == 2
    assert "manifest.json not found" in capsys.readouterr().err


def test_approved_release_carries_its_audit_record(tmp_path: Path, gx_root: str) -> None:
    from datetime import UTC, datetime

    from poisonguard.gate import approval_record

    report = make_report(tmp_path)
    approval = approval_record("approved", reviewer=" alice ", note="ok", report_dir=report.dir,
                               flow_run_id="f-1", flow_run_name="release-drop-a", detector_version="3",
                               links={"flow_run": "http://prefect/runs/f-1", "mlflow_run": None},
                               decided_at=datetime(2026, 12, 4, 21, 0, tzinfo=UTC))
    release(report.dir, tmp_path / "out", gate_root=gx_root, approval=approval)

    record = json.loads((tmp_path / "out" / "release.json").read_text())
    assert record["released"] is True
    assert record["approval"] == {
        "decision": "approved", "reviewer": "alice", "note": "ok", "decided_at": "2026-12-04T21:00:00+00:00",
        "flow_run_id": "f-1", "flow_run_name": "release-drop-a", "detector_version": "3",
        "report": {"dir": str(report.dir.resolve()),
                   "report_html_sha256": file_sha256(report.dir / "report.html"),
                   "verdicts_sha256": file_sha256(report.verdicts)},
        "links": {"flow_run": "http://prefect/runs/f-1"}}


def test_rejection_writes_a_record_and_no_data(tmp_path: Path, gx_root: str) -> None:
    from poisonguard.gate import approval_record, record_decision

    report = make_report(tmp_path)
    out = tmp_path / "out"
    release(report.dir, out, gate_root=gx_root)  # an earlier release in the same folder is superseded
    rejected = approval_record("rejected", reviewer="bob", note="s07 looks odd", report_dir=report.dir)
    path = record_decision(report.dir, out, rejected)

    assert sorted(p.name for p in out.iterdir()) == ["release.json"]
    record = json.loads(path.read_text())
    assert record["released"] is False and record["output"] is None
    assert record["approval"]["decision"] == "rejected" and record["approval"]["reviewer"] == "bob"
    assert record["input"]["sha256"] == file_sha256(report.dataset)
    with pytest.raises(ValueError, match="name its reviewer"):
        approval_record("approved", reviewer=" ", report_dir=report.dir)
    with pytest.raises(ValueError, match="needs an approval"):
        release(report.dir, out, gate_root=gx_root, approval=rejected)
    with pytest.raises(ValueError, match="rejected or expired"):
        record_decision(report.dir, out, approval_record("approved", reviewer="x", report_dir=report.dir))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        record_decision(report.dir, foreign, rejected)
