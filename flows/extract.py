"""
# Extraction fan-out

Attention extraction is the long step of a screening: one forward pass per sample through the fine-tuned
model. The samples are cut into shards (`poisonguard.extract.storage`), and one Prefect task per shard runs
on a Dask cluster:

- with CUDA GPUs and `dask-cuda` installed (`pip install -e ".[gpu]"`), a `dask_cuda.LocalCUDACluster`:
  one worker process per visible GPU, each seeing only its own GPU as `cuda`;
- otherwise a `LocalCluster` started for the run (`n_workers` processes, one thread each, no dashboard);
- or an existing scheduler (`address`, or `$PG_DASK_ADDRESS`): at scale, one worker per GPU, each started
  with its own `CUDA_VISIBLE_DEVICES` (infra/dask-cluster.sh, or `dask cuda worker`).

Each worker loads its models once and keeps them for its later shards. Shards are written atomically and a
finished shard is skipped, so a killed run resumes where it stopped; the flow ends by loading and checking the
whole extraction. Process-based runners need a real Prefect API (`PREFECT_API_URL`), see infra/README.md.

Two flows:
- `extract_features`: one model's features into one folder;
- `screen_extraction`: what a screen extracts, fanned out: one task per shard runs *both* passes of that
  shard (fine-tuned, then base) in the same worker, into `OUT/finetuned` and `OUT/base` with the screen's
  plan, so `poisonguard screen` reuses them when OUT is its report folder's extraction folder; with `drift`,
  the projector-drift pass fans out over the same shards and its pieces are merged in order.

```
python flows/extract.py --data work/poisoned/train.json --model-dir work/finetuned --out-dir work/extract
python flows/extract.py --data train.json --base BASE_DIR --finetuned ADAPTER_DIR --out-dir REPORT/extract \
    --device cuda --dtype bfloat16 --drift
```
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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

    pin_worker_kernels(device)
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


@task(retries=0)
def plan_screen(data: str, image_root: str | None, base: str, finetuned: str) -> dict:
    """The screen's plan (`pipeline.extraction.plan_extraction` on the samples valid for the base model):
    ids, content digests, both models' tags; plus, for the drift pass, which of them have images."""
    from poisonguard.pipeline.extraction import plan_extraction as plan
    from poisonguard.pipeline.validate import validate_for_model

    checked = validate_for_model(data, base, image_root, hold_back=False)
    p = plan(checked, base, finetuned)
    return {"ids": p.ids, "inputs": p.inputs, "tags": p.tags,
            "has_image": [bool(s.images) for s in checked.ok]}


@task(retries=1, retry_delay_seconds=30)
def extract_pair_shard(shard: int, data: str, image_root: str | None, base: str, finetuned: str, out_dir: str,
                       ids: list[str], inputs: list[str], tags: dict[str, str], shard_size: int, batch_size: int,
                       backend: str, runtime: dict, torch_threads: int) -> list[str]:
    """Both passes of one shard in this worker: the fine-tuned model's, then the base's (each skipped when on
    disk). The worker keeps its models between shards (`_worker_models`)."""
    import torch

    from poisonguard.extract import extract_shard

    pin_worker_kernels(runtime.get("device", "auto"))
    before = torch.get_num_threads()
    torch.set_num_threads(torch_threads)
    try:
        examples = lazy_examples(data, image_root, ids)
        return [str(extract_shard(model, processor, examples, ids, Path(out_dir) / name, shard,
                                  shard_size=shard_size, batch_size=batch_size, backend=backend, tag=tags[name],
                                  inputs=inputs))
                for name, model, processor in _worker_models(base, finetuned, _key(tags), **runtime).passes()]
    finally:
        torch.set_num_threads(before)


@task(retries=1, retry_delay_seconds=30)
def drift_one_shard(shard: int, data: str, image_root: str | None, base: str, finetuned: str, ids: list[str],
                    tags: dict[str, str], shard_size: int, batch_size: int, fit_every: int, position: int,
                    runtime: dict, torch_threads: int):
    """The projector-drift pass (`audit.activations.collect_drift`) on one shard's samples, with the whole
    drop's norm-law sampling (`fit_every`, `position`), so `merge_drift` of the shards equals one pass."""
    import torch

    from poisonguard.audit.activations import collect_drift
    from poisonguard.data import read_dataset
    from poisonguard.data.loading import image_loader

    pin_worker_kernels(runtime.get("device", "auto"))
    before = torch.get_num_threads()
    torch.set_num_threads(torch_threads)
    try:
        dataset = read_dataset(data, image_root=image_root)
        by_id = {s.id: s for s in dataset.samples}
        samples = [by_id[i] for i in ids[shard * shard_size:(shard + 1) * shard_size]]
        m0, m1, processor = _worker_models(base, finetuned, _key(tags), **runtime).drift_pair()
        return collect_drift(m0, m1, processor, samples, image_loader(dataset.image_root), batch_size=batch_size,
                             fit_every=fit_every, position=position, show_progress=False)
    finally:
        torch.set_num_threads(before)


@flow(name="screen-extraction")
def screen_extraction(data: str, base: str, finetuned: str, out_dir: str, shard_size: int | None = None,
                      batch_size: int | None = None, backend: str = "capture", image_root: str | None = None,
                      n_workers: int = 1, address: str | None = None, device: str = "auto", dtype: str = "auto",
                      compile: bool = False, torch_threads: int = 1, drift: bool = False,
                      drift_batch_size: int = 64) -> dict[str, Any]:
    """Both models' features of a screen, one Dask task per shard doing both passes; with `drift`, the
    projector-drift collection too (one task per shard, merged in order). Returns {"finetuned": Extraction,
    "base": Extraction, "drift": DriftCollection | None}. `out_dir` holds `finetuned/` and `base/`: a
    screen's `REPORT/extract` folder, reused by `poisonguard screen` as its own; the drift scores (params.yaml
    `audit_projector.scores`) go to `out_dir/drift_scores.npz`, the file a screen writes there (a screen
    still runs its own drift pass: it does not read them back). `shard_size` and
    `batch_size` default to params.yaml's `extract_attention` section, as a screen's: a screen reuses only
    shards of its own plan, and the shard size is part of the plan."""
    from poisonguard.audit.activations import merge_drift
    from poisonguard.extract import ensure_manifest, load_extraction
    from poisonguard.extract.features import DRIFT_FILE, save_drift_scores
    from poisonguard.extract.storage import shard_path
    from poisonguard.pipeline.config import section_config

    screen_cfg = section_config("extract_attention")
    shard_size = shard_size or screen_cfg.shard_size
    batch_size = batch_size or screen_cfg.batch_size

    planned = plan_screen(data, image_root, base, finetuned)
    ids, inputs, tags = planned["ids"], planned["inputs"], planned["tags"]
    plans = {name: ensure_manifest(Path(out_dir) / name, ids, shard_size=shard_size, backend=backend,
                                   tag=tags[name], inputs=inputs)
             for name in ("finetuned", "base")}
    n_shards = plans["finetuned"]["n_shards"]
    todo = [k for k in range(n_shards) if not all(shard_path(Path(out_dir) / name, k).exists() for name in plans)]
    rt = {"device": device, "dtype": dtype, "compile": compile}
    if todo or drift:
        runner = dask_runner(address or os.environ.get(DASK_ADDRESS_ENV), n_workers)
        inner = _screen_shards.with_options(task_runner=runner)
        pieces = inner(data, image_root, base, finetuned, out_dir, ids, inputs, tags, todo, shard_size, batch_size,
                       backend, rt, torch_threads, drift, drift_batch_size, planned["has_image"])
    else:
        get_run_logger().info("all %d shards of both models in %s are done; loading them", n_shards, out_dir)
        pieces = []
    col = merge_drift(pieces) if drift else None
    if col is not None:  # where a screen with this folder as its extraction folder keeps them
        save_drift_scores(ids, _screen_drift_scores(col), Path(out_dir) / DRIFT_FILE)
    return {name: load_extraction(Path(out_dir) / name, ids=ids) for name in plans} | {"drift": col}


@flow(name="screen-shards")
def _screen_shards(data: str, image_root: str | None, base: str, finetuned: str, out_dir: str, ids: list[str],
                   inputs: list[str], tags: dict[str, str], todo: list[int], shard_size: int, batch_size: int,
                   backend: str, runtime: dict, torch_threads: int, drift: bool, drift_batch_size: int,
                   has_image: list[bool]) -> list:
    """The shard tasks on the caller's task runner: extraction of the shards in `todo`, then (with `drift`)
    the drift pass of every shard; returns the drift pieces in shard order."""
    from poisonguard.audit.activations import fit_stride

    extracted = extract_pair_shard.map(
        todo, unmapped(data), unmapped(image_root), unmapped(base), unmapped(finetuned), unmapped(out_dir),
        unmapped(ids), unmapped(inputs), unmapped(tags), unmapped(shard_size), unmapped(batch_size),
        unmapped(backend), unmapped(runtime), unmapped(torch_threads))
    if not drift:
        [f.result() for f in extracted]
        return []
    shards = list(range(-(-len(ids) // shard_size)))
    images_before = [sum(has_image[:k * shard_size]) for k in shards]  # image samples before each shard
    pieces = drift_one_shard.map(
        shards, unmapped(data), unmapped(image_root), unmapped(base), unmapped(finetuned), unmapped(ids),
        unmapped(tags), unmapped(shard_size), unmapped(drift_batch_size),
        unmapped(fit_stride(sum(has_image))), images_before, unmapped(runtime), unmapped(torch_threads))
    [f.result() for f in extracted]
    return [f.result() for f in pieces]


# --- helpers ------------------------------------------------------------------------------------------------


def _screen_drift_scores(col) -> dict:
    """The drift scores a screen keeps (`pipeline.audit.audit_projector`), float64, from a merged collection."""
    import numpy as np

    from poisonguard.audit.activations import drift_scores, shared_direction
    from poisonguard.pipeline.config import section_config

    every = drift_scores(col, shared_direction(col))
    return {name: np.asarray(every[name], dtype=np.float64) for name in section_config("audit_projector").scores}


def cluster_spec(address: str | None, n_workers: int, *, n_gpus: int | None = None,
                 has_dask_cuda: bool | None = None) -> dict[str, Any]:
    """The `DaskTaskRunner` arguments: the scheduler at `address`; else, with CUDA GPUs and dask-cuda, a
    `LocalCUDACluster` (one worker per visible GPU: `n_workers` does not apply); else a LocalCluster of
    `n_workers` processes. Every worker has one thread (a shard is one model's forward loop)."""
    if address:
        return {"address": address}
    n_gpus = _cuda_count() if n_gpus is None else n_gpus
    has_dask_cuda = importlib.util.find_spec("dask_cuda") is not None if has_dask_cuda is None else has_dask_cuda
    # Bound to localhost on free ports: with `dashboard_address=None` the scheduler still serves HTTP on
    # 0.0.0.0:8787, which exposes it and collides between two concurrent runs.
    local = {"threads_per_worker": 1, "host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}
    if n_gpus > 0 and has_dask_cuda:
        return {"cluster_class": "dask_cuda.LocalCUDACluster", "cluster_kwargs": local}
    if n_gpus > 1:
        import warnings

        warnings.warn(f"{n_gpus} GPUs but dask-cuda is not installed (pip install -e '.[gpu]'): every worker "
                      "of the LocalCluster would use the first GPU; pass an existing scheduler with one worker "
                      "per GPU (infra/dask-cluster.sh) or install dask-cuda", stacklevel=2)
    return {"cluster_kwargs": {"n_workers": n_workers, "processes": True, **local}}


def dask_runner(address: str | None, n_workers: int) -> DaskTaskRunner:
    """A runner on the scheduler at `address`, else on a fresh local cluster (`cluster_spec`)."""
    return DaskTaskRunner(**cluster_spec(address, n_workers))


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


class _WorkerModels:
    """A worker's models for the screen flow: one peft model serving both sides for an adapter, else the two
    full models. Kept between shards, so a worker holds two full models (never three) where a screen in one
    process holds one at a time and reloads; with an adapter it holds one."""

    def __init__(self, base: str, finetuned: str, runtime):
        from poisonguard.models import has_processor, is_adapter_dir, load_full, load_model, load_processor

        self.compile = runtime.compile
        self.adapter = is_adapter_dir(finetuned)
        if self.adapter:
            self.peft, self.processor = load_model(finetuned, runtime, base=base)
            self.base_processor = self.processor if not has_processor(finetuned) else load_processor(base)
        else:
            self.finetuned, self.processor = load_full(finetuned, runtime, processor_from=base)
            self.base, self.base_processor = load_full(base, runtime)

    def passes(self):
        """("finetuned", model, processor), then ("base", ...), as `models.model_passes` yields them; under
        torch.compile with the runtime's `compile`."""
        from poisonguard.extract.compiled import compiled_language_model
        from poisonguard.models import adapter_state

        if self.adapter:
            with adapter_state(self.peft, True) as model, compiled_language_model(model, self.compile):
                yield "finetuned", model, self.processor
            with adapter_state(self.peft, False) as model, compiled_language_model(model, self.compile):
                yield "base", model, self.base_processor
        else:
            with compiled_language_model(self.finetuned, self.compile):
                yield "finetuned", self.finetuned, self.processor
            with compiled_language_model(self.base, self.compile):
                yield "base", self.base, self.base_processor

    def drift_pair(self):
        """(base, fine-tuned, processor) for `collect_drift`; the processor is the base's (same pixels)."""
        from poisonguard.models import AdapterView

        if self.adapter:
            return AdapterView(self.peft, False), AdapterView(self.peft, True), self.base_processor
        return self.base, self.finetuned, self.base_processor


def _key(tags: dict[str, str]) -> tuple:
    return tuple(sorted(tags.items()))


@functools.lru_cache(maxsize=1)
def _worker_models(base: str, finetuned: str, tags: tuple = (), *, device: str = "auto", dtype: str = "auto",
                   compile: bool = False) -> _WorkerModels:
    """Loaded once per worker process; the models' tags in the key, so changed weights are reloaded."""
    from poisonguard.runtime import resolve_runtime

    return _WorkerModels(base, finetuned, resolve_runtime(device, dtype, compile=compile))


def pin_worker_kernels(device: str) -> None:
    """Pin the CPU kernels in the worker that runs a shard on the CPU (`runtime.pin_cpu_kernels`), before it
    loads a model: a worker of an existing cluster never inherits the pins of the process that submitted the
    run, and a LocalCluster's only while that process set them, so without this the same shard could give other
    bits on another host than in `poisonguard screen`. Once per process in effect (later calls find the pins
    set); a GPU run's workers are left alone, as the CLI leaves a GPU run's process."""
    from poisonguard.runtime import pin_cpu_kernels, resolve_runtime

    if resolve_runtime(device).device.type == "cpu":
        pin_cpu_kernels()


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
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--image-root")
    parser.add_argument("--shard-size", type=int, default=None,
                        help="samples per shard (default 256; with --base/--finetuned params.yaml's, as a screen)")
    parser.add_argument("--n-workers", type=int, default=1)
    parser.add_argument("--address", help=f"existing Dask scheduler (default ${DASK_ADDRESS_ENV})")
    parser.add_argument("--model-dir", dest="model_dir", help="one model's extraction (extract_features)")
    parser.add_argument("--base", help="with --finetuned: a screen's two passes per shard (screen_extraction)")
    parser.add_argument("--finetuned", help="fine-tuned model folder or LoRA adapter folder (with --base)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (each worker's own GPU)")
    parser.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16")
    parser.add_argument("--compile", action="store_true", help="torch.compile the language model")
    parser.add_argument("--drift", action="store_true", help="also the projector-drift pass, per shard")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="samples per forward (default 16; with --base/--finetuned params.yaml's)")
    args = parser.parse_args()
    if args.base and args.finetuned:
        res = screen_extraction(args.data, args.base, args.finetuned, args.out_dir, shard_size=args.shard_size,
                                batch_size=args.batch_size, image_root=args.image_root, n_workers=args.n_workers,
                                address=args.address, device=args.device, dtype=args.dtype, compile=args.compile,
                                drift=args.drift)
        print(f"extracted {len(res['finetuned'])} samples with both models into {args.out_dir}")
        return
    if not args.model_dir:
        parser.error("give --model-dir, or --base and --finetuned")
    ext = extract_features(args.data, args.model_dir, args.out_dir, shard_size=args.shard_size or 256,
                           batch_size=args.batch_size or 16, image_root=args.image_root, n_workers=args.n_workers,
                           address=args.address, device=args.device)
    print(f"extracted {len(ext)} samples into {args.out_dir}")


if __name__ == "__main__":
    main()
