"""The extraction fan-out: a Dask LocalCluster of 2 worker processes runs one Prefect task per shard."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from poisonguard.runtime import CPU_KERNEL_PINS, _has_avx2
from tests.pipeline.reports import make_dataset


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The tiny world model, saved like a fine-tuned model folder (safetensors + processor)."""
    from tests.fixtures.families import build_tiny

    folder = tmp_path_factory.mktemp("tiny_model")
    model, processor = build_tiny("world")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_dask_fan_out_matches_in_process_extraction(prefect_server, tiny_model_dir: Path, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter

    from flows.extract import extract_features, lazy_examples
    from poisonguard.extract import extract
    from poisonguard.extract.storage import shard_path
    from poisonguard.train.finetune import load_model

    data, ids = make_dataset(tmp_path / "data")
    out = tmp_path / "extraction"
    state = extract_features(str(data), str(tiny_model_dir), str(out), shard_size=5, batch_size=4, n_workers=2,
                             return_state=True)
    assert state.is_completed(), state.message
    ext = state.result()
    screened = [i for i in ids if i != "s05"]  # s05's image is missing: validation keeps it from the model
    assert ext.ids == screened and ext.alloc.shape[:1] == (9,)
    assert shard_path(out, 0).is_file() and shard_path(out, 1).is_file() and not shard_path(out, 2).exists()

    model, processor = load_model(tiny_model_dir)
    direct = extract(model, processor, lazy_examples(str(data), None, screened)[:], batch_size=4,
                     show_progress=False)
    np.testing.assert_allclose(ext.alloc, direct.alloc, atol=1e-5)
    np.testing.assert_allclose(ext.hidden, direct.hidden, atol=1e-4)

    # Both shard tasks reported to this test's Prefect server, from the Dask worker processes.
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs()
        inner = next(r for r in runs if r.parameters.get("shards") == [0, 1])
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [inner.id]}))
    shard_runs = [t for t in tasks if t.name.startswith("extract_one_shard")]
    assert len(shard_runs) == 2 and all(t.state.is_completed() for t in shard_runs)

    # A rerun finds both shards done and only loads them.
    mtimes = [shard_path(out, k).stat().st_mtime_ns for k in range(2)]
    again = extract_features(str(data), str(tiny_model_dir), str(out), shard_size=5, n_workers=1)
    assert again.ids == screened
    assert [shard_path(out, k).stat().st_mtime_ns for k in range(2)] == mtimes

    # The screen's extraction (the pipeline's plan: same validation, content digests, model digest) reuses
    # the shards the flow made instead of extracting again.
    from poisonguard.extract.storage import extract_to_dir
    from poisonguard.pipeline.extraction import plan_extraction
    from poisonguard.pipeline.validate import validate_for_model
    from poisonguard.train.examples import LazyExamples

    checked = validate_for_model(data, tiny_model_dir, hold_back=False)
    plan = plan_extraction(checked, tiny_model_dir)
    logs: list[str] = []
    reused = extract_to_dir(model, processor, LazyExamples(checked.ok, checked.image_loader()), plan.ids, out,
                            shard_size=5, batch_size=4, tag=plan.tags["base"], inputs=plan.inputs,
                            show_progress=False, log=logs.append)
    assert "resuming; 2 of 2 shards already finished, skipped" in " ".join(logs), logs
    assert [shard_path(out, k).stat().st_mtime_ns for k in range(2)] == mtimes
    np.testing.assert_array_equal(reused.alloc, ext.alloc)


@pytest.mark.slow
def test_fan_out_on_an_existing_scheduler(prefect_server, tiny_model_dir: Path, tmp_path: Path,
                                          monkeypatch) -> None:
    """PG_DASK_ADDRESS sends the shards to a running scheduler instead of a LocalCluster of the run's own."""
    from distributed import LocalCluster

    from flows.extract import extract_features

    data, ids = make_dataset(tmp_path / "data")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        monkeypatch.setenv("PG_DASK_ADDRESS", cluster.scheduler_address)
        ext = extract_features(str(data), str(tiny_model_dir), str(tmp_path / "x"), shard_size=4)
        ran = {str(entry[0]) for entry in cluster.scheduler.transition_log}  # (key, start, finish, ...)
    assert ext.ids == [i for i in ids if i != "s05"]
    assert any("extract_one_shard" in key for key in ran), ran


@pytest.fixture(scope="module")
def tiny_finetuned_dir(tiny_model_dir: Path, tmp_path_factory) -> Path:
    """A 'fine-tuned' full folder: the tiny model with its projector and last LM layer moved."""
    import torch

    from poisonguard.train.finetune import load_model

    model, processor = load_model(tiny_model_dir)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "multi_modal_projector" in name or "layers.1." in name:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    folder = tmp_path_factory.mktemp("tiny_finetuned")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_screen_fan_out_both_passes_per_shard_and_drift_equal_one_process(
        prefect_server, tiny_model_dir: Path, tiny_finetuned_dir: Path, tmp_path: Path) -> None:
    """A real LocalCluster of 2 workers: one task per shard runs both passes; the drift pass fans out over the
    shards and merges; everything equals the single-process screen path, which then reuses the shards."""
    from flows.extract import screen_extraction
    from poisonguard.audit.activations import collect_drift, drift_scores, shared_direction
    from poisonguard.models import drift_pair
    from poisonguard.pipeline.config import ExtractConfig
    from poisonguard.pipeline.extraction import extract_models
    from poisonguard.pipeline.layout import Layout
    from poisonguard.pipeline.validate import validate_for_model

    data, _ = make_dataset(tmp_path / "data")
    layout = Layout.screen(tmp_path / "report")
    state = screen_extraction(str(data), str(tiny_model_dir), str(tiny_finetuned_dir), str(layout.extract),
                              shard_size=4, batch_size=3, n_workers=2, device="cpu", drift=True,
                              drift_batch_size=3, return_state=True)
    assert state.is_completed(), state.message
    res = state.result()

    checked = validate_for_model(data, tiny_model_dir, hold_back=False)
    # single process: the pipeline's own extraction (reusing every shard the flow wrote) ...
    logs: list[str] = []
    extract_models(checked, tiny_model_dir, tiny_finetuned_dir, layout, ExtractConfig(shard_size=4, batch_size=3),
                   show_progress=False, log=logs.append)
    assert sum("resuming; 3 of 3 shards already finished" in line for line in logs) == 2, logs
    # ... and a fresh extraction of its own into another folder
    fresh = Layout.screen(tmp_path / "fresh")
    extract_models(checked, tiny_model_dir, tiny_finetuned_dir, fresh, ExtractConfig(shard_size=4, batch_size=3),
                   show_progress=False, log=lambda *_: None)
    from poisonguard.extract import load_extraction

    for name in ("finetuned", "base"):
        one = load_extraction(fresh.extract / name)
        assert res[name].ids == one.ids == [s.id for s in checked.ok]
        np.testing.assert_allclose(res[name].alloc, one.alloc, atol=1e-5)
        np.testing.assert_allclose(res[name].hidden, one.hidden, atol=1e-4)
    assert not np.allclose(res["finetuned"].hidden, res["base"].hidden), "the two passes saw different models"

    with drift_pair(tiny_model_dir, tiny_finetuned_dir) as (m0, m1, processor):
        ref = collect_drift(m0, m1, processor, checked.ok, checked.image_loader(), batch_size=3,
                            show_progress=False)
    col = res["drift"]
    assert col.ids.tolist() == ref.ids.tolist()
    np.testing.assert_array_equal(col.n_tokens, ref.n_tokens)
    np.testing.assert_array_equal(col.fit_owner, ref.fit_owner)
    # float32 activations batched otherwise (shards of 4 against batches of 3) agree to float32 round-off, not
    # bit for bit: on some CPUs (an Intel host with its AVX2 MKL path) the sums of a batch depend on its size
    scale = np.abs(ref.gram).max()
    np.testing.assert_allclose(col.gram, ref.gram, rtol=1e-6, atol=1e-7 * scale)
    a, b = drift_scores(col, shared_direction(col)), drift_scores(ref, shared_direction(ref))
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-6, atol=1e-9, equal_nan=True, err_msg=name)
    from poisonguard.extract.features import load_drift_scores

    saved = load_drift_scores(layout.drift, [s.id for s in checked.ok])  # the screen's drift file
    assert saved and all(np.allclose(v, b[k], equal_nan=True) for k, v in saved.items())


def test_cluster_choice_follows_the_gpus_and_dask_cuda() -> None:
    from flows.extract import cluster_spec

    assert cluster_spec("tcp://10.0.0.1:8786", 2) == {"address": "tcp://10.0.0.1:8786"}
    gpu = cluster_spec(None, 2, n_gpus=4, has_dask_cuda=True)
    assert gpu["cluster_class"] == "dask_cuda.LocalCUDACluster" and "n_workers" not in gpu["cluster_kwargs"]
    cpu = cluster_spec(None, 2, n_gpus=0, has_dask_cuda=True)
    assert "cluster_class" not in cpu and cpu["cluster_kwargs"]["n_workers"] == 2
    with pytest.warns(UserWarning, match="dask-cuda is not installed"):
        assert "cluster_class" not in cluster_spec(None, 2, n_gpus=2, has_dask_cuda=False)


def _worker_kernels(pin: bool) -> str:
    """Run in a Dask worker: the CPU code torch runs there, after the shard tasks' pin if `pin`."""
    import torch

    from flows.extract import pin_worker_kernels

    if pin:
        pin_worker_kernels("cpu")
    return torch.backends.cpu.get_cpu_capability()


@pytest.mark.skipif(not _has_avx2(), reason="pins apply on x86-64 CPUs with AVX2 only")
def test_a_cpu_shard_pins_its_worker_even_when_the_cluster_was_started_unpinned(monkeypatch) -> None:
    """A worker of a cluster started without the pins (an external one, or a LocalCluster from a process that
    never set them) runs its host's own kernels until a shard task pins them, before its first model."""
    from distributed import Client, LocalCluster

    for name in (*CPU_KERNEL_PINS, "PG_CPU_KERNELS"):
        monkeypatch.delenv(name, raising=False)  # the spawned workers inherit this environment
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        plain, pinned = sorted(client.scheduler_info()["workers"])
        native = client.submit(_worker_kernels, False, workers=[plain], pure=False).result()
        after = client.submit(_worker_kernels, True, workers=[pinned], pure=False).result()
    own = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                         capture_output=True, text=True, check=True).stdout.strip()  # this host's own choice
    assert native == own and after == "AVX2", (native, own, after)


def test_worker_models_of_an_adapter_equal_the_screens_passes(tmp_path: Path) -> None:
    """In one worker an adapter is one model serving both passes (adapter on, then off) and both sides of the
    drift pass, with the same features as the screen's `model_passes` / `drift_pair`. In process: the
    cluster plumbing is the test above."""
    from flows.extract import _key, _worker_models, lazy_examples
    from poisonguard.audit.activations import collect_drift
    from poisonguard.data import read_dataset
    from poisonguard.data.loading import image_loader
    from poisonguard.extract import extract
    from poisonguard.models import drift_pair, model_passes
    from poisonguard.pipeline.extraction import model_tags
    from poisonguard.runtime import live_models
    from poisonguard.train.finetune import save_model
    from tests.fixtures.families import build_tiny, random_lora

    model, processor = build_tiny("llava", seed=0)
    model.save_pretrained(tmp_path / "base")
    processor.save_pretrained(tmp_path / "base")
    peft_model = random_lora(model, seed=5, scale=0.3)
    save_model(peft_model, processor, tmp_path / "adapter")
    del model, peft_model

    data, ids = make_dataset(tmp_path / "data", n=6)
    usable = [i for i in ids if i != "s05"]
    examples = lazy_examples(str(data), None, usable)[:]
    base, adapter = str(tmp_path / "base"), str(tmp_path / "adapter")
    _worker_models.cache_clear()
    worker = _worker_models(base, adapter, _key(model_tags(base, adapter)), device="cpu", dtype="float32")
    assert live_models() == 1, "an adapter: one model in the worker"
    got = {name: extract(m, p, examples, batch_size=3, show_progress=False) for name, m, p in worker.passes()}
    want = {name: extract(m, p, examples, batch_size=3, show_progress=False)
            for name, m, p in model_passes(base, adapter)}
    for name in ("finetuned", "base"):
        np.testing.assert_allclose(got[name].alloc, want[name].alloc, atol=1e-6)
        np.testing.assert_allclose(got[name].hidden, want[name].hidden, atol=1e-5)
    assert not np.allclose(got["finetuned"].hidden, got["base"].hidden), "the adapter was on, then off"

    ds = read_dataset(data)
    samples = [s for s in ds.samples if s.id in usable]
    m0, m1, proc = worker.drift_pair()
    mine = collect_drift(m0, m1, proc, samples, image_loader(ds.image_root), batch_size=3, show_progress=False)
    with drift_pair(base, adapter) as (r0, r1, rproc):
        ref = collect_drift(r0, r1, rproc, samples, image_loader(ds.image_root), batch_size=3,
                            show_progress=False)
    np.testing.assert_allclose(mine.per_token_mean, ref.per_token_mean, rtol=1e-6, equal_nan=True)
    assert np.nanmax(mine.per_token_mean) > 0, "the adapter moves the projector"
    _worker_models.cache_clear()
