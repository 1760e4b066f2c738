"""The speed scripts in benchmarks/: the GPU script skips cleanly without CUDA and its FLOP count is exact;
bench_speed.py runs every part at small sizes and prints one summary table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_drift
import bench_gmm
import bench_speed
import gpu_llava7b


def test_gpu_script_skips_cleanly_without_cuda():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_llava7b.py")], check=False, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith("no GPU: skipped")


def test_flop_count_matches_torch_flop_counter():
    """Eager attention makes every matmul visible to FlopCounterMode: it then counts the linear layers, the
    vision attention and the *full* causal square, i.e. twice our causal-half LM attention term."""
    from torch.utils.flop_counter import FlopCounterMode

    s = gpu_llava7b.TINY
    model = gpu_llava7b.build_model(s, "cpu", torch.float32, attn="eager")
    inputs, _ = gpu_llava7b.prompts(s, 2, 10, "cpu", torch.float32)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(**inputs, use_cache=False, logits_to_keep=1)
    f = gpu_llava7b.model_flops(s, inputs["input_ids"].shape[1])
    assert counter.get_total_flops() == 2 * (sum(f.values()) + f["lm_attention_causal"])


def test_llava7b_shapes_and_peaks():
    s = gpu_llava7b.Shapes()
    assert s.image_tokens == 576
    per_sample = sum(gpu_llava7b.model_flops(s, 576 + 64).values())
    assert 8e12 < per_sample < 1e13  # ≈ 2 × 7 B params × 640 tokens, plus the ViT-L tower
    assert gpu_llava7b.peak_for("NVIDIA H100 80GB HBM3") == 989.4
    assert gpu_llava7b.peak_for("NVIDIA H100 PCIe") == 756.0
    assert gpu_llava7b.peak_for("NVIDIA H200") == 989.4
    assert gpu_llava7b.peak_for("NVIDIA A100-SXM4-80GB") is None


def test_gpu_script_runs_tiny_shapes_through_the_capture_path(tmp_path):
    out = tmp_path / "r.json"
    assert gpu_llava7b.main(["--allow-cpu", "--tiny", "--batch", "2", "--repeats", "1", "--warmup", "0",
                             "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["batch"] == 2 and r["tokens"] == 16 + 64
    assert r["capture_samples_per_s"] > 0 and r["sdpa_samples_per_s"] > 0


def test_bench_speed_quick_prints_one_summary(tmp_path, capsys):
    work = tmp_path / "work"
    (work / "timings").mkdir(parents=True)
    # the timing files `dvc repro` leaves behind (never DVC outputs: they change from run to run)
    (work / "timings" / "world.timings.json").write_text(json.dumps({"total": 820.4}))
    (work / "timings" / "finetune.timings.json").write_text(json.dumps({"seconds": 128.0}))
    res = bench_speed.main(["--quick", "--skip-large", "--gmm-n", "2000", "--gmm-m", "8", "--gmm-threads", "1",
                            "--work", str(work)])
    printed = capsys.readouterr().out
    assert res["table"] in printed
    assert "| capture / SDPA time, embedded world LLaVA" in res["table"]
    assert "| GMM profiling, 2,000 samples × 8 heads, 1 threads |" in res["table"]
    assert "| pipeline stage world | 820 s |" in res["table"]
    assert "| pipeline stage finetune (training only) | 128 s |" in res["table"]
    assert res["extraction"][0]["max_abs_diff"] < 1e-5  # capture equals eager


@pytest.mark.slow
def test_bench_speed_times_dvc_repro_per_stage_on_a_tiny_world(tmp_path):
    """`--pipeline run` on a tiny world: every stage of the default pipeline timed (about 2 minutes)."""
    override = tmp_path / "tiny.yaml"
    override.write_text(json.dumps({
        "world": {"seed": 1, "n_train": 40, "n_test": 12,
                  "model": {"vision_hidden": 32, "vision_layers": 1, "vision_heads": 2, "vision_mlp": 64,
                            "lm_hidden": 32, "lm_layers": 2, "lm_heads": 2, "lm_mlp": 64, "max_positions": 128},
                  "pretrain": {"n_scenes": 64, "vision_steps": 3, "vision_batch": 16, "lm_steps": 4,
                               "lm_batch": 8, "eval_every": 0}},
        "poison": {"rate": 0.2}, "finetune": {"epochs": 1.0, "batch_size": 16},
        "extract_attention": {"batch_size": 16, "shard_size": 16}, "audit_projector": {"batch_size": 16, "ks": [1, 2]},
        "profile_heads": {"strata_k": 2},
        "fit_gmm": {"detectors": {"tcap_plus": {}, "tcap": {"l_sens": 1, "h_sens": 2}, "bye": {}}},
        "em_vote": {"decide": "tcap_plus", "annotators": ["tcap_plus"]}, "gate": {"max_flag_rate": 0.5}}))
    res = bench_speed.run_pipeline(override, log=lambda m: None)
    assert list(res["stages"]) == ["world", "poison", "finetune", "extract_attention", "audit_projector",
                                   "profile_heads", "fit_gmm", "em_vote", "gate", "release"]
    assert 0 <= res["total"] - sum(res["stages"].values()) < 60  # only DVC's start-up precedes the first stage


def test_bench_drift_times_both_formulations_in_one_run(capsys):
    res = bench_drift.run(6, 10, 16, threads=1)
    assert "old/new time ratio" in capsys.readouterr().out
    assert res["reference_s"] > 0 and res["batched_s"] > 0
    assert res["min_abs_cos"] > 1 - 1e-5 and res["max_abs_denergy"] < 1e-5


def test_bench_gmm_device_cpu_without_sklearn(capsys):
    res = bench_gmm.run(3000, 4, sk_heads=0, threads=1, device="cpu")
    assert "on cpu" in capsys.readouterr().out
    assert res["device"] == "cpu" and res["batched_s"] > 0 and "sklearn_s_extrapolated" not in res
