"""benchmarks/gpu_screen.py: skips cleanly without CUDA, builds 7B shapes, and runs its whole code path on
tiny shapes on the CPU (one model resident, every stage timed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import gpu_screen


def test_skips_cleanly_without_cuda():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_screen.py")], check=False, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith("no GPU: skipped")


def test_llava7b_shapes_on_the_meta_device():
    s = gpu_screen.Shapes()
    processor = gpu_screen.build_processor(s)
    model = gpu_screen.build_model(s, processor.tokenizer, torch.device("meta"), torch.bfloat16)
    assert s.image_tokens == 576
    assert 7.0e9 < sum(p.numel() for p in model.parameters()) < 7.1e9  # LLaVA-1.5-7B: 7.06 B
    assert processor.image_processor.crop_size == {"height": 336, "width": 336}


def test_tiny_run_on_the_cpu(tmp_path):
    out = tmp_path / "r.json"
    assert gpu_screen.main(["--allow-cpu", "--tiny", "--samples", "16", "--skip-cli", "--work",
                            str(tmp_path / "w"), "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert [s["name"] for s in r["stages"]] == ["validate", "extract (fine-tuned + base passes)",
                                                "projector drift", "profile + detectors (shift, projector)"]
    assert all(s["samples"] == 16 and s["samples_per_s"] > 0 for s in r["stages"])
    assert r["counts"]["live_models_peak"] == 1 and r["built"]["shards"] > 1
    assert (tmp_path / "w" / "adapter" / "adapter_config.json").is_file()
    cmds = gpu_screen.cli_commands(tmp_path / "w" / "base", tmp_path / "w" / "adapter", tmp_path / "d.json",
                                   tmp_path, "cuda", "bfloat16", 16)
    assert cmds["cli screen"][-4:] == ["--device", "cuda", "--dtype", "bfloat16"]
    assert "--finetuned" in cmds["cli audit"] and (tmp_path / "params.yaml").is_file()
    compiled = gpu_screen.cli_commands(tmp_path / "w" / "base", tmp_path / "w" / "adapter", tmp_path / "d.json",
                                       tmp_path, "cuda", "bfloat16", 16, compile=True)
    assert compiled["cli screen"][-1] == "--compile" and compiled["cli audit"][-1] == "--compile"
