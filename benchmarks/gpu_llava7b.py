"""Throughput of poisonguard's attention capture on a LLaVA-1.5-7B-shaped model (random weights, bf16, GPU).

The model has LLaVA-1.5-7B's shapes -- CLIP ViT-L/14 at 336 px (24 layers, 577 tokens), the 2-layer GELU
projector, a Llama-2-7B LM (32 layers, hidden 4096, 32 heads, MLP 11008, vocab 32064) -- with random weights:
no download, and throughput does not depend on the values. A batch of prompts (BOS, a system prompt, 576 image
tokens, a question, the assistant prefix; `--text-tokens` non-image tokens) goes through the same capture path
as `poisonguard screen`: the LM switched to the capture attention (SDPA + the decision row on the side), one
prefill forward with `logits_to_keep=1`, the rows reduced to system / image / text shares. A plain SDPA forward
is timed too, so the capture's overhead is visible.

Reported: samples/s (capture and plain), the capture overhead, peak GPU memory, and model FLOPs per sample
(analytic, stated below) over time as a fraction of the GPU's dense bf16 peak. Peaks used: H100 SXM / H200
989.4 TFLOPS, H100 PCIe 756 TFLOPS (NVIDIA datasheets, dense, without sparsity); any other GPU needs
`--peak-tflops`. Without CUDA it prints "no GPU: skipped" and exits 0 (`--allow-cpu --tiny` runs tiny shapes
on the CPU to check the script itself).

    python benchmarks/gpu_llava7b.py                        # batch 8, 10 timed forwards after 2 warm-ups
    python benchmarks/gpu_llava7b.py --batch 16 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PEAKS_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.4), ("H200", 989.4))  # first match on the device name wins


@dataclass(frozen=True)
class Shapes:
    """LLaVA-1.5-7B by default."""

    vision_layers: int = 24
    vision_hidden: int = 1024
    vision_mlp: int = 4096
    vision_heads: int = 16
    image_size: int = 336
    patch: int = 14
    layers: int = 32
    hidden: int = 4096
    mlp: int = 11008
    heads: int = 32
    vocab: int = 32064

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch) ** 2


TINY = Shapes(vision_layers=2, vision_hidden=32, vision_mlp=64, vision_heads=2, image_size=56, layers=2, hidden=64,
              mlp=128, heads=4, vocab=32064)


def vision_attention_flops(s: Shapes) -> float:
    """The vision tower's share of `model_flops`' vision term spent in attention (4·T²·d per layer)."""
    return float(s.vision_layers * 4 * (s.image_tokens + 1) ** 2 * s.vision_hidden)


def model_flops(s: Shapes, n_tokens: int) -> dict[str, float]:
    """Forward FLOPs of one sample (a multiply-add = 2 FLOPs), by part.

    vision: patch conv + per layer 8·d²·T (q, k, v, o) + 4·d·m·T (MLP) + 4·T²·d (scores and weighted sum),
    T = image tokens + 1 (CLS), every layer run; projector: 2·(d_v·h + h·h) per image token; LM linear:
    per layer 8·h²·N + 6·h·m·N (gated MLP); LM attention: 2·N²·h per layer, the causal half of the square
    (the useful work, the usual convention for model-FLOPs utilisation); LM head: 2·h·V for the one kept token.
    """
    t = s.image_tokens + 1
    dv, h = s.vision_hidden, s.hidden
    vision = 2 * 3 * s.patch**2 * dv * s.image_tokens + s.vision_layers * (8 * dv**2 * t + 4 * dv * s.vision_mlp * t
                                                                           + 4 * t**2 * dv)
    return {"vision": float(vision),
            "projector": float(2 * (dv * h + h * h) * s.image_tokens),
            "lm_linear": float(s.layers * (8 * h**2 + 6 * h * s.mlp) * n_tokens),
            "lm_attention_causal": float(s.layers * 2 * n_tokens**2 * h),
            "lm_head": float(2 * h * s.vocab)}


def build_model(s: Shapes, device: str, dtype: torch.dtype, attn: str = "sdpa"):
    """Random-weight LlavaForConditionalGeneration with these shapes, created directly on `device`."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    config = LlavaConfig(
        vision_config=CLIPVisionConfig(image_size=s.image_size, patch_size=s.patch, hidden_size=s.vision_hidden,
                                       intermediate_size=s.vision_mlp, num_hidden_layers=s.vision_layers,
                                       num_attention_heads=s.vision_heads, projection_dim=768),
        text_config=LlamaConfig(vocab_size=s.vocab, hidden_size=s.hidden, intermediate_size=s.mlp,
                                num_hidden_layers=s.layers, num_attention_heads=s.heads,
                                num_key_value_heads=s.heads, max_position_embeddings=4096),
        image_token_id=32000, vision_feature_layer=-2, vision_feature_select_strategy="default",
        projector_hidden_act="gelu", image_seq_length=s.image_tokens)
    config._attn_implementation = attn
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlavaForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def prompts(s: Shapes, batch: int, text_tokens: int, device: str, dtype: torch.dtype, seed: int = 0):
    """(inputs, roles): BOS + system text, the image tokens, question text; roles as poisonguard's spans."""
    from poisonguard.extract.spans import SYS, TXT, VIS

    g = torch.Generator().manual_seed(seed)
    n_sys = max(1, text_tokens // 2)
    n_txt = max(1, text_tokens - n_sys)
    text = torch.randint(3, 32000, (batch, n_sys - 1 + n_txt), generator=g)  # BOS opens the system span
    ids = torch.cat([torch.ones(batch, 1, dtype=torch.long), text[:, : n_sys - 1],
                     torch.full((batch, s.image_tokens), 32000), text[:, n_sys - 1:]], dim=1)
    roles = torch.cat([torch.full((batch, n_sys), SYS), torch.full((batch, s.image_tokens), VIS),
                       torch.full((batch, n_txt), TXT)], dim=1)
    pixels = torch.randn(batch, 3, s.image_size, s.image_size, generator=g)
    inputs = {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
              "pixel_values": pixels.to(device, dtype)}
    return inputs, roles.to(device)


@dataclass
class Result:
    device: str
    batch: int
    tokens: int
    capture_samples_per_s: float
    sdpa_samples_per_s: float
    capture_overhead: float
    tflops_per_sample: float
    achieved_tflops: float
    peak_tflops: float | None
    fraction_of_peak: float | None
    peak_memory_gib: float | None
    flops: dict


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def measure(s: Shapes, *, batch: int, text_tokens: int, repeats: int, warmup: int, device: str,
            dtype: torch.dtype, peak_tflops: float | None) -> Result:
    from poisonguard.extract.capture import CAPTURE, lm_attention, recording
    from poisonguard.extract.extraction import shares

    model = build_model(s, device, dtype)
    inputs, roles = prompts(s, batch, text_tokens, device, dtype)
    n = inputs["input_ids"].shape[1]

    def sdpa() -> None:
        model(**inputs, use_cache=False, logits_to_keep=1)

    def capture() -> torch.Tensor:
        with recording() as recorder:
            model(**inputs, use_cache=False, logits_to_keep=1)
        return shares(recorder.stacked(s.layers), roles)  # (B, L, H, 3)

    def seconds(fn) -> float:
        for _ in range(warmup):
            fn()
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        _sync(device)
        return (time.perf_counter() - t0) / repeats

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t_sdpa = seconds(sdpa)
    with lm_attention(model, CAPTURE):
        alloc = capture()
        if not torch.allclose(alloc.sum(-1), torch.ones_like(alloc.sum(-1)), atol=1e-2):
            raise RuntimeError("captured shares do not sum to 1: the capture path is broken on this device")
        t_cap = seconds(capture)
    flops = model_flops(s, n)
    per_sample = sum(flops.values())
    achieved = per_sample * batch / t_cap / 1e12
    return Result(device=torch.cuda.get_device_name() if device.startswith("cuda") else device, batch=batch,
                  tokens=n, capture_samples_per_s=batch / t_cap, sdpa_samples_per_s=batch / t_sdpa,
                  capture_overhead=t_cap / t_sdpa, tflops_per_sample=per_sample / 1e12, achieved_tflops=achieved,
                  peak_tflops=peak_tflops, fraction_of_peak=None if peak_tflops is None else achieved / peak_tflops,
                  peak_memory_gib=torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None,
                  flops=flops)


def peak_for(name: str) -> float | None:
    for key, tflops in PEAKS_TFLOPS:
        if all(part in name for part in key.split()):
            return tflops
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--text-tokens", type=int, default=64, help="non-image tokens per prompt (system + question)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak (default: by device name)")
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    p.add_argument("--allow-cpu", action="store_true", help="run on the CPU when CUDA is absent (use with --tiny)")
    p.add_argument("--tiny", action="store_true", help="tiny shapes: checks the script, measures nothing real")
    args = p.parse_args(argv)
    if not torch.cuda.is_available() and not args.allow_cpu:
        print("no GPU: skipped (CUDA is not available; this benchmark needs an NVIDIA GPU with bf16)")
        return 0
    device = "cuda" if torch.cuda.is_available() else "cpu"
    shapes = TINY if args.tiny else Shapes()
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    peak = args.peak_tflops or (peak_for(name) if device == "cuda" else None)
    print(f"{'tiny' if args.tiny else 'LLaVA-1.5-7B'}-shaped model, random weights, bf16 on {name}; batch "
          f"{args.batch} x ({shapes.image_tokens} image + {args.text_tokens} text tokens)")
    r = measure(shapes, batch=args.batch, text_tokens=args.text_tokens, repeats=args.repeats, warmup=args.warmup,
                device=device, dtype=torch.bfloat16, peak_tflops=peak)
    print(f"capture path : {r.capture_samples_per_s:8.2f} samples/s")
    print(f"plain SDPA   : {r.sdpa_samples_per_s:8.2f} samples/s  (capture time / SDPA time {r.capture_overhead:.3f})")
    print(f"model FLOPs  : {r.tflops_per_sample:.4g} TFLOP per sample ("
          + ", ".join(f"{k} {v / 1e12:.4g}" for k, v in r.flops.items()) + ")")
    if r.fraction_of_peak is not None:
        print(f"achieved     : {r.achieved_tflops:.1f} TFLOPS = {r.fraction_of_peak:.1%} of the {r.peak_tflops:g} "
              f"TFLOPS dense bf16 peak used for {name}")
    else:
        print(f"achieved     : {r.achieved_tflops:.4g} TFLOPS (no peak known for {name}: pass --peak-tflops)")
    if r.peak_memory_gib is not None:
        print(f"peak memory  : {r.peak_memory_gib:.1f} GiB")
    if args.json:
        args.json.write_text(json.dumps(asdict(r), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
