"""Every speed number the README quotes, measured in one run and summarised in one table at the end.

1. Extraction: decision-row capture vs plain SDPA vs eager `output_attentions` -- time ratio and peak memory --
   on the embedded world's LLaVA and on a larger random-weight LLaVA-shaped model (bench_extract.py).
2. Head profiling: the batched 1-D GMM (K = 1..5) on 100,000 samples × 1,024 heads, against an extrapolated
   per-head sklearn loop (bench_gmm.py; `--gmm-n` for a smaller quick run).
3. The end-to-end default pipeline: `--pipeline recorded` (default) reads the timings the stages record
   (work/timings/world.timings.json, work/timings/finetune.timings.json); `--pipeline run` times `dvc repro` from scratch, stage
   by stage, in a temporary clone of the committed HEAD (about 18 min on 2 cores; `--pipeline-params` merges
   a YAML of overrides into the clone's params.yaml, e.g. a tiny world for a smoke check).

    python benchmarks/bench_speed.py                     # the README's numbers (~3 min + GMM ~1 min, 2 cores)
    python benchmarks/bench_speed.py --quick             # small sizes everywhere: a smoke run in ~1 min
    python benchmarks/bench_speed.py --pipeline run      # + dvc repro from scratch, per stage
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

import bench_extract
import bench_gmm

QUICK = {"repeats": 2, "world_batch": 4, "batch": 1, "layers": 2, "hidden": 128, "heads": 4, "image_size": 112,
         "gmm_n": 5_000, "gmm_m": 32, "sk_heads": 2}
STAGE_LINE = "Running stage '"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_extract.add_arguments(p)
    p.add_argument("--gmm-n", type=int, default=100_000, help="samples for the GMM profiling")
    p.add_argument("--gmm-m", type=int, default=1024, help="heads for the GMM profiling")
    p.add_argument("--gmm-threads", type=int, default=2)
    p.add_argument("--sk-heads", type=int, default=8, help="heads fitted with sklearn (extrapolated)")
    p.add_argument("--skip-gmm", action="store_true")
    p.add_argument("--pipeline", choices=("recorded", "run", "skip"), default="recorded")
    p.add_argument("--pipeline-params", type=Path, default=None, help="YAML merged into the clone's params.yaml")
    p.add_argument("--work", type=Path, default=ROOT / "work", help="where `recorded` reads the stage timings")
    p.add_argument("--quick", action="store_true", help="small sizes everywhere (a smoke run, not the numbers)")
    if p.parse_known_args(argv)[0].quick:  # quick sizes become the defaults; explicit options still win
        p.set_defaults(**QUICK)
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------- pipeline
def recorded_pipeline(work: Path) -> dict:
    """Stage timings that `dvc repro` left behind (only the stages that record one)."""
    out: dict = {"source": "recorded", "stages": {}}
    world = work / "timings" / "world.timings.json"
    if world.exists():
        out["stages"]["world"] = float(json.loads(world.read_text())["total"])
    ft = work / "timings" / "finetune.timings.json"
    if ft.exists():
        out["stages"]["finetune (training only)"] = float(json.loads(ft.read_text())["seconds"])
    out["note"] = ("the other stages record no timing; `--pipeline run` times every stage" if out["stages"]
                   else f"nothing recorded under {work}; run `dvc repro` first or use `--pipeline run`")
    return out


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out.get(k) or {}, v) if isinstance(v, dict) and isinstance(out.get(k), dict | None) else v
    return out


def run_pipeline(params_override: Path | None, *, log=print) -> dict:
    """`dvc repro` from scratch in a temporary clone of HEAD (uncommitted changes are not in it); a stage's
    time runs from its 'Running stage' line to the next one or the end, so it includes DVC's hashing and
    caching of the stage's outputs."""
    import yaml

    tmp = Path(tempfile.mkdtemp(prefix="pg-speed-"))
    try:
        repo = tmp / "repo"
        subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(repo)], check=True)
        if params_override is not None:
            params = yaml.safe_load((repo / "params.yaml").read_text())
            params = _merge(params, yaml.safe_load(params_override.read_text()) or {})
            (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               "PG_GX_ROOT": str(repo / "gx"), "DVC_NO_ANALYTICS": "1"}
        env.pop("PYTHONPATH", None)
        starts: list[tuple[str, float]] = []
        tail: list[str] = []
        t0 = time.perf_counter()
        with subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=repo, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
            for line in proc.stdout or ():
                tail = (tail + [line.rstrip()])[-30:]
                if line.startswith(STAGE_LINE):
                    starts.append((line[len(STAGE_LINE):].split("'")[0], time.perf_counter() - t0))
                    log(f"  {starts[-1][1]:7.1f}s  stage {starts[-1][0]}")
        total = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError("dvc repro failed:\n" + "\n".join(tail))
        ends = [s for _, s in starts[1:]] + [total]
        return {"source": "dvc repro in a fresh clone of HEAD" + (f" with {params_override}" if params_override else ""),
                "stages": {name: end - start for (name, start), end in zip(starts, ends)}, "total": total}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------------------- summary
def summary_table(extraction: list[dict], gmm: dict | None, pipeline: dict | None) -> str:
    rows = []
    for r in extraction:
        shape = f"{r['name']} ({r['layers']} layers, {r['tokens']} tokens, batch {r['batch']})"
        m = r["modes"]
        rows.append((f"capture / SDPA time, {shape}", f"{m['capture']['time_x_sdpa']:.2f}"))
        rows.append((f"eager / SDPA time, {shape}", f"{m['eager']['time_x_sdpa']:.2f}"))
        rows.append((f"capture / SDPA peak memory, {shape}", f"{m['capture']['peak_x_sdpa']:.2f}"))
        rows.append((f"eager / SDPA peak memory, {shape}", f"{m['eager']['peak_x_sdpa']:.2f}"))
        rows.append((f"max abs(capture − eager) row, {shape}", f"{r['max_abs_diff']:.1e}"))
    if gmm is not None:
        rows.append((f"GMM profiling, {gmm['n']:,} samples × {gmm['m']:,} heads, {gmm['threads']} threads",
                     (f"{gmm['batched_s']:.1f} s (sklearn loop ≈ {gmm['sklearn_s_extrapolated']:.0f} s, "
                      f"extrapolated from {gmm['sklearn_heads']} heads)")))
    if pipeline is not None:
        rows.append(("pipeline timings from", pipeline["source"]))
        for stage, s in pipeline["stages"].items():
            rows.append((f"pipeline stage {stage}", f"{s:.0f} s"))
        if "total" in pipeline:
            rows.append(("pipeline end to end", f"{pipeline['total']:.0f} s"))
    return "| measurement | value |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows) + "\n"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    print(f"poisonguard bench_speed on {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
          + (" (quick: small sizes, not the README's numbers)" if args.quick else ""))
    print("\n### 1. extraction: capture vs SDPA vs eager")
    extraction = bench_extract.run(args)
    gmm = None
    if not args.skip_gmm:
        print("\n### 2. head profiling: batched GMM vs sklearn")
        gmm = bench_gmm.run(args.gmm_n, args.gmm_m, sk_heads=args.sk_heads, threads=args.gmm_threads)
    pipeline = None
    if args.pipeline != "skip":
        print(f"\n### 3. end-to-end default pipeline ({args.pipeline})")
        pipeline = recorded_pipeline(args.work) if args.pipeline == "recorded" else run_pipeline(args.pipeline_params)
        if pipeline.get("note"):
            print(pipeline["note"])
    print("\n### summary\n")
    table = summary_table(extraction, gmm, pipeline)
    print(table)
    return {"extraction": extraction, "gmm": gmm, "pipeline": pipeline, "table": table}


if __name__ == "__main__":
    main()
