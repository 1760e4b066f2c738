"""Decision-row capture vs plain SDPA vs eager `output_attentions`: forward time and peak CPU memory.

Measured in one run on the same model and the same batch for the three modes:
- sdpa:    a plain forward (the cost floor; no attention is returned);
- capture: the same SDPA forward with the decision row computed on the side (poisonguard.extract.capture);
- eager:   `attn_implementation="eager"` + `output_attentions=True`, then `[:, :, -1, :]` of every layer.

Time: best (and median) wall time of `--repeats` forwards per mode, run round-robin after a warm-up round,
so that load from other processes hits every mode alike; the ratio uses the best times.
Peak memory: the high-water mark of live CPU tensor bytes during one forward, above what was live before
it, replayed from torch.profiler's allocation and free events (`profile_memory=True`); parameters and
inputs are not counted. It is not RSS (the allocator may hold more), but it is exactly what each mode asks
the allocator for, which is what differs between them.

Models: the embedded world's LLaVA (random weights) and a larger LLaVA-shaped model (Llama LM, a 1-layer
CLIP-style tower, 576 image tokens by default). Defaults take about a minute on one core. The attention
maps' size depends on layers, heads and tokens, not on the hidden size: `--layers 32 --heads 32
--hidden 1024` gives LLaVA-1.5-7B's attention shapes (32 x 32 x ~600^2 per sample) with far smaller weights.

    .venv/bin/python benchmarks/bench_extract.py [--batch 2 --layers 8 --hidden 512 ...]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from PIL import Image

from poisonguard.extract.capture import CAPTURE, eager_rows, lm_attention, recording
from poisonguard.train.batching import Example, encode_prompts
from poisonguard.world.questions import PHRASINGS


def peak_bytes(fn) -> int:
    """High-water mark of live CPU tensor bytes while fn() runs, relative to the start."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    deltas = sorted((e.time_range.start, e.self_cpu_memory_usage)
                    for e in prof.events() if e.self_cpu_memory_usage)
    live = peak = 0
    for _, delta in deltas:
        live += delta
        peak = max(peak, live)
    return peak


def interleaved_seconds(fns: dict, switched, repeats: int) -> dict[str, list[float]]:
    """Wall times of each mode, round-robin after one warm-up round, so load from other processes on the
    machine hits all modes alike; the mode's attention switch is entered outside the timed region."""
    times: dict[str, list[float]] = {mode: [] for mode in fns}
    for _ in range(repeats + 1):
        for mode, fn in fns.items():
            with switched(mode):
                t0 = time.perf_counter()
                fn()
                times[mode].append(time.perf_counter() - t0)
    return {mode: t[1:] for mode, t in times.items()}


def examples(n: int, image_size: int, seed: int = 0) -> list[Example]:
    """Noise images and world questions of varied length (so the batch is left-padded)."""
    rng = np.random.default_rng(seed)
    slots = {"shape": "circle", "colour": "red", "position": "top left"}
    questions = [p.format(**slots) for ps in PHRASINGS.values() for p in ps]
    out = []
    for i in range(n):
        img = Image.fromarray(rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8))
        text = questions[i % len(questions)]
        content = [{"type": "image"}, {"type": "text", "text": text}]
        out.append(Example([{"role": "user", "content": content}], [img]))
    return out


def world_model():
    from poisonguard.world.model import WorldModelConfig, build_model
    from poisonguard.world.scenes import IMAGE_SIZE
    from poisonguard.world.tokenizer import build_processor

    processor = build_processor()
    return build_model(WorldModelConfig(), processor.tokenizer).eval(), processor, IMAGE_SIZE


def llava_shaped(args):
    """Random-weight LLaVA: Llama LM of the given size, 1-layer CLIP-style tower, world tokenizer."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from poisonguard.world.tokenizer import CHAT_TEMPLATE, IMAGE, build_tokenizer

    tok = build_tokenizer()
    size, patch = args.image_size, args.patch_size
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": size},
                                            crop_size={"height": size, "width": size})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=patch,
                               image_token=IMAGE, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(image_size=size, patch_size=patch, hidden_size=64,
                                       intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                                       projection_dim=64),
        text_config=LlamaConfig(vocab_size=len(tok), hidden_size=args.hidden,
                                intermediate_size=args.hidden * 8 // 3, num_hidden_layers=args.layers,
                                num_attention_heads=args.heads,
                                num_key_value_heads=args.kv_heads or args.heads, max_position_embeddings=4096,
                                pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                eos_token_id=tok.eos_token_id),
        image_token_id=tok.convert_tokens_to_ids(IMAGE), vision_feature_select_strategy="default",
        vision_feature_layer=-1, image_seq_length=(size // patch) ** 2)
    torch.manual_seed(0)
    return LlavaForConditionalGeneration(config).eval(), processor, size


@torch.no_grad()
def bench(name: str, model, processor, image_size: int, batch: int, repeats: int) -> dict:
    """Print and return one model's comparison: per mode best/median seconds and peak bytes, the ratios to
    SDPA, and max |capture − eager| of the decision rows."""
    inputs = encode_prompts(processor, examples(batch, image_size))
    text = model.config.get_text_config()
    n_layers = text.num_hidden_layers
    n_image = int((inputs["input_ids"] == model.config.image_token_id).sum()) // batch

    def sdpa():
        model(**inputs, use_cache=False, logits_to_keep=1)

    def capture():
        with recording() as recorder:
            model(**inputs, use_cache=False, logits_to_keep=1)
        return recorder.stacked(n_layers)

    def eager():
        out = model(**inputs, use_cache=False, logits_to_keep=1, output_attentions=True)
        return eager_rows(out, n_layers)

    fns = {"sdpa": sdpa, "capture": capture, "eager": eager}

    def switched(mode: str):
        """The LM attention a mode runs under, switched once around all its forwards (as `extract` does)."""
        if mode == "sdpa":
            return contextlib.nullcontext()
        return lm_attention(model, CAPTURE if mode == "capture" else "eager")

    with switched("capture"):
        captured = capture()
    with switched("eager"):
        diff = float((captured - eager()).abs().max())
    print(f"\n== {name}: {n_layers} layers, hidden {text.hidden_size}, {text.num_attention_heads} heads "
          f"({text.num_key_value_heads} kv); batch {batch} x {inputs['input_ids'].shape[1]} tokens "
          f"({n_image} image tokens); {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params ==")
    print(f"max |capture row - eager row| = {diff:.2e}")
    times = interleaved_seconds(fns, switched, repeats)
    peaks = {}
    for mode, fn in fns.items():
        with switched(mode):
            peaks[mode] = peak_bytes(fn)
    t0, m0 = min(times["sdpa"]), peaks["sdpa"]
    print(f"{'mode':<8} {'best ms':>9} {'x sdpa':>7} {'median ms':>10} {'peak MiB':>9} {'x sdpa':>7}")
    result = {"name": name, "layers": n_layers, "hidden": text.hidden_size, "heads": text.num_attention_heads,
              "batch": batch, "tokens": int(inputs["input_ids"].shape[1]), "image_tokens": n_image,
              "max_abs_diff": diff, "modes": {}}
    for mode in fns:
        t, m = min(times[mode]), peaks[mode]
        print(f"{mode:<8} {t * 1e3:>9.1f} {t / t0:>7.2f} {statistics.median(times[mode]) * 1e3:>10.1f} "
              f"{m / 2**20:>9.1f} {m / m0:>7.2f}")
        result["modes"][mode] = {"best_s": t, "median_s": statistics.median(times[mode]), "peak_bytes": m,
                                 "time_x_sdpa": t / t0, "peak_x_sdpa": m / m0 if m0 else float("nan")}
    return result


def add_arguments(p: argparse.ArgumentParser) -> None:
    """This script's options (bench_speed.py reuses them)."""
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--world-batch", type=int, default=16)
    p.add_argument("--batch", type=int, default=2, help="batch of the larger model")
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=0, help="0: same as --heads (LLaVA-1.5 has no GQA)")
    p.add_argument("--image-size", type=int, default=336)
    p.add_argument("--patch-size", type=int, default=14, help="(image-size / patch-size)^2 image tokens")
    p.add_argument("--skip-world", action="store_true")
    p.add_argument("--skip-large", action="store_true")


def run(args: argparse.Namespace) -> list[dict]:
    """Both comparisons (unless skipped), printed as they finish; returns their results."""
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s); "
          f"time = best of {args.repeats} (round-robin); "
          "peak = live CPU tensor bytes from torch.profiler allocation events")
    results = []
    if not args.skip_world:
        model, processor, size = world_model()
        results.append(bench("embedded world LLaVA", model, processor, size, args.world_batch, args.repeats))
    if not args.skip_large:
        model, processor, size = llava_shaped(args)
        results.append(bench("LLaVA-shaped", model, processor, size, args.batch, args.repeats))
    return results


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(p)
    run(p.parse_args(argv))


if __name__ == "__main__":
    main()
