"""A 100,000-sample drop through ingest -> validation -> verdict table, with time and peak memory per stage.

    python benchmarks/bench_scale.py                       # 100,000 samples, one image file each
    python benchmarks/bench_scale.py --n 5000 --extract-n 256   # a smoke run

What runs, and on what:
* **generate** (not part of a screen): the embedded world's scene renderer writes one 48x48 PNG per sample
  (`--unique-images K` instead writes K files and cycles the samples over them) into `images/NNN/`, and the
  LLaVA JSON is streamed to disk record by record.
* **ingest**: `read_dataset` (the whole JSON is parsed; records are small, images are not opened).
* **validate**: `check_dataset` with the screen's own tokenizer context check (the world processor): every
  image file is opened through the safe loader, fully decoded and closed again; only the outcome per file is
  kept, never a decoded image.
* **fingerprint**: the per-sample content digests a resumable extraction is keyed on (reads every image
  file's bytes again).
* **extract**: the real extraction path (`LazyExamples` + `extract_to_dir`, sharded) with the embedded world
  model's architecture (randomly initialised: speed does not depend on the weights) on the first
  `--extract-n` usable samples; its time per sample is extrapolated to the whole drop and two models (the
  fine-tuned and the base model). On 2 CPU cores the full extraction is the one stage too slow to run here.
* **detect**: all seven detectors fitted and scored on N synthetic feature rows with the world model's shapes
  (6 layers x 4 heads, hidden 128), keyed by the drop's real ids.
* **verdict table**: `write_report_dir` on the real checked dataset and those detector results:
  verdicts.parquet/csv, the release candidate clean.json, detector.json, manifest.json (with input hashes).

Peak memory is the process's peak resident set size within each stage (Linux: reset through
/proc/self/clear_refs before the stage, read from VmHWM after), so it is never below what earlier stages still
hold; "RSS after" shows what the stage left held. Removing the 100,000 files afterwards takes minutes on a busy
disk; `--out DIR` keeps them instead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

MIB = 2**20


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (peak RSS) to the current RSS
        return True
    except OSError:
        return False


class Stages:
    """Wall time and peak RSS per stage; printed as a table and kept as JSON."""

    def __init__(self):
        self.rows: list[dict] = []

    @contextmanager
    def stage(self, name: str, note: str = ""):
        resettable = _reset_peak()
        t0 = time.perf_counter()
        row = {"stage": name, "note": note}
        yield row
        row["seconds"] = round(time.perf_counter() - t0, 1)
        row["peak_rss_mib"] = round(_status_kib("VmHWM") / 1024) if resettable else None
        row["rss_after_mib"] = round(_status_kib("VmRSS") / 1024)
        self.rows.append(row)
        print(f"  {name:14s} {row['seconds']:8.1f} s   peak {row['peak_rss_mib']} MiB   {row['note']}", flush=True)

    def table(self) -> str:
        lines = ["| stage | time (s) | peak RSS (MiB) | RSS after (MiB) | note |", "|---|---|---|---|---|"]
        for r in self.rows:
            lines.append(f"| {r['stage']} | {r['seconds']} | {r['peak_rss_mib']} | {r['rss_after_mib']} | {r['note']} |")
        return "\n".join(lines)


def generate(out: Path, n: int, unique: int, seed: int = 0) -> Path:
    """Scenes and questions of the embedded world; the JSON is written as a stream, never held as a list."""
    from poisonguard.world.questions import QUESTION_TYPES, ask
    from poisonguard.world.scenes import render, sample_scene

    rng = np.random.default_rng(seed)
    images = out / "images"
    refs = []
    for k in range(unique):
        ref = f"images/{k // 1000:03d}/{k:06d}.png"
        (images / f"{k // 1000:03d}").mkdir(parents=True, exist_ok=True)
        render(sample_scene(rng)).save(out / ref, format="PNG")
        refs.append(ref)
    path = out / "train.json"
    with open(path, "w", encoding="utf-8") as f:
        f.write("[\n")
        for i in range(n):
            qa = ask(sample_scene(rng), rng, QUESTION_TYPES[i % len(QUESTION_TYPES)])
            record = {"id": f"s{i:06d}", "image": refs[i % unique],
                      "conversations": [{"from": "human", "value": f"<image>\n{qa.question}"},
                                        {"from": "gpt", "value": qa.answer}]}
            f.write(("  " if i == 0 else ",\n  ") + json.dumps(record))
        f.write("\n]\n")
    return path


def synthetic_features(ids: list[str], n_layers: int = 6, n_heads: int = 4, hidden: int = 128, seed: int = 0):
    """Feature rows with the embedded model's shapes: Dirichlet attention shares, Gaussian hidden states."""
    from poisonguard.detect import FeatureSet
    from poisonguard.detect.strata import label_free_strata
    from poisonguard.pipeline.config import AuditConfig

    rng = np.random.default_rng(seed)
    n = len(ids)
    alloc = rng.dirichlet([2.0, 5.0, 3.0], size=(n, n_layers, n_heads)).astype(np.float32)  # (N, L, H, 3)
    alloc_base = rng.dirichlet([2.0, 5.0, 3.0], size=(n, n_layers, n_heads)).astype(np.float32)
    h = rng.normal(size=(n, hidden)).astype(np.float32)  # (N, D)
    return FeatureSet(ids=np.asarray(ids), alloc=alloc, alloc_base=alloc_base, strata=label_free_strata(h, 8),
                      vis_entropy=rng.uniform(1.0, 2.2, size=(n, n_layers)).astype(np.float32), hidden=h,
                      extra_scores={k: rng.lognormal(size=n) for k in AuditConfig().scores})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="samples in the drop")
    ap.add_argument("--unique-images", type=int, default=None, help="image files (default: one per sample)")
    ap.add_argument("--extract-n", type=int, default=2_000, help="usable samples run through extraction")
    ap.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one, removed)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("PG_THREADS", "1")))
    args = ap.parse_args()

    import torch

    from poisonguard.data.dataset import read_dataset
    from poisonguard.data.loading import check_dataset
    from poisonguard.detect.registry import make_detectors
    from poisonguard.extract import extract_to_dir
    from poisonguard.pipeline.config import load_config
    from poisonguard.pipeline.validate import context_check
    from poisonguard.pipeline.verdicts import write_report_dir
    from poisonguard.train.examples import LazyExamples
    from poisonguard.world.model import WorldModelConfig, build_model
    from poisonguard.world.tokenizer import build_processor

    torch.set_num_threads(args.threads)
    unique = args.unique_images or args.n
    out = args.out or Path(tempfile.mkdtemp(prefix="pg-scale-"))
    out.mkdir(parents=True, exist_ok=True)
    st = Stages()
    print(f"bench_scale: {args.n:,} samples, {unique:,} image files, {args.threads} thread(s) -> {out}")
    print(f"  baseline RSS after imports: {_status_kib('VmRSS') // 1024} MiB")
    try:
        with st.stage("generate", f"{unique:,} PNG files (48x48) + streamed JSON") as row:
            data = generate(out, args.n, unique)
            row["note"] += f", JSON {data.stat().st_size / MIB:.0f} MiB"
        with st.stage("ingest", "read_dataset: parse JSON into typed samples"):
            ds = read_dataset(data)
        processor = build_processor()
        with st.stage("validate", "every image decoded once (safe loader) + tokenizer context check") as row:
            checked = check_dataset(ds, checks=(context_check(processor, 128 - 9),))
            row["note"] += f"; {len(checked.ok):,} ok"
        ok = checked.ok
        with st.stage("fingerprint", "content digests for resumable shards (image bytes re-read)"):
            checked.digests(ok)
        k = min(args.extract_n, len(ok))
        with st.stage("extract", f"{k:,} samples, world-model architecture, shards of 1024") as row:
            model = build_model(WorldModelConfig(), processor.tokenizer).eval()
            t0 = time.perf_counter()
            sub = ok[:k]
            extract_to_dir(model, processor, LazyExamples(sub, checked.image_loader()), [s.id for s in sub],
                           out / "extract", shard_size=1024, batch_size=64, show_progress=False)
            per_sample = (time.perf_counter() - t0) / k
            full = per_sample * len(ok) * 2
            row["note"] += f"; {per_sample * 1e3:.1f} ms/sample -> {full / 60:.0f} min for {len(ok):,} x 2 models"
            row["extrapolated_full_s"] = round(full)
        detectors = load_config().fit_gmm.detectors
        with st.stage("detect", f"all {len(detectors)} detectors on {len(ok):,} synthetic feature rows"):
            features = synthetic_features([s.id for s in ok])
            dets = make_detectors(detectors)
            results = {name: det.fit(features).score(features) for name, det in dets.items()}
        with st.stage("verdict table", "verdicts.parquet/csv, clean.json, manifest (input hashes)") as row:
            res = write_report_dir(checked, results, "fused",
                                   {"default": "fused", "detectors": {n: d.to_state() for n, d in dets.items()}},
                                   out / "report")
            row["note"] += f"; {len(res.table):,} rows, every input id"
            assert len(res.table) == args.n
        print()
        print(f"{datetime.now(UTC):%Y-%m-%d} on {platform.node()} ({platform.machine()}, "
              f"{os.cpu_count()} cores), torch threads {args.threads}")
        print(st.table())
        print(json.dumps({"n": args.n, "unique_images": unique, "threads": args.threads, "stages": st.rows}),
              flush=True)
    finally:
        if args.out is None:
            print(f"removing {out} ...", flush=True)
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
