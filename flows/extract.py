"""
# Extraction fan-out

Attention extraction is the long step of a screening: one forward pass per sample through the fine-tuned
model. The samples are cut into shards (`poisonguard.extract.storage`), and one Prefect task per shard runs
on a Dask cluster:

- by default a `LocalCluster` started for the run (`n_workers` processes, one thread each, no dashboard);
- or an existing scheduler (`address`, or `$PG_DASK_ADDRESS`): at scale, one worker per GPU, each started
  with its own `CUDA_VISIBLE_DEVICES` (infra/dask-cluster.sh).

Each worker loads the model once and keeps it for its later shards. Shards are written atomically and a
finished shard is skipped, so a killed run resumes where it stopped; the flow ends by loading and checking the
whole extraction. Process-based runners need a real Prefect API (`PREFECT_API_URL`), see infra/README.md.

```
python flows/extract.py --data work/poisoned/train.json --model-dir work/finetuned --out-dir work/extract
```
"""

from __future__ import annotations

import argparse
import functools
import os
from collections.abc import Sequence

from prefect import flow, get_run_logger, task, unmapped
from prefect_dask import DaskTaskRunner

DASK_ADDRESS_ENV = "PG_DASK_ADDRESS"


# --- tasks --------------------------------------------------------------------------------------------------


@task(retries=0)
def plan_extraction(data: str, image_root: str | None, model_dir: str, ids: list[str] | None) -> dict:
    """The same plan as `poisonguard screen` and the DVC stage make (`pipeline.extraction.plan_extraction`):
    the usable samples after validation against the model (or `ids`, a subset of them), their content
    digests and the model's digest -- so shards made here are reused by a screen, and the other way round.
    Deterministic, so no retries."""
    from poisonguard.pipeline.extraction import plan_extraction as plan
    from poisonguard.pipeline.validate import validate_for_model

    checked = validate_for_model(data, model_dir, image_root, hold_back=False)  # extraction only: no minimum
    p = plan(checked, model_dir)
    digests = dict(zip(p.ids, p.inputs))
    wanted = p.ids if ids is None else list(ids)
    missing = [i for i in wanted if i not in digests]
    if missing:
        raise ValueError(f"{len(missing)} id(s) to extract are not usable samples of {data}: {missing[:5]}")
    return {"ids": wanted, "inputs": [digests[i] for i in wanted], "tag": p.tags["base"]}


@task(retries=1, retry_delay_seconds=30)
def extract_one_shard(shard: int, data: str, image_root: str | None, model_dir: str, out_dir: str,
                      ids: list[str], inputs: list[str], shard_size: int, batch_size: int, backend: str, tag: str,
                      device: str, torch_threads: int) -> str:
    """Extract one shard (skipped when already on disk). One retry: a worker lost mid-shard (preemption,
    OOM kill) leaves no partial file, so the retry starts the shard cleanly."""
    import torch

    from poisonguard.extract import extract_shard

    before = torch.get_num_threads()
    torch.set_num_threads(torch_threads)
    try:  # a thread-pool runner shares the process: give the caller its thread count back
        model, processor = _cached_model(model_dir, tag, device)
        examples = lazy_examples(data, image_root, ids)
        path = extract_shard(model, processor, examples, ids, out_dir, shard, shard_size=shard_size,
                             batch_size=batch_size, backend=backend, tag=tag, inputs=inputs)
    finally:
        torch.set_num_threads(before)
    return str(path)


# --- flows --------------------------------------------------------------------------------------------------


@flow(name="extract-shards")
def extract_shards(data: str, image_root: str | None, model_dir: str, out_dir: str, ids: list[str],
                   inputs: list[str], shards: list[int], shard_size: int, batch_size: int, backend: str, tag: str,
                   device: str, torch_threads: int) -> list[str]:
    """One task per shard on whatever task runner the caller set (see `extract_features`)."""
    futures = extract_one_shard.map(
        shards, unmapped(data), unmapped(image_root), unmapped(model_dir), unmapped(out_dir),
        unmapped(ids), unmapped(inputs), unmapped(shard_size), unmapped(batch_size), unmapped(backend), unmapped(tag),
        unmapped(device), unmapped(torch_threads))
    return [f.result() for f in futures]


@flow(name="extract")
def extract_features(data: str, model_dir: str, out_dir: str, shard_size: int = 256, batch_size: int = 16,
                     backend: str = "capture", image_root: str | None = None, ids: list[str] | None = None,
                     n_workers: int = 1, address: str | None = None, tag: str | None = None,
                     device: str = "auto", torch_threads: int = 1):
    """Extract `data` with the model in `model_dir` into `out_dir`, one Dask task per shard; returns the
    loaded `Extraction` (ids in input order). `address` (or $PG_DASK_ADDRESS) selects an existing Dask
    scheduler instead of a LocalCluster of `n_workers` processes."""
    from poisonguard.extract import ensure_manifest, load_extraction
    from poisonguard.extract.storage import shard_path

    planned = plan_extraction(data, image_root, model_dir, ids)
    wanted, inputs, tag = planned["ids"], planned["inputs"], tag or planned["tag"]
    # Written once here, before the workers start: they only check it, never race to create it.
    plan = ensure_manifest(out_dir, wanted, shard_size=shard_size, backend=backend, tag=tag, inputs=inputs)
    todo = [k for k in range(plan["n_shards"]) if not shard_path(out_dir, k).exists()]
    if todo:  # a finished extraction starts no cluster; load_extraction still checks every shard's ids
        runner = dask_runner(address or os.environ.get(DASK_ADDRESS_ENV), n_workers)
        extract_shards.with_options(task_runner=runner)(
            data, image_root, model_dir, out_dir, wanted, inputs, todo, shard_size, batch_size, backend, tag, device,
            torch_threads)
    else:
        get_run_logger().info("all %d shards of %s are done; loading them", plan["n_shards"], out_dir)
    return load_extraction(out_dir, ids=wanted)


# --- helpers ------------------------------------------------------------------------------------------------


def dask_runner(address: str | None, n_workers: int) -> DaskTaskRunner:
    """A runner on the scheduler at `address`, else on a fresh LocalCluster (processes, 1 thread each)."""
    if address:
        return DaskTaskRunner(address=address)
    # Bound to localhost on free ports: with `dashboard_address=None` the scheduler still serves HTTP on
    # 0.0.0.0:8787, which exposes it and collides between two concurrent runs.
    return DaskTaskRunner(cluster_kwargs={"n_workers": n_workers, "threads_per_worker": 1, "processes": True,
                                          "host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"})


@functools.lru_cache(maxsize=1)
def _cached_model(model_dir: str, tag: str, device: str):
    """Load once per worker process; `tag` in the key so a changed model is reloaded."""
    import torch

    from poisonguard.train.finetune import load_model

    model, processor = load_model(model_dir)
    target = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    return model.to(target), processor


def lazy_examples(data: str, image_root: str | None, ids: Sequence[str]):
    """The examples of `ids`, built only for the slice a shard asks for (`LazyExamples`): a worker decodes its
    shard's images, not the whole dataset's."""
    from poisonguard.data import read_dataset
    from poisonguard.data.loading import image_loader
    from poisonguard.train.examples import LazyExamples

    dataset = read_dataset(data, image_root=image_root)
    by_id = {s.id: s for s in dataset.samples}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise ValueError(f"{len(missing)} id(s) to extract are not in {data}: {missing[:5]}")
    return LazyExamples([by_id[i] for i in ids], image_loader(dataset.image_root))


def main() -> None:
    parser = argparse.ArgumentParser(description="Extract attention features with a Dask fan-out.")
    parser.add_argument("--data", required=True)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--image-root")
    parser.add_argument("--shard-size", type=int, default=256)
    parser.add_argument("--n-workers", type=int, default=1)
    parser.add_argument("--address", help=f"existing Dask scheduler (default ${DASK_ADDRESS_ENV})")
    args = parser.parse_args()
    ext = extract_features(args.data, args.model_dir, args.out_dir, shard_size=args.shard_size,
                           image_root=args.image_root, n_workers=args.n_workers, address=args.address)
    print(f"extracted {len(ext)} samples into {args.out_dir}")


if __name__ == "__main__":
    main()
