"""Writing a cleaned release: only through a passing checkpoint, and all at once or not at all.

Order matters. The release manifest (the ids to write) is computed first, the checkpoint validates exactly
that manifest against the verdict table and the re-read input, and only then is anything written: the dataset
in the input's own format (same file name), the kept samples' images (hard links where possible, same
relative paths) and `release.json`. Everything goes into a temporary folder next to `out_dir` that is renamed
into place at the end, so a failed gate or a crash leaves `out_dir` untouched.

Every decision on a release is recorded in `release.json`: who decided, what (approved, rejected, expired),
the note, when, in which flow run, on which detector version and which report (checksums of report.html and
the verdict table). An approval is written with the release (`release(..., approval=...)`); a rejection or
an expired approval writes a folder holding only the record (`record_decision`), so a drop that was turned
down still has its audit trail and never looks like a release (`"released": false`, no dataset file).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from poisonguard.data import read_dataset, resolve_image_path, write_dataset
from poisonguard.data.dataset import Dataset
from poisonguard.data.writer import atomic_write_bytes
from poisonguard.gate.checkpoint import GateFailed, GateResult, check_release
from poisonguard.gate.config import GateConfig, gate_config
from poisonguard.gate.report import (
    MANIFEST_FILE,
    REPORT_HTML,
    VERDICTS_FILE,
    ScreeningReport,
    file_sha256,
    load_report,
)
from poisonguard.gate.tables import OK, releasable_ids

RELEASE_FILE = "release.json"
EXIT_OK, EXIT_BLOCKED, EXIT_BAD_INPUT = 0, 1, 2
APPROVED, REJECTED, EXPIRED = "approved", "rejected", "expired"
DECISIONS = (APPROVED, REJECTED, EXPIRED)


def approval_record(decision: str, *, reviewer: str, report_dir: str | Path, note: str = "",
                    flow_run_id: str | None = None, flow_run_name: str | None = None,
                    detector_version: str | None = None, links: Mapping[str, str | None] | None = None,
                    decided_at: datetime | None = None) -> dict[str, Any]:
    """The audit block of release.json for one decision on the report in `report_dir`.

    `reviewer` must be named for an approval (a release names who let it out); `links` are URLs an auditor
    can follow later (flow run, MLflow run, report). Raises ValueError for an unknown decision or an
    unnamed approver.
    """
    if decision not in DECISIONS:
        raise ValueError(f"decision must be one of {', '.join(DECISIONS)}, not {decision!r}")
    if decision == APPROVED and not reviewer.strip():
        raise ValueError("an approval must name its reviewer")
    report_dir = Path(report_dir)
    html = report_dir / REPORT_HTML
    verdicts = report_dir / VERDICTS_FILE
    when = (decided_at or datetime.now(UTC)).astimezone(UTC)
    return {
        "decision": decision,
        "reviewer": reviewer.strip(),
        "note": note,
        "decided_at": when.isoformat(timespec="seconds"),
        "flow_run_id": None if flow_run_id is None else str(flow_run_id),
        "flow_run_name": flow_run_name,
        "detector_version": None if detector_version is None else str(detector_version),
        "report": {
            "dir": str(report_dir.resolve()),
            "report_html_sha256": file_sha256(html) if html.is_file() else None,
            "verdicts_sha256": file_sha256(verdicts) if verdicts.is_file() else None,
        },
        "links": {k: v for k, v in (links or {}).items() if v},
    }


def record_decision(report_dir: str | Path, out_dir: str | Path, approval: Mapping[str, Any]) -> Path:
    """Write a release.json that releases nothing, for a rejected or expired decision; return its path.

    `out_dir` ends up holding only that file (written beside it and renamed into place, like a release), so
    an earlier release in the same folder is replaced by the record of the later decision. Raises ValueError
    for an approval (use `release`) and FileExistsError when `out_dir` is not an earlier release.
    """
    if approval.get("decision") not in (REJECTED, EXPIRED):
        raise ValueError(f"record_decision is for rejected or expired decisions, not {approval.get('decision')!r}")
    out_dir = Path(out_dir)
    _check_replaceable(out_dir)
    manifest = json.loads((Path(report_dir) / MANIFEST_FILE).read_text())
    record = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "released": False,
        "approval": dict(approval),
        "report_dir": str(Path(report_dir).resolve()),
        "input": {k: (manifest.get("input") or {}).get(k)
                  for k in ("path", "sha256", "format", "n_samples", "ids_sha256")},
        "verdicts_sha256": manifest.get("verdicts_sha256"),
        "output": None,
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".partial"))
    try:
        atomic_write_bytes(staging / RELEASE_FILE, json.dumps(record, indent=2).encode("utf-8"))
        os.chmod(staging, 0o755)
        _swap_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir / RELEASE_FILE


def release(report_dir: str | Path, out_dir: str | Path, *, gate_root: str | Path | None = None,
            config: GateConfig | None = None, link_images: bool = True,
            approval: Mapping[str, Any] | None = None) -> Path:
    """Gate, then write the cleaned dataset of `report_dir` into `out_dir`; return the dataset file's path.
    `approval` (see `approval_record`, decision "approved") goes into release.json as the audit record.

    Raises GateFailed (nothing written) when the checkpoint fails, ReportError for an unreadable report,
    FileExistsError when `out_dir` holds something other than an earlier release, and ValueError for an
    `approval` that is not one.
    """
    if approval is not None and approval.get("decision") != APPROVED:
        raise ValueError(f"a release needs an approval, not a {approval.get('decision')!r} decision")
    out_dir = Path(out_dir)
    _check_replaceable(out_dir)
    report = load_report(report_dir)
    keep = releasable_ids(report)
    gate = check_release(report, keep, gate_root=gate_root, config=config)
    dataset = report.input.dataset
    if dataset is None:  # unreachable: the provenance suite fails when the input cannot be re-read
        raise RuntimeError("the gate passed without a readable input dataset")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".partial"))
    try:
        data_path = write_dataset(dataset, staging / dataset.path.name, keep_ids=keep)
        _check_written(dataset, keep, data_path)
        images = _copy_images(dataset, keep, staging, link=link_images)
        if file_sha256(dataset.path) != report.input.sha256:
            raise GateFailed(GateResult(False, [f"input dataset {dataset.path} changed during the release"],
                                        gate.summary, gate.data_docs))
        record = _release_record(report, keep, data_path, images, gate)
        if approval is not None:
            record["approval"] = dict(approval)
        atomic_write_bytes(staging / RELEASE_FILE, json.dumps(record, indent=2).encode("utf-8"))
        os.chmod(staging, 0o755)  # mkdtemp makes it private; a release is meant to be read by others
        _swap_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir / data_path.name


def release_cli(report_dir: str | Path, out_dir: str | Path, *, params: str | Path | None = None) -> int:
    """`poisonguard release`: 0 released, 1 blocked by the gate, 2 bad input; messages on stderr. The gate
    settings come from params.yaml (`params`, default the repo's) and the GX project from `PG_GX_ROOT`."""
    try:
        path = release(report_dir, out_dir, config=gate_config(params))
    except GateFailed as exc:
        print(f"release blocked: {exc}", file=sys.stderr)
        return EXIT_BLOCKED
    except (ValueError, OSError) as exc:  # ReportError, DataError, ImageError, bad params, out_dir in use
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    record = json.loads((Path(out_dir) / RELEASE_FILE).read_text())
    print(f"released {record['output']['n_samples']} of {record['input']['n_samples']} samples "
          f"({len(record['removed'])} removed) to {path}")
    return EXIT_OK


def _check_written(dataset: Dataset, keep: list[str], data_path: Path) -> None:
    """The written file must hold exactly the kept records, in order. Compared by record, not by id: ids a
    reader assigns by position (`__index_<i>`, HF messages without ids) shift once samples are removed."""
    wanted = set(keep)
    expected = [s.raw for s in dataset.samples if s.id in wanted]
    written = [s.raw for s in read_dataset(data_path).samples]
    if written != expected:
        raise RuntimeError(f"the release writer wrote {len(written)} records to {data_path}, not the "
                           f"{len(expected)} the gate passed")


def _check_replaceable(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir())
                                                       and not (out_dir / RELEASE_FILE).is_file())):
        raise FileExistsError(f"{out_dir} exists and is not an earlier release (no {RELEASE_FILE}); "
                              "choose an empty or new folder")


def _copy_images(dataset: Dataset, keep: list[str], staging: Path, *, link: bool) -> dict[str, str]:
    """Place each kept sample's images under `staging` at the same relative path; return ref -> sha256."""
    wanted = set(keep)
    done: dict[str, str] = {}
    for sample in dataset.samples:
        if sample.id not in wanted:
            continue
        for ref in sample.images:
            if ref in done:
                continue
            src = resolve_image_path(ref, dataset.image_root)  # raises for refs leaving the image folder
            dst = Path(os.path.normpath(staging / ref))
            if not dst.is_relative_to(staging):
                raise ValueError(f"image reference {ref!r} would be written outside the release folder")
            dst.parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(src, dst, link=link)
            done[ref] = file_sha256(dst)
    return done


def _link_or_copy(src: Path, dst: Path, *, link: bool) -> None:
    if link:
        try:
            os.link(src, dst)
            return
        except OSError:  # another file system, or links not permitted: fall back to a copy
            pass
    shutil.copy2(src, dst)


def _release_record(report: ScreeningReport, keep: list[str], data_path: Path, images: dict[str, str],
                    gate: GateResult) -> dict[str, Any]:
    kept = set(keep)
    rows = {r["id"]: r for r in report.verdicts.to_dict("records")}
    removed = []
    for sample_id in report.input.ids:
        if sample_id in kept:
            continue
        row = rows.get(sample_id, {})
        status = row.get("status")
        why = (f"quarantined: {row.get('reason') or 'no reason given'}" if status != OK
               else f"flagged (p_poison={float(row.get('p_poison', float('nan'))):.4f})")
        removed.append({"id": sample_id, "status": status, "flagged": bool(row.get("flagged")), "reason": why})
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "released": True,
        "report_dir": str(Path(report.report_dir).resolve()),
        "input": {k: report.expected.get(k) for k in ("path", "sha256", "format", "n_samples", "ids_sha256")},
        "verdicts_sha256": report.verdicts_sha256,
        "output": {"file": data_path.name, "sha256": file_sha256(data_path), "n_samples": len(keep)},
        "kept": keep,
        "removed": removed,
        "images": images,
        "gate": {"success": gate.success, "data_docs": gate.data_docs, **gate.summary},
    }


def _swap_into_place(staging: Path, out_dir: Path) -> None:
    """Rename `staging` to `out_dir`; an earlier release there is moved aside first and removed after."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, old)
    try:
        os.replace(staging, out_dir)
    except BaseException:
        if old is not None:
            os.replace(old, out_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
