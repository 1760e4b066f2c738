"""Where models run and in which precision: one `Runtime` for train, generate, extract and audit.

Why: a 7B model in float32 on the CPU does not fit the jobs this tool serves (DESIGN §1: bf16 on GPUs), and a
batch built by a processor is always a CPU, float32 dictionary. Every place that feeds a model goes through
`to_device`, so the inputs follow the model (its device, and its dtype for floating tensors such as
`pixel_values`), and every place that reads a tensor into NumPy goes through `to_numpy` (GPU tensors and bf16
have no NumPy view).

`auto` means CUDA + bfloat16 when a GPU is present and CPU + float32 otherwise: the embedded world and the CPU
tests keep today's exact numbers. Thread caps (`set_threads`) apply on the CPU only; on a GPU the CPU threads
only feed the device.

`live_models()` counts the full models alive in this process (those loaded through `poisonguard.models`), so
a test can check the memory contract of a screen: one model with an adapter, two at most while switching.

The runtime also carries how images reach the processor (`max_pixels`, `min_pixels`, `pad_to_square`): like
the device and dtype, these must be the same in every pass that feeds the model (training, generation,
extraction, the projector audit), and the runtime is the one object all of them receive.
"""

from __future__ import annotations

import os
import warnings
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

DEVICES = ("auto", "cpu", "cuda", "cuda:N")
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


# The processor attribute that asks `train.batching.prepare_images` to pad images to a square (set by
# `models.configure_processor`; an attribute outside the processor's __init__, so save_pretrained ignores it).
PAD_TO_SQUARE_ATTR = "poisonguard_pad_to_square"


@dataclass(frozen=True)
class Runtime:
    """Where a model runs (`device`) and the dtype of its weights (`dtype`); `compile` asks callers that
    support it to wrap the language model in `torch.compile` (a GPU-only speed-up, off by default).

    `max_pixels` / `min_pixels` bound the resolution of processors with dynamic resolution (Qwen2-VL family;
    None keeps the processor's own), and `pad_to_square` pads each image to a square of its mean colour
    before the processor, as LLaVA-1.5 was trained (see `models.configure_processor`).
    """

    device: torch.device
    dtype: torch.dtype
    compile: bool = False
    max_pixels: int | None = None
    min_pixels: int | None = None
    pad_to_square: bool = False

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def describe(self) -> dict[str, str]:
        """JSON-ready summary for reports and manifests."""
        return {"device": str(self.device), "dtype": str(self.dtype).removeprefix("torch."),
                "compile": str(self.compile).lower()}


CPU_FP32 = Runtime(torch.device("cpu"), torch.float32)


def _parse_device(device: str | torch.device) -> torch.device:
    if isinstance(device, torch.device):
        return device
    text = str(device).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu" or text == "meta":
        return torch.device(text)
    if text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {text}: CUDA is not available on this machine (use --device cpu or auto)")
        dev = torch.device(text)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {text}: only {torch.cuda.device_count()} CUDA device(s) are visible")
        return dev
    raise ValueError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")


def _parse_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        out = dtype
    else:
        text = str(dtype).strip().lower().removeprefix("torch.")
        if text == "auto":
            return torch.bfloat16 if device.type == "cuda" and _cuda_bf16(device) else torch.float32
        if text not in DTYPES:
            raise ValueError(f"--dtype {dtype!r}: expected auto, float32 or bfloat16")
        out = DTYPES[text]
    if out not in (torch.float32, torch.bfloat16):
        raise ValueError(f"--dtype {out}: only float32 and bfloat16 are supported")
    if out == torch.bfloat16 and device.type == "cuda" and not _cuda_bf16(device):
        raise ValueError(f"--dtype bfloat16: {torch.cuda.get_device_name(device)} has no bfloat16 support "
                         "(use --dtype float32)")
    return out


def _cuda_bf16(device: torch.device) -> bool:
    with torch.cuda.device(device):
        return bool(torch.cuda.is_bf16_supported())


def resolve_runtime(device: str | torch.device = "auto", dtype: str | torch.dtype = "auto", *,
                    compile: bool = False, max_pixels: int | None = None, min_pixels: int | None = None,
                    pad_to_square: bool = False) -> Runtime:
    """A `Runtime` from the CLI's strings; raises ValueError with a one-line reason for a bad string, CUDA
    asked for without a GPU, bfloat16 on a GPU that has none, or a pixel bound that is not a positive integer
    (or a min above the max). `meta` is accepted for tests."""
    for name, value in (("--max-pixels", max_pixels), ("--min-pixels", min_pixels)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if max_pixels is not None and min_pixels is not None and min_pixels > max_pixels:
        raise ValueError(f"--min-pixels {min_pixels} is above --max-pixels {max_pixels}")
    dev = _parse_device(device)
    return Runtime(dev, _parse_dtype(dtype, dev), compile=bool(compile), max_pixels=max_pixels,
                   min_pixels=min_pixels, pad_to_square=bool(pad_to_square))


def model_device_dtype(model_or_runtime: Any) -> tuple[torch.device, torch.dtype]:
    """(device, floating dtype) that a model's inputs must have: those of its input embeddings (works on
    peft wrappers and on models whose vision tower is loaded alone), or a `Runtime`'s."""
    if isinstance(model_or_runtime, Runtime):
        return model_or_runtime.device, model_or_runtime.dtype
    weight = None
    get = getattr(model_or_runtime, "get_input_embeddings", None)
    if get is not None:
        try:
            emb = get()
            weight = getattr(emb, "weight", None)
        except (NotImplementedError, AttributeError):
            weight = None
    if weight is None:
        weight = next(p for p in model_or_runtime.parameters() if p.is_floating_point())
    return weight.device, weight.dtype


def to_device(batch: Any, model_or_runtime: Any, *, non_blocking: bool = False) -> Any:
    """Move every tensor in a (nested) batch to the model's device; floating tensors (pixel_values) take the
    model's dtype, integer and boolean tensors (ids, masks, grid sizes) keep theirs. Non-tensors pass as is.

    Mappings come back as plain dicts (a processor's BatchFeature included), sequences keep their type.
    """
    device, dtype = model_device_dtype(model_or_runtime)
    nb = non_blocking and device.type == "cuda"

    def move(x: Any) -> Any:
        if torch.is_tensor(x):
            if x.is_floating_point():
                return x.to(device=device, dtype=dtype, non_blocking=nb)
            return x.to(device=device, non_blocking=nb)
        if isinstance(x, Mapping):
            return {k: move(v) for k, v in x.items()}
        if isinstance(x, tuple):
            return tuple(move(v) for v in x)
        if isinstance(x, list):
            return [move(v) for v in x]
        return x

    return move(batch)


def to_numpy(t: torch.Tensor | np.ndarray) -> np.ndarray:
    """A tensor on any device, of any dtype (bf16 included), as a NumPy array; floating tensors as float32
    (or float64 when they are float64), other dtypes as they are."""
    if isinstance(t, np.ndarray):
        return t
    t = t.detach()
    if t.is_floating_point() and t.dtype not in (torch.float32, torch.float64):
        t = t.float()
    return t.cpu().numpy()


# The vector code torch, MKL and oneDNN run on x86-64 CPUs, pinned to AVX2 (see `pin_cpu_kernels`).
CPU_KERNEL_PINS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def _has_avx2() -> bool:
    """Whether this is a Linux x86-64 CPU with AVX2 (read from /proc/cpuinfo: asking torch would fix its choice
    of kernels before they could be pinned)."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " avx2" in line for line in f)
    except OSError:
        return False


def pin_cpu_kernels() -> dict[str, str]:
    """Pin torch's, MKL's and oneDNN's CPU kernels to their AVX2 code, so one recipe, seed and thread count
    gives the same weights on every run of a host, whatever vector unit it has.

    Why: the three libraries pick their vector code per CPU, and float sums taken in another order differ in
    their last bits; over thousands of training steps that grows into another model (the embedded world's
    recipe, seed and threads gave base models of 0.975, 0.981 and 0.992 clean accuracy under three kernel
    choices, and each of the three libraries' choice alone changes the weights). AVX2 is the widest code every
    x86-64 host of the last decade runs. It does not make two vendors' CPUs agree: MKL promises its AVX2
    branch's results on Intel CPUs only, and an Intel and an AMD host gave two base models from these pins.
    A variable already set in the environment wins, and `PG_CPU_KERNELS=native` leaves all three to choose.
    The pins only take effect before the first CPU kernel runs, so every command and stage calls this first.
    Returns the pins in force ({} where none: native, or no AVX2 here)."""
    mode = os.environ.get("PG_CPU_KERNELS", "avx2")
    if mode not in ("avx2", "native"):
        raise ValueError(f"PG_CPU_KERNELS must be avx2 (the default) or native, got {mode!r}")
    if mode == "native" or not _has_avx2():
        return {}
    for name, value in CPU_KERNEL_PINS.items():
        os.environ.setdefault(name, value)
    asked, chosen = os.environ["ATEN_CPU_CAPABILITY"], torch.backends.cpu.get_cpu_capability()
    if chosen.lower() != asked.lower():
        warnings.warn(f"torch had chosen its CPU kernels ({chosen}) before they could be pinned to {asked}: "
                      "this process's weights may differ from another host's (pin_cpu_kernels must run before "
                      "the first tensor operation)", RuntimeWarning, stacklevel=2)
    return {name: os.environ[name] for name in CPU_KERNEL_PINS}


def cpu_kernels() -> dict[str, Any]:
    """The CPU code this process runs (what `pin_cpu_kernels` asked and what torch chose), for a record of how
    a model's bytes were made."""
    return {"torch": torch.__version__, "aten": torch.backends.cpu.get_cpu_capability(),
            **{name.lower(): os.environ.get(name) for name in CPU_KERNEL_PINS if name != "ATEN_CPU_CAPABILITY"},
            "threads": torch.get_num_threads()}


def set_threads(runtime: Runtime | None = None, default: int = 2) -> int | None:
    """Cap torch's CPU threads for CPU runs: `PG_THREADS` if set, else at most `default` (the reference
    machines have 2 cores; more threads than cores make a tiny model slower). On a GPU the cap is left alone.
    Returns the thread count set, or None when nothing was changed."""
    if runtime is not None and runtime.device.type != "cpu":
        return None
    env = os.environ.get("PG_THREADS")
    n = int(env) if env else min(default, torch.get_num_threads())
    if n < 1:
        raise ValueError(f"PG_THREADS must be a positive integer, got {env!r}")
    torch.set_num_threads(n)
    return n


def free_memory(runtime: Runtime | None = None) -> None:
    """Collect garbage and return cached CUDA blocks to the driver (between two models of a screen)."""
    import gc

    gc.collect()
    if (runtime is None or runtime.is_cuda) and torch.cuda.is_available():
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------ live-model accounting
_LIVE: weakref.WeakSet = weakref.WeakSet()


def track_model(model: torch.nn.Module) -> torch.nn.Module:
    """Register a loaded full model, so `live_models()` counts it until it is garbage collected."""
    _LIVE.add(model)
    return model


def live_models() -> int:
    """How many tracked full models are alive now (collect garbage first for an exact count)."""
    import gc

    gc.collect()
    return len(_LIVE)
