"""Build a valid REPORT_DIR the way `poisonguard screen` lays it out, from a tiny LLaVA JSON dataset and a
synthetic verdict table (no model involved), so gate, release, registry and flow tests share one fixture.

The layout and checksums follow the report contract: verdicts.parquet/.csv, detector.json, manifest.json
(input path, sha256, format, n_samples, ids_sha256; verdicts_sha256), report.html, metrics.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from poisonguard.gate.report import file_sha256, ids_sha256

N_SAMPLES = 10
FLAGGED_AT = (3, 7)  # positions of the samples the detector flags
QUARANTINED_AT = {5: "missing_image: images/gone.png not found"}  # its image is missing
FLAGGED = tuple(f"s{i:02d}" for i in FLAGGED_AT)
QUARANTINED = {f"s{i:02d}": reason for i, reason in QUARANTINED_AT.items()}


@dataclass
class Report:
    dir: Path
    dataset: Path
    ids: list[str]

    @property
    def verdicts(self) -> Path:
        return self.dir / "verdicts.parquet"

    @property
    def manifest(self) -> Path:
        return self.dir / "manifest.json"

    def read_verdicts(self) -> pd.DataFrame:
        return pd.read_parquet(self.verdicts)

    def write_verdicts(self, table: pd.DataFrame, *, update_manifest: bool) -> None:
        """Replace the verdict table; `update_manifest` re-records its checksum (a consistent, new screen)."""
        table.to_parquet(self.verdicts, index=False)
        table.to_csv(self.dir / "verdicts.csv", index=False)
        if update_manifest:
            manifest = json.loads(self.manifest.read_text())
            manifest["verdicts_sha256"] = file_sha256(self.verdicts)
            self.manifest.write_text(json.dumps(manifest, indent=2))


def make_dataset(folder: Path, n: int = N_SAMPLES, fmt: str = "llava", *, with_ids: bool = True
                 ) -> tuple[Path, list[str]]:
    """folder/train.json (LLaVA) or folder/train.jsonl (HF messages) + folder/images/*.png; returns the path
    and the sample ids as the reader assigns them (`__index_<i>` for HF messages written without ids).

    Sample 5 points at a missing image (quarantined by a real screen); the last sample is text-only.
    """
    (folder / "images").mkdir(parents=True, exist_ok=True)
    records, ids = [], []
    for i in range(n):
        sid = f"s{i:02d}"
        ids.append(sid)
        ref = None if i == n - 1 else "images/gone.png" if sid == "s05" else f"images/{sid}.png"
        if ref is not None and sid != "s05":
            Image.new("RGB", (8, 8), (20 * i, 100, 200 - 10 * i)).save(folder / ref)
        record = _llava(sid, ref) if fmt == "llava" else _hf_messages(sid, ref)
        if not with_ids:
            del record["id"]
            ids[-1] = f"__index_{i}"
        records.append(record)
    if fmt == "llava":
        path = folder / "train.json"
        path.write_text(json.dumps(records, indent=2), encoding="utf-8")
    else:
        path = folder / "train.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path, ids


QUESTION = "What colour is the square?"


def _llava(sid: str, ref: str | None) -> dict:
    record: dict = {"id": sid}
    if ref is not None:
        record["image"] = ref
    record["conversations"] = [{"from": "human", "value": f"<image>\n{QUESTION}" if ref else QUESTION},
                               {"from": "gpt", "value": "red"}]
    return record


def _hf_messages(sid: str, ref: str | None) -> dict:
    content = ([{"type": "image"}] if ref else []) + [{"type": "text", "text": QUESTION}]
    record: dict = {"id": sid, "messages": [{"role": "user", "content": content},
                                            {"role": "assistant", "content": "red"}]}
    if ref is not None:
        record["images"] = [ref]
    return record


def verdict_table(ids: list[str], *, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for index, sid in enumerate(ids):
        quarantined = index in QUARANTINED_AT
        flagged = index in FLAGGED_AT
        p = float("nan") if quarantined else (0.9 + 0.05 * rng.random() if flagged else 0.2 * rng.random())
        rows.append({
            "id": sid, "index": index, "status": "quarantined" if quarantined else "ok",
            "reason": QUARANTINED_AT.get(index, ""), "p_poison": p, "flagged": flagged,
            "vote_tcap": float(flagged) if not quarantined else float("nan"),
            "score_projector": float("nan") if quarantined else float(rng.normal()),
        })
    # the dtypes `poisonguard screen` writes (poisonguard.pipeline.verdicts.verdict_table)
    return pd.DataFrame(rows).astype({"id": "string", "status": "string", "reason": "string", "flagged": bool})


def detector_bundle(state: dict, name: str = "spectral") -> dict:
    """detector.json as `poisonguard screen` writes it: every fitted detector's state and the default one."""
    return {"default": name, "detectors": {name: state}}


def detector_state() -> dict:
    """A fitted spectral-signature detector on random hidden states: a real, JSON-only detector state."""
    from poisonguard.detect import SpectralSignatureDetector
    from poisonguard.detect.features import FeatureSet

    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(40, 8)).astype(np.float32)
    features = FeatureSet(ids=np.array([f"f{i}" for i in range(40)]), hidden=hidden)
    return SpectralSignatureDetector().fit(features).to_state()


def make_report(root: Path, *, fmt: str = "llava", with_ids: bool = True, detector: dict | None = None
                ) -> Report:
    """root/data/{train.json|train.jsonl, images/} and root/report/ with every file of the report contract;
    `detector` replaces the default detector state."""
    dataset, ids = make_dataset(root / "data", fmt=fmt, with_ids=with_ids)
    report_dir = root / "report"
    report_dir.mkdir(parents=True)
    table = verdict_table(ids)
    table.to_parquet(report_dir / "verdicts.parquet", index=False)
    table.to_csv(report_dir / "verdicts.csv", index=False)
    (report_dir / "detector.json").write_text(json.dumps(detector or detector_bundle(detector_state())))
    (report_dir / "report.html").write_text("<html><body><h1>poisonguard screening report</h1></body></html>")
    (report_dir / "metrics.json").write_text(json.dumps({"n_flagged": len(FLAGGED), "flag_rate": 0.2222}))
    manifest = {
        "input": {"path": str(dataset.resolve()), "sha256": file_sha256(dataset), "format": fmt,
                  "n_samples": len(ids), "ids_sha256": ids_sha256(ids)},
        "verdicts_sha256": file_sha256(report_dir / "verdicts.parquet"),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "params": {"default": "spectral", "strata_k": 2, "gate": {"max_flag_rate": 0.3}},
    }
    (report_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return Report(report_dir, dataset, ids)
