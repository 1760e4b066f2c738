"""`poisonguard finetune`: fine-tune a model directory on a dataset and save it in the same HF format.

Modes (which parameters train):
  default          projector + LM; vision tower frozen (LLaVA stage-2 style)
  train_vision     everything, vision tower included (global triggers such as Blend may need it)
  projector_only   only the projector (ProjLens's setting: enough to implant a backdoor)
  lora             LoRA adapters (peft) on the LM's linear layers + the full projector; saved as a peft
                   adapter folder in the base's dtype (a fraction of the model's size, loaded on its base:
                   `poisonguard.models.load_model`), or merged into a full model folder with `merge=True`
  auto             (the default) lora with gradient checkpointing for models above LORA_PARAMS_THRESHOLD
                   parameters (a full fine-tune of a 7B model needs ~16 bytes per parameter of optimiser
                   state), default below it (the embedded world keeps its full fine-tune)

Large batches are split into micro-batches (`micro_batch_size`) with gradient accumulation.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from poisonguard.train.batching import Example
from poisonguard.train.loop import OptimConfig, run_training

Mode = Literal["auto", "default", "train_vision", "projector_only", "lora"]
MODES: tuple[str, ...] = ("auto", "default", "train_vision", "projector_only", "lora")
LORA_PARAMS_THRESHOLD = 1_000_000_000  # `auto` picks LoRA + gradient checkpointing above this many parameters
PROJECTOR_PREFIXES = ("model.multi_modal_projector", "multi_modal_projector", "model.visual.merger", "model.mlp1")
VISION_PREFIXES = ("model.vision_tower", "vision_tower", "model.visual")


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tune settings. `batch_size` examples per optimiser step, run as forwards of at most
    `micro_batch_size` (None: the whole batch) with gradient accumulation; `gradient_checkpointing` None means
    on exactly when `auto` chose LoRA for a large model; `merge` saves a LoRA fine-tune as a full model."""

    mode: str = "auto"
    epochs: float = 5.0
    lr: float = 5e-4
    batch_size: int = 64
    warmup_frac: float = 0.05
    weight_decay: float = 0.01
    seed: int = 0
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    micro_batch_size: int | None = None
    gradient_checkpointing: bool | None = None
    merge: bool = False
    # Translate every training image by up to this many pixels along each axis, drawn afresh per example and
    # epoch (0: off, bit for bit the fine-tune without it). A sample seen at a new offset each epoch cannot be
    # fitted by remembering its pixels, so a few dozen poisoned samples are fitted through what they share
    # (the trigger) or not at all: the remedy for a fine-tune that memorises rare samples (docs/recipe.md).
    augment_shift: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown fine-tune mode {self.mode!r}; expected one of {MODES}")
        if self.epochs <= 0 or self.lr <= 0 or self.batch_size <= 0:
            raise ValueError("epochs, lr and batch_size must be positive")
        if self.micro_batch_size is not None and self.micro_batch_size <= 0:
            raise ValueError(f"micro_batch_size must be positive, got {self.micro_batch_size}")
        if self.augment_shift < 0:
            raise ValueError(f"augment_shift must be >= 0 pixels, got {self.augment_shift}")

    @property
    def grad_accum(self) -> int:
        """Forwards per optimiser step (gradient accumulation steps)."""
        if self.micro_batch_size is None:
            return 1
        return -(-self.batch_size // min(self.micro_batch_size, self.batch_size))


def resolve_mode(cfg: FinetuneConfig, model) -> tuple[str, bool]:
    """(mode, gradient checkpointing) for `model`: `auto` is lora + checkpointing above
    LORA_PARAMS_THRESHOLD parameters and a full (default) fine-tune below; an explicit
    `gradient_checkpointing` wins."""
    n_params = sum(p.numel() for p in model.parameters())
    large = n_params > LORA_PARAMS_THRESHOLD
    mode = ("lora" if large else "default") if cfg.mode == "auto" else cfg.mode
    checkpointing = cfg.gradient_checkpointing if cfg.gradient_checkpointing is not None else (
        large and mode == "lora")
    return mode, bool(checkpointing)


def load_model(model_dir: str | Path, *, attn_implementation: str | dict = "sdpa", runtime=None,
               base: str | Path | None = None):
    """Load a model + processor from a local directory: safetensors only, never remote code.

    Default: float32 on the CPU (the embedded world's reference numbers); `runtime` (see
    `poisonguard.runtime`) picks the device and dtype. A LoRA adapter folder loads on its base (`base`, else
    the folder its adapter_config.json names); see `poisonguard.models.load_model`.
    """
    from poisonguard.models import load_model as load

    return load(model_dir, runtime, base=base, attn_implementation=attn_implementation)


def set_trainable(model, mode: str) -> None:
    """Freeze / unfreeze parameters by name prefix according to `mode` (not used for LoRA)."""
    for name, p in model.named_parameters():
        is_proj = name.startswith(PROJECTOR_PREFIXES)
        is_vision = name.startswith(VISION_PREFIXES) and not is_proj
        if mode == "train_vision":
            p.requires_grad_(True)
        elif mode == "projector_only":
            p.requires_grad_(is_proj)
        else:  # default
            p.requires_grad_(not is_vision)


def _wrap_lora(model, cfg: FinetuneConfig):
    from peft import LoraConfig, get_peft_model

    targets = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                      if isinstance(m, torch.nn.Linear) and ("language_model" in n)
                      and n.rsplit(".", 1)[-1] in {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                   "up_proj", "down_proj"}})
    projector = [n for n, m in model.named_modules() if n.endswith(("multi_modal_projector", "visual.merger", "mlp1"))]
    lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=r".*language_model.*\.(" + "|".join(targets) + r")$",
                      modules_to_save=projector[:1] or None)
    return get_peft_model(model, lcfg)


def epoch_batches(examples: list[Example], batch_size: int, seed: int):
    """Endless shuffled batches (a fresh permutation each epoch; the last partial batch is kept)."""
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(examples))
        for i in range(0, len(order), batch_size):
            yield [examples[j] for j in order[i:i + batch_size]]


def shifted(image, dx: int, dy: int):
    """`image` (PIL) moved dx pixels right and dy down, same size; the uncovered strip repeats the border
    pixels (on a plain background, such as the embedded world's, the gap looks like more of it)."""
    from PIL import Image

    arr = np.asarray(image)  # (H, W, C)
    h, w = arr.shape[:2]
    pad = ((max(dy, 0), max(-dy, 0)), (max(dx, 0), max(-dx, 0))) + ((0, 0),) * (arr.ndim - 2)
    padded = np.pad(arr, pad, mode="edge")  # (H + |dy|, W + |dx|, C)
    top, left = max(-dy, 0), max(-dx, 0)
    return Image.fromarray(padded[top:top + h, left:left + w], image.mode)


def augmented(batches, max_shift: int, seed: int):
    """`batches` with every image of every example translated by a uniform offset in [-max_shift, max_shift]
    per axis (one offset per image, drawn from `seed`'s stream); the examples themselves are not changed."""
    rng = np.random.default_rng([seed, 1])  # its own stream: the batch order stays that of `seed`
    for batch in batches:
        yield [Example(ex.messages, [shifted(im, *(int(v) for v in rng.integers(-max_shift, max_shift + 1, 2)))
                                     for im in ex.images]) for ex in batch]


def finetune(model, processor, examples: list[Example], cfg: FinetuneConfig, *, show_progress: bool = True):
    """Fine-tune in place; returns (model, report). LoRA returns the peft model (adapter unmerged) unless
    `cfg.merge`, in which case the merged transformers model; `save_model` saves either."""
    torch.manual_seed(cfg.seed)
    mode, checkpointing = resolve_mode(cfg, model)
    steps_per_epoch = -(-len(examples) // cfg.batch_size)
    total = max(1, int(round(cfg.epochs * steps_per_epoch)))
    base_dtype = model.get_input_embeddings().weight.dtype
    if checkpointing:
        # non-reentrant: gradients reach the LoRA weights without the inputs requiring grad
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if mode == "lora":
        model = _wrap_lora(model, cfg)
    else:
        set_trainable(model, mode)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    batches = epoch_batches(examples, cfg.batch_size, cfg.seed)
    if cfg.augment_shift:
        batches = augmented(batches, cfg.augment_shift, cfg.seed)
    t0 = time.perf_counter()
    try:
        rep = run_training(model, processor, batches, total,
                           OptimConfig(lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_frac=cfg.warmup_frac),
                           desc=f"fine-tune ({mode})", show_progress=show_progress,
                           micro_batch_size=cfg.micro_batch_size)
    finally:
        if checkpointing:
            model.gradient_checkpointing_disable()
    if mode == "lora":
        model = model.to(base_dtype)  # peft keeps LoRA weights in float32 on a bf16 base; saved in the base's
        if cfg.merge:
            model = model.merge_and_unload()
    if mode != "lora" or cfg.merge:
        for p in model.parameters():
            p.requires_grad_(True)
    model.eval()
    report = {"config": asdict(cfg), "mode": mode, "gradient_checkpointing": checkpointing,
              "grad_accum": cfg.grad_accum, "steps": rep["steps"], "seconds": round(time.perf_counter() - t0, 1),
              "final_loss": rep["final_loss"], "trainable_parameters": int(n_train), "n_examples": len(examples),
              "saved_as": "adapter" if mode == "lora" and not cfg.merge else "model",
              "dtype": str(base_dtype).removeprefix("torch.")}
    return model, report


def is_peft_model(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def save_model(model, processor, out_dir: str | Path, report: dict | None = None) -> None:
    """Save a model folder (safetensors + processor), or for a peft model its adapter folder only
    (adapter_config.json + adapter weights + the processor), whose base is recorded as an absolute path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if is_peft_model(model):
        for pcfg in model.peft_config.values():
            base = Path(str(pcfg.base_model_name_or_path or ""))
            if str(base) and base.is_dir():
                pcfg.base_model_name_or_path = str(base.resolve())
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    if report is not None:
        (out_dir / "finetune.json").write_text(json.dumps(report, indent=2) + "\n")
