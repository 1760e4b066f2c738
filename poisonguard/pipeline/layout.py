"""Where each stage reads and writes. Two layouts of the same files:

- `Layout.screen(out)`: `poisonguard screen`'s report folder -- the report files at its top level (the
  documented contract: verdicts.parquet/csv, clean.json, report.html, manifest.json, detector.json), the
  intermediate files in sub-folders;
- `Layout.dvc(work)`: the DVC pipeline's `work/`, one folder per stage, because DVC outputs may not overlap.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from poisonguard.extract.features import DRIFT_FILE


@dataclass(frozen=True)
class Layout:
    validation: Path  # per-sample verdicts of validation (JSON), written by extract_attention
    extract: Path  # finetuned/ and base/ shard folders
    drift: Path  # per-sample projector-drift scores (npz)
    audit: Path  # the weight-space audit of the projector (audit.json, plots)
    profile: Path  # features.npz and heads.csv
    gmm: Path  # detectors.json: every fitted detector's JSON state
    report: Path  # the verdict table, release candidate, manifest and report.html
    gate: Path  # result.json of the GX checkpoint
    metrics: Path  # counts and losses (DVC metrics: the same inputs give the same file)
    timings: Path  # seconds per stage and other run facts (never a DVC output: they change from run to run)

    @classmethod
    def screen(cls, out: str | Path) -> Layout:
        out = Path(out)
        return cls(validation=out / "extract" / "validation.json", extract=out / "extract",
                   drift=out / "extract" / DRIFT_FILE, audit=out / "audit", profile=out / "profile",
                   gmm=out / "gmm", report=out, gate=out / "gate", metrics=out / "metrics",
                   timings=out / "metrics")

    @classmethod
    def dvc(cls, work: str | Path) -> Layout:
        work = Path(work)
        return cls(validation=work / "extract" / "validation.json", extract=work / "extract",
                   drift=work / "audit" / DRIFT_FILE, audit=work / "audit", profile=work / "profile",
                   gmm=work / "gmm", report=work / "report", gate=work / "gate", metrics=work / "metrics",
                   timings=work / "timings")

    @property
    def features(self) -> Path:
        return self.profile / "features.npz"

    @property
    def heads(self) -> Path:
        return self.profile / "heads.csv"

    @property
    def detectors(self) -> Path:
        return self.gmm / "detectors.json"

    @property
    def left_out(self) -> Path:
        return self.gmm / "left_out.json"

    def metrics_file(self, stage: str) -> Path:
        return self.metrics / f"{stage}.json"

    def timings_file(self, stage: str) -> Path:
        return self.timings / f"{stage}.timings.json"
