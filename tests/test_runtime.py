"""Runtime settings: parsing `--device` / `--dtype`, moving batches to a model, NumPy reads, thread caps, and
the CPU kernels pinned for host-independent bytes."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from poisonguard.runtime import (
    CPU_FP32,
    CPU_KERNEL_PINS,
    Runtime,
    _has_avx2,
    cpu_kernels,
    resolve_runtime,
    set_threads,
    to_device,
    to_numpy,
)


def test_auto_is_cpu_fp32_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: auto means CUDA there")
    assert resolve_runtime() == CPU_FP32
    assert resolve_runtime("cpu", "bf16") == Runtime(torch.device("cpu"), torch.bfloat16)
    assert resolve_runtime("CPU", "torch.float32").dtype == torch.float32


@pytest.mark.parametrize("device, dtype, message", [
    ("gpu", "auto", "expected auto, cpu, cuda or cuda:N"),
    ("cuda:x", "auto", "expected auto, cpu, cuda or cuda:N"),
    ("cpu", "float16", "expected auto, float32 or bfloat16"),
    ("cpu", "int8", "expected auto, float32 or bfloat16"),
])
def test_bad_strings_are_one_line_errors(device, dtype, message):
    with pytest.raises(ValueError, match=message) as err:
        resolve_runtime(device, dtype)
    assert "\n" not in str(err.value)


def test_cuda_without_a_gpu_is_refused():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    for device in ("cuda", "cuda:1"):
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_runtime(device, "bfloat16")


def test_to_device_moves_nested_batches_and_keeps_integer_dtypes():
    from transformers import BatchFeature

    rt = Runtime(torch.device("meta"), torch.bfloat16)
    batch = BatchFeature({"input_ids": torch.ones(2, 3, dtype=torch.long), "pixel_values": torch.zeros(2, 3, 4, 4),
                          "attention_mask": torch.ones(2, 3, dtype=torch.bool),
                          "extra": [torch.zeros(1), (torch.ones(1, dtype=torch.int32), "text")], "n": 3})
    out = to_device(batch, rt)
    assert type(out) is dict
    assert out["input_ids"].device.type == "meta" and out["input_ids"].dtype == torch.long
    assert out["attention_mask"].dtype == torch.bool
    assert out["pixel_values"].dtype == torch.bfloat16 and out["pixel_values"].device.type == "meta"
    assert out["extra"][0].dtype == torch.bfloat16 and out["extra"][1][0].dtype == torch.int32
    assert out["extra"][1][1] == "text" and out["n"] == 3


def test_to_device_follows_the_model():
    model = torch.nn.Embedding(4, 2).to(torch.bfloat16)
    out = to_device({"x": torch.zeros(1), "i": torch.zeros(1, dtype=torch.long)}, model)
    assert out["x"].dtype == torch.bfloat16 and out["i"].dtype == torch.long


def test_to_numpy_reads_bf16_and_keeps_float64():
    assert to_numpy(torch.ones(2, dtype=torch.bfloat16)).dtype == np.float32
    assert to_numpy(torch.ones(2, dtype=torch.float64)).dtype == np.float64
    assert to_numpy(torch.ones(2, dtype=torch.long)).dtype == np.int64
    x = np.zeros(2)
    assert to_numpy(x) is x


def test_thread_cap_applies_on_the_cpu_only(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("PG_THREADS", "1")
        assert set_threads(CPU_FP32) == 1 and torch.get_num_threads() == 1
        assert set_threads(Runtime(torch.device("meta"), torch.float32)) is None
        monkeypatch.setenv("PG_THREADS", "0")
        with pytest.raises(ValueError, match="PG_THREADS"):
            set_threads(CPU_FP32)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("command", ["screen", "finetune", "eval", "audit", "bench"])
def test_compile_flag_reaches_the_runtime(command, monkeypatch):
    """`--compile` on every command that takes --device goes into the runtime, over params.yaml's
    `runtime.compile`; absent, params.yaml's value (false) holds. (`_runtime` is replaced to stop the
    command right after it has built its runtime.)"""
    from typer.testing import CliRunner

    from poisonguard import cli

    seen = []

    def stop(cfg):
        seen.append(cfg.runtime.compile)
        raise SystemExit(0)  # the runtime is all this test needs: stop before any work

    monkeypatch.setattr(cli, "_runtime", stop)
    help_text = CliRunner().invoke(cli.app, [command, "--help"], env={"COLUMNS": "200"}).output
    assert "--compile" in help_text and "--no-compile" in help_text
    args = {"screen": ["--data", "d.json", "--base", "b", "--out", "o"],
            "finetune": ["--data", "d.json", "--base", "b", "--out", "o"],
            "eval": ["--model", "m", "--test", "t.json"],
            "audit": None,  # checks its model folders before the runtime: --help only
            "bench": ["--out", "o"]}[command]
    if args is None:
        return
    for flag, want in (([], False), (["--compile"], True)):
        seen.clear()
        CliRunner().invoke(cli.app, [command, *args, *flag])
        assert seen == [want], (command, flag, seen)


# ---------------------------------------------------------------------------------------- CPU kernel pins
# The kernels are chosen once per process, at its first tensor operation: each case runs in a fresh one.
_PIN_VARS = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA", "PG_CPU_KERNELS")
_needs_avx2 = pytest.mark.skipif(not _has_avx2(), reason="pins apply on x86-64 CPUs with AVX2 only")


def _fresh(code: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in _PIN_VARS}
    prog = "import torch\nfrom poisonguard.runtime import pin_cpu_kernels\n" + code
    return subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", prog], env={**clean, **env},
                          capture_output=True, text=True, timeout=120, check=False)


@_needs_avx2
def test_pins_make_torch_mkl_and_onednn_run_their_avx2_code():
    out = _fresh("print(pin_cpu_kernels()); print(torch.backends.cpu.get_cpu_capability())")
    assert out.returncode == 0, out.stderr
    pins, chosen = out.stdout.splitlines()
    assert pins == str(CPU_KERNEL_PINS) and chosen == "AVX2"


@_needs_avx2
def test_native_opts_out_and_a_variable_the_user_set_wins():
    out = _fresh("import os; print(pin_cpu_kernels(), os.environ.get('MKL_CBWR'))", PG_CPU_KERNELS="native")
    assert out.stdout.split() == ["{}", "None"], out.stderr
    out = _fresh("p = pin_cpu_kernels(); print(p['ATEN_CPU_CAPABILITY'], torch.backends.cpu.get_cpu_capability())",
                 ATEN_CPU_CAPABILITY="default")
    assert out.stdout.split() == ["default", "DEFAULT"], out.stderr
    out = _fresh("pin_cpu_kernels()", PG_CPU_KERNELS="avx512")
    assert out.returncode != 0 and "PG_CPU_KERNELS must be avx2 (the default) or native, got 'avx512'" in out.stderr


@_needs_avx2
def test_a_pin_after_the_first_tensor_operation_is_a_warning():
    """Too late to take effect: the process says so instead of recording kernels it does not run."""
    out = _fresh("torch.ones(8).sum()\npin_cpu_kernels()")
    if "AVX2" in _fresh("torch.ones(8).sum(); print(torch.backends.cpu.get_cpu_capability())").stdout:
        pytest.skip("this CPU's own choice is AVX2: a late pin changes nothing")
    assert out.returncode != 0 and "before they could be pinned to avx2" in out.stderr


def test_cpu_kernels_records_what_the_process_runs():
    rec = cpu_kernels()
    assert rec["torch"] == torch.__version__ and rec["threads"] == torch.get_num_threads()
    assert rec["aten"] == torch.backends.cpu.get_cpu_capability()
    assert rec["mkl_cbwr"] == os.environ.get("MKL_CBWR")


@pytest.mark.parametrize("env, message", [
    ({"PG_CPU_KERNELS": "avx512"}, "error: PG_CPU_KERNELS must be avx2 (the default) or native, got 'avx512'"),
    ({"PG_THREADS": "0"}, "error: PG_THREADS must be a positive integer, got '0'"),
])
def test_a_bad_kernel_or_thread_setting_is_a_one_line_cli_error(env, message, tmp_path):
    from typer.testing import CliRunner

    from poisonguard.cli import app

    res = CliRunner().invoke(app, ["world", "--out", str(tmp_path / "w")], env=env)
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output
    assert not (tmp_path / "w").exists()  # refused before anything was written
