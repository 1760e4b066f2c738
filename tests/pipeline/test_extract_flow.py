"""The extraction fan-out: a Dask LocalCluster of 2 worker processes runs one Prefect task per shard."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

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
