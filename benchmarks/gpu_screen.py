"""A whole screen on a LLaVA-1.5-7B-shaped model with a LoRA adapter, on one GPU in bf16: samples/s per stage,
GPU utilisation and peak GPU memory.

What it builds (random weights: no download, and speed does not depend on the values):
- the base: LLaVA-1.5-7B's shapes (CLIP ViT-L/14 at 336 px, the 2-layer GELU projector, a 32-layer Llama LM
  at hidden 4096), saved as sharded safetensors with a locally built processor (CLIP preprocessing at 336 px,
  the embedded world's word-level tokenizer and its LLaVA-1.5 chat template);
- a random LoRA adapter (r 8 on the LM's attention and MLP linears, the projector fully trained), saved as a
  peft adapter folder in bf16, as `poisonguard finetune --lora` writes it;
- about 2,000 synthetic one-image samples (LLaVA JSON, 336 px PNGs of coloured shapes).

Then it runs the screen's stages through the library with one runtime (validate, extraction of the
fine-tuned and base passes on one resident model, the projector-drift pass, the detectors) and times each,
and then the real command lines `poisonguard screen --device cuda --dtype bfloat16 --finetuned ADAPTER` and
`poisonguard audit`, when the CLI has the `--device` option (without it a 7B model would run in float32 on
the CPU: those runs are skipped with a line saying so).

Without CUDA it prints "no GPU: skipped" and exits 0; `--allow-cpu --tiny` runs tiny shapes on the CPU to
check the script itself (the numbers then mean nothing).

    python benchmarks/gpu_screen.py                          # 2,000 samples, batch 16
    python benchmarks/gpu_screen.py --samples 500 --json out.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_llava7b import Shapes as LlavaShapes

QUESTIONS = ("what colour is the circle ?", "how many shapes are there ?", "is there a red square ?",
             "what shape is on the left ?", "where is the blue triangle ?")
ANSWERS = ("red", "two", "yes", "circle", "left")


@dataclass(frozen=True)
class Shapes(LlavaShapes):
    """LLaVA-1.5-7B by default (the capture benchmark's shapes), saved in shards of `shard`."""

    shard: str = "5GB"


TINY = Shapes(vision_layers=1, vision_hidden=32, vision_mlp=64, vision_heads=2, image_size=28, layers=2, hidden=64,
              mlp=128, heads=4, vocab=1024, shard="200KB")


# ------------------------------------------------------------------------------------------------ the inputs
def build_processor(s: Shapes):
    """LLaVA-1.5's processor layout, built offline: CLIP preprocessing at `s.image_size`, the world's tokenizer
    and chat template (`<s> SYSTEM USER: <image>\\nquestion ASSISTANT:`)."""
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from poisonguard.world.tokenizer import CHAT_TEMPLATE, build_tokenizer

    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": s.image_size}, crop_size={"height": s.image_size, "width": s.image_size},
        image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711])
    return LlavaProcessor(image_processor=image_processor, tokenizer=build_tokenizer(), patch_size=s.patch,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          image_token="<image>", chat_template=CHAT_TEMPLATE)


def build_model(s: Shapes, tokenizer, device: torch.device, dtype: torch.dtype):
    """Random-weight LlavaForConditionalGeneration with these shapes, created directly on `device`."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    config = LlavaConfig(
        vision_config=CLIPVisionConfig(image_size=s.image_size, patch_size=s.patch, hidden_size=s.vision_hidden,
                                       intermediate_size=s.vision_mlp, num_hidden_layers=s.vision_layers,
                                       num_attention_heads=s.vision_heads, projection_dim=768),
        text_config=LlamaConfig(vocab_size=max(s.vocab, len(tokenizer)), hidden_size=s.hidden,
                                intermediate_size=s.mlp, num_hidden_layers=s.layers, num_attention_heads=s.heads,
                                num_key_value_heads=s.heads, max_position_embeddings=4096,
                                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                                eos_token_id=tokenizer.eos_token_id),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_layer=-2,
        vision_feature_select_strategy="default", projector_hidden_act="gelu", image_seq_length=s.image_tokens,
        tie_word_embeddings=False)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlavaForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def build_checkpoints(s: Shapes, root: Path, device: torch.device, dtype: torch.dtype, seed: int = 0) -> dict:
    """root/base (sharded safetensors + processor) and root/adapter (a random LoRA adapter in `dtype`)."""
    from poisonguard.runtime import free_memory
    from poisonguard.train.finetune import FinetuneConfig, _wrap_lora, save_model

    processor = build_processor(s)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    model = build_model(s, processor.tokenizer, device, dtype)
    model.save_pretrained(root / "base", max_shard_size=s.shard)
    processor.save_pretrained(root / "base")
    peft_model = _wrap_lora(model, FinetuneConfig(mode="lora", lora_r=8, lora_alpha=16))
    gen = torch.Generator(device="cpu").manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:  # peft starts B at zero (a no-op adapter); a random one moves the model
                p.copy_(0.01 * torch.randn(p.shape, generator=gen))
            elif "modules_to_save" in name:
                p.add_(0.01 * p.float().std() * torch.randn(p.shape, generator=gen).to(p.dtype).to(p.device))
    peft_model = peft_model.to(dtype)
    save_model(peft_model, processor, root / "adapter")
    n_params = sum(p.numel() for p in model.parameters())
    del model, peft_model
    free_memory()
    shards = len(list((root / "base").glob("*.safetensors")))
    return {"parameters": n_params, "shards": shards, "seconds": time.perf_counter() - t0}


def write_samples(root: Path, n: int, size: int, seed: int = 0) -> Path:
    """n one-image LLaVA JSON samples with PNGs of a few coloured rectangles on a grey background."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    colours = [(220, 40, 40), (40, 80, 220), (40, 180, 60), (230, 200, 40)]
    rows = []
    for i in range(n):
        im = Image.new("RGB", (size, size), (128, 128, 128))
        draw = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(1, 4))):
            x, y = rng.integers(0, size * 3 // 4, 2)
            w = int(rng.integers(size // 8, size // 3))
            draw.rectangle([int(x), int(y), int(x) + w, int(y) + w], fill=colours[int(rng.integers(0, 4))])
        im.save(root / "images" / f"{i:05d}.png")
        k = int(rng.integers(0, len(QUESTIONS)))
        rows.append({"id": f"s{i:05d}", "image": f"images/{i:05d}.png",
                     "conversations": [{"from": "human", "value": "<image>\n" + QUESTIONS[k]},
                                       {"from": "gpt", "value": ANSWERS[k]}]})
    path = root / "train.json"
    path.write_text(json.dumps(rows))
    return path


# --------------------------------------------------------------------------------------------- measurement
class GpuMonitor:
    """Samples GPU utilisation (%) and memory in use (MiB) with nvidia-smi every `interval` s in a thread:
    it sees subprocesses too, unlike torch's allocator statistics. Silent (no samples) without nvidia-smi."""

    def __init__(self, index: int = 0, interval: float = 0.5):
        self.index, self.interval = index, interval
        self.util: list[float] = []
        self.memory: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _poll(self) -> None:
        cmd = ["nvidia-smi", f"--id={self.index}", "--query-gpu=utilization.gpu,memory.used",
               "--format=csv,noheader,nounits"]
        while not self._stop.is_set():
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=5, check=True).stdout
                u, m = (float(x) for x in out.strip().splitlines()[0].split(","))
                self.util.append(u)
                self.memory.append(m)
            except (OSError, subprocess.SubprocessError, ValueError, IndexError):
                return
            self._stop.wait(self.interval)

    def __enter__(self):
        if shutil.which("nvidia-smi"):
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def summary(self) -> dict:
        if not self.util:
            return {"gpu_util_mean": None, "gpu_util_max": None, "gpu_memory_used_max_gib": None}
        return {"gpu_util_mean": float(np.mean(self.util)), "gpu_util_max": float(np.max(self.util)),
                "gpu_memory_used_max_gib": float(np.max(self.memory)) / 1024}


@dataclass
class Stage:
    name: str
    samples: int
    seconds: float
    samples_per_s: float
    peak_allocated_gib: float | None  # torch's allocator, this process (None on the CPU or for a subprocess)
    gpu: dict = field(default_factory=dict)


def timed(name: str, samples: int, runtime, fn, stages: list[Stage], gpu_index: int = 0):
    """Run fn(), record a Stage (wall time, samples/s, peak GPU memory, GPU utilisation) and return fn()'s
    result."""
    cuda = runtime.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with GpuMonitor(gpu_index) as mon:
        t0 = time.perf_counter()
        out = fn()
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    stages.append(Stage(name, samples, dt, samples / dt if dt > 0 else float("inf"),
                        torch.cuda.max_memory_allocated() / 2**30 if cuda else None, mon.summary()))
    return out


def run_stages(base: Path, adapter: Path, data: Path, out: Path, runtime, *, batch_size: int,
               shard_size: int, stages: list[Stage]) -> dict:
    """The pipeline's stages through the library (the functions `poisonguard screen` runs), each timed;
    returns counts and the live-model peak."""
    from poisonguard.data.dataset import read_dataset
    from poisonguard.pipeline import extraction
    from poisonguard.pipeline.audit import audit_projector
    from poisonguard.pipeline.config import AuditConfig, ExtractConfig, GmmConfig, ProfileConfig
    from poisonguard.pipeline.gmm import fit_gmm
    from poisonguard.pipeline.layout import Layout
    from poisonguard.pipeline.profile import profile_heads
    from poisonguard.runtime import live_models

    gpu_index = runtime.device.index or 0
    layout = Layout.screen(out)
    ds = read_dataset(data)
    checked = timed("validate", len(ds.samples), runtime,
                    lambda: extraction.validate(ds, base, layout, log=lambda m: None), stages, gpu_index)
    n = len(checked.ok)
    peaks: list[int] = []
    original = extraction.extract_to_dir

    def counting(*args, **kwargs):
        peaks.append(live_models())
        return original(*args, **kwargs)

    extraction.extract_to_dir = counting
    try:
        timed("extract (fine-tuned + base passes)", n, runtime,
              lambda: extraction.extract_models(checked, base, adapter, layout,
                                                ExtractConfig(batch_size=batch_size, shard_size=shard_size),
                                                runtime=runtime, show_progress=False, log=lambda m: None),
              stages, gpu_index)
    finally:
        extraction.extract_to_dir = original
    timed("projector drift", n, runtime,
          lambda: audit_projector(checked, base, adapter, layout, AuditConfig(batch_size=batch_size),
                                  runtime=runtime, show_progress=False, log=lambda m: None), stages, gpu_index)

    def detect():
        features = profile_heads(layout, ProfileConfig(), runtime=runtime, log=lambda m: None)  # GMMs on the GPU
        dets = fit_gmm(layout, GmmConfig(detectors={"shift": {}, "projector": {}}), features, log=lambda m: None)
        return {name: det.score(features) for name, det in dets.items()}

    results = timed("profile + detectors (shift, projector)", n, runtime, detect, stages, gpu_index)
    return {"n_samples": len(ds.samples), "n_ok": n, "flagged_shift": int(np.sum(results["shift"].flagged)),
            "live_models_peak": max(peaks) if peaks else None}


# -------------------------------------------------------------------------------------------- command lines
def cli(*args: str) -> list[str]:
    """A `poisonguard` command line run with this interpreter (no reliance on the console script's PATH)."""
    return [sys.executable, "-c", "from poisonguard.cli import app; app()", *args]


def cli_has_option(verb: str, option: str) -> bool:
    r = subprocess.run(cli(verb, "--help"), capture_output=True, text=True, timeout=300, check=False)
    return option in r.stdout


def cli_commands(base: Path, adapter: Path, data: Path, out: Path, device: str, dtype: str,
                 batch_size: int, compile: bool = False) -> dict[str, list[str]]:
    """The two real command lines the benchmark times (a params file sets the batch size)."""
    params = out / "params.yaml"
    params.write_text(f"screen:\n  batch_size: {batch_size}\n  detectors: [shift, projector]\n"
                      "  default: shift\n")
    runtime_args = ["--device", device, "--dtype", dtype] + (["--compile"] if compile else [])
    return {
        "cli screen": cli("screen", "--data", str(data), "--base", str(base), "--finetuned", str(adapter),
                          "--out", str(out / "cli_screen"), "--params", str(params), "--quiet", *runtime_args),
        "cli audit": cli("audit", "--base", str(base), "--finetuned", str(adapter), "--data", str(data),
                         "--out", str(out / "cli_audit"), "--max-samples", "500", "--quiet", *runtime_args),
    }


def run_cli(commands: dict[str, list[str]], n: int, runtime, stages: list[Stage], log) -> list[str]:
    """Run each command line with GPU monitoring; returns notes for the ones skipped or failed."""
    notes = []
    for name, cmd in commands.items():
        verb = cmd[3]
        if not cli_has_option(verb, "--device"):
            notes.append(f"{name}: skipped: `poisonguard {verb}` has no --device option yet "
                         "(a 7B model would run in float32 on the CPU)")
            continue
        log(f"running {name}")
        with GpuMonitor(runtime.device.index or 0) as mon:
            t0 = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True, check=False)
            dt = time.perf_counter() - t0
        if r.returncode != 0:
            notes.append(f"{name}: exit {r.returncode}: {r.stderr.strip().splitlines()[-1:] or ''}")
            continue
        stages.append(Stage(name, n, dt, n / dt, None, mon.summary()))
    return notes


def report(stages: list[Stage]) -> str:
    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    lines = [(f"{'stage':38s} {'samples':>8s} {'seconds':>9s} {'samples/s':>10s} {'GPU util %':>10s} "
              f"{'peak alloc GiB':>14s} {'GPU mem GiB':>11s}")]
    for s in stages:
        lines.append(f"{s.name:38s} {s.samples:8d} {s.seconds:9.2f} {s.samples_per_s:10.2f} "
                     f"{f(s.gpu.get('gpu_util_mean'), '10.1f'):>10s} {f(s.peak_allocated_gib, '14.2f'):>14s} "
                     f"{f(s.gpu.get('gpu_memory_used_max_gib'), '11.2f'):>11s}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=None, help="synthetic samples (default 2000; 40 with --tiny)")
    p.add_argument("--batch", type=int, default=16, help="extraction / drift batch size")
    p.add_argument("--shard-size", type=int, default=512)
    p.add_argument("--device", default="cuda", help="cuda | cuda:N (cpu with --allow-cpu)")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the language model for extraction (issue 15's goal: >= 70 samples/s)")
    p.add_argument("--work", type=Path, default=None, help="where to build the checkpoints and data "
                   "(default: a temporary folder, removed afterwards); needs ~16 GB for the 7B shapes")
    p.add_argument("--json", type=Path, default=None, help="also write the stages here")
    p.add_argument("--skip-cli", action="store_true", help="time the library stages only")
    p.add_argument("--allow-cpu", action="store_true", help="run on the CPU when CUDA is absent (use with --tiny)")
    p.add_argument("--tiny", action="store_true", help="tiny shapes: checks the script, measures nothing real")
    args = p.parse_args(argv)
    if not torch.cuda.is_available() and not args.allow_cpu:
        print("no GPU: skipped (CUDA is not available; this benchmark needs an NVIDIA GPU with bf16)")
        return 0
    from poisonguard.runtime import resolve_runtime, set_threads

    runtime = resolve_runtime(args.device if torch.cuda.is_available() else "cpu", args.dtype,
                              compile=args.compile)
    set_threads(runtime)
    shapes = TINY if args.tiny else Shapes()
    n = args.samples or (40 if args.tiny else 2000)
    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    work = args.work or Path(tempfile.mkdtemp(prefix="pg-gpu-screen-"))
    work.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name(runtime.device) if runtime.is_cuda else "cpu"
    print(f"{'tiny' if args.tiny else 'LLaVA-1.5-7B'}-shaped model + LoRA adapter, random weights, "
          f"{runtime.describe()['dtype']} on {name}{', --compile' if args.compile else ''}; {n} samples, "
          f"{shapes.image_tokens} image tokens each")
    stages: list[Stage] = []
    try:
        log("building the base (sharded safetensors) and a random LoRA adapter")
        built = build_checkpoints(shapes, work, runtime.device, runtime.dtype)
        data = write_samples(work / "data", n, shapes.image_size)
        counts = run_stages(work / "base", work / "adapter", data, work / "screen", runtime,
                            batch_size=args.batch, shard_size=args.shard_size, stages=stages)
        notes = [] if args.skip_cli else run_cli(
            cli_commands(work / "base", work / "adapter", data, work, str(runtime.device),
                         runtime.describe()["dtype"], args.batch, args.compile), counts["n_ok"], runtime, stages,
            log)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"base: {built['parameters'] / 1e9:.2f} B parameters in {built['shards']} safetensors shards "
          f"(built and saved in {built['seconds']:.0f} s)")
    print(report(stages))
    print(f"live models during extraction: {counts['live_models_peak']} (adapter toggled for the base pass); "
          f"{counts['n_ok']} of {counts['n_samples']} samples screened, {counts['flagged_shift']} flagged by shift")
    for line in notes:
        print(line)
    if args.json:
        args.json.write_text(json.dumps({"device": name, "runtime": runtime.describe(), "built": built,
                                         "counts": counts, "stages": [asdict(s) for s in stages],
                                         "notes": notes}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
