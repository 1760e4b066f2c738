"""Reading a screening report directory for the gate: the verdict table, the manifest, and the input again.

The gate never trusts the report's own description of the input. It re-reads the dataset file named in
`manifest.json`, hashes its bytes and recomputes the ids, so a dataset edited after screening (or a report
copied next to another dataset) shows up as a mismatch instead of a release of unscreened samples. The verdict
table is parsed from the very bytes that were hashed, so what GX validates is what the hash covers.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from poisonguard.data import DataError, Dataset, read_dataset

VERDICTS_FILE = "verdicts.parquet"
MANIFEST_FILE = "manifest.json"
DETECTOR_FILE = "detector.json"
REPORT_HTML = "report.html"
_CHUNK = 1 << 20


class ReportError(ValueError):
    """The report directory is unusable as a whole (a file missing or unparsable): bad input, not a verdict."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in chunks (datasets and images can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def ids_sha256(ids: list[str]) -> str:
    """The manifest's `ids_sha256`: sha256 of the ids joined by newlines, in input order (UTF-8)."""
    return sha256_bytes("\n".join(ids).encode("utf-8"))


@dataclass
class InputCheck:
    """The input dataset as found now. `dataset` is None when the file is gone or no longer parses; then
    `problem` says why and the gate fails on the provenance checks."""

    path: Path
    sha256: str | None
    dataset: Dataset | None
    problem: str = ""

    @property
    def ids(self) -> list[str]:
        return self.dataset.ids if self.dataset is not None else []


@dataclass
class ScreeningReport:
    """A report directory as the gate sees it."""

    report_dir: Path
    manifest: dict[str, Any]
    verdicts: pd.DataFrame
    verdicts_sha256: str
    input: InputCheck

    @property
    def expected(self) -> dict[str, Any]:
        """The manifest's description of the input (`manifest["input"]`)."""
        return self.manifest.get("input") or {}


def load_report(report_dir: str | Path) -> ScreeningReport:
    """Read REPORT_DIR/manifest.json and verdicts.parquet, and re-read the input dataset they name.

    Raises ReportError when the report itself is unusable. A changed or vanished *input* does not raise: it is
    a gate failure, recorded in the checkpoint like every other one.
    """
    report_dir = Path(report_dir)
    manifest = _read_manifest(report_dir / MANIFEST_FILE)
    verdict_bytes = _read_bytes(report_dir / VERDICTS_FILE)
    try:
        verdicts = pd.read_parquet(io.BytesIO(verdict_bytes))
    except Exception as exc:  # pyarrow raises several unrelated types for a damaged file
        raise ReportError(f"{report_dir / VERDICTS_FILE} is not a readable Parquet table: {exc}") from exc
    return ScreeningReport(report_dir, manifest, verdicts, sha256_bytes(verdict_bytes), _check_input(manifest, report_dir))


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(_read_bytes(path))
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("input"), dict) \
            or not manifest["input"].get("path"):
        raise ReportError(f"{path} must be an object with input.path (the screened dataset)")
    return manifest


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ReportError(f"{path} not found: is {path.parent} a report directory written by "
                          "`poisonguard screen`?") from None


def _check_input(manifest: dict[str, Any], report_dir: Path) -> InputCheck:
    """Paths in the manifest are relative to the report folder (so a moved or re-cloned workspace still
    verifies), or absolute."""
    spec = manifest["input"]
    path = Path(report_dir) / spec["path"]
    image_root = Path(report_dir) / spec["image_root"] if spec.get("image_root") else None
    try:
        before = file_sha256(path)
        dataset = read_dataset(path, image_root=image_root)
        after = file_sha256(path)
    except FileNotFoundError:
        return InputCheck(path, None, None, f"input dataset {path} no longer exists")
    except (DataError, OSError) as exc:
        return InputCheck(path, None, None, f"input dataset {path} cannot be read: {exc}")
    if before != after:  # written to while we parsed it: neither hash describes what we parsed
        return InputCheck(path, None, None, f"input dataset {path} changed while it was being read")
    return InputCheck(path, before, dataset)
