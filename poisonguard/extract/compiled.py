"""`--compile`: the language model's forward under `torch.compile` for the extraction passes.

Why only the language model: it holds nearly all of an MLLM's FLOPs at extraction (576 image + prompt tokens
through 32 layers for LLaVA-1.5-7B; the vision tower runs once per image on 336 px), and its shapes repeat
from batch to batch, while the vision paths of the families differ in how they batch images (anyres tiles,
dynamic resolution), which would recompile often. On an H200 a compiled LLaVA-1.5-7B language model ran a
plain forward at 65.6 samples/s against 55.4 eager (issue 15's measurement with benchmarks/gpu_llava7b.py).

The decision-row capture stays correct: its attention function is excluded from the graphs
(`poisonguard.extract.capture`), so every layer's attention is a graph break and the recorder sees each row.
On this project's 2-core CPU machines inductor works (it needs a C++ compiler) but compiling the tiny embedded
world's LLaVA took 115 s for a 0.2 s extraction, so on the CPU `--compile` is honoured with a warning that it
only pays off on long runs; it is meant for GPUs.

`compiled_language_model` wraps the forward in place for the block and restores it on exit (the weights are
shared, nothing is copied).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch

CPU_WARNING = ("--compile on the CPU: torch.compile (inductor) works here but compiling takes minutes on a "
               "small machine and pays off only on long extractions; it is meant for GPUs")


def language_model(model) -> torch.nn.Module:
    """The decoder stack of an MLLM (e.g. `LlamaModel` inside LLaVA): what `--compile` compiles."""
    get = getattr(model, "get_decoder", None)
    lm = get() if get is not None else None
    if not isinstance(lm, torch.nn.Module):
        raise TypeError(f"{type(model).__name__} has no language model to compile (get_decoder())")
    return lm


@contextmanager
def compiled_language_model(model, enabled: bool = True, *, backend: str = "inductor",
                            dynamic: bool | None = None) -> Iterator[torch.nn.Module]:
    """Within the block, the model's language model runs `torch.compile(forward, backend=...)`; yields the
    model. `enabled=False` is a no-op, so callers write one code path. `backend` "inductor" is the real
    thing; tests use "aot_eager" (the same tracing and graph capture, no code generation)."""
    if not enabled:
        yield model
        return
    lm = language_model(model)
    if next(lm.parameters()).device.type == "cpu" and backend == "inductor":
        warnings.warn(CPU_WARNING, stacklevel=3)
    had_own = "forward" in vars(lm)  # an instance-level forward (someone else's wrapper) to put back
    previous = vars(lm).get("forward")
    lm.forward = torch.compile(lm.forward, backend=backend, dynamic=dynamic)
    try:
        yield model
    finally:
        if had_own:
            lm.forward = previous
        else:
            del lm.forward
