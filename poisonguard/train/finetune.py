"""`poisonguard finetune`: fine-tune a model directory on a dataset and save it in the same HF format.

Modes (which parameters train):
  default          projector + LM; vision tower frozen (LLaVA stage-2 style)
  train_vision     everything, vision tower included (global triggers such as Blend may need it)
  projector_only   only the projector (ProjLens's setting: enough to implant a backdoor)
  lora             LoRA adapters (peft) on the LM's linear layers + the full projector; merged on save,
                   so the output loads like any other model directory
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

Mode = Literal["default", "train_vision", "projector_only", "lora"]
MODES: tuple[str, ...] = ("default", "train_vision", "projector_only", "lora")
PROJECTOR_PREFIXES = ("model.multi_modal_projector", "multi_modal_projector", "model.visual.merger", "model.mlp1")
VISION_PREFIXES = ("model.vision_tower", "vision_tower", "model.visual")


@dataclass(frozen=True)
class FinetuneConfig:
    mode: str = "default"
    epochs: float = 5.0
    lr: float = 5e-4
    batch_size: int = 64
    warmup_frac: float = 0.05
    weight_decay: float = 0.01
    seed: int = 0
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown fine-tune mode {self.mode!r}; expected one of {MODES}")
        if self.epochs <= 0 or self.lr <= 0 or self.batch_size <= 0:
            raise ValueError("epochs, lr and batch_size must be positive")


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


def finetune(model, processor, examples: list[Example], cfg: FinetuneConfig, *, show_progress: bool = True):
    """Fine-tune in place (LoRA: returns the merged model). Returns (model, report)."""
    torch.manual_seed(cfg.seed)
    steps_per_epoch = -(-len(examples) // cfg.batch_size)
    total = max(1, int(round(cfg.epochs * steps_per_epoch)))
    if cfg.mode == "lora":
        model = _wrap_lora(model, cfg)
    else:
        set_trainable(model, cfg.mode)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    t0 = time.perf_counter()
    rep = run_training(model, processor, epoch_batches(examples, cfg.batch_size, cfg.seed), total,
                       OptimConfig(lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_frac=cfg.warmup_frac),
                       desc=f"fine-tune ({cfg.mode})", show_progress=show_progress)
    if cfg.mode == "lora":
        model = model.merge_and_unload()
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    report = {"config": asdict(cfg), "steps": rep["steps"], "seconds": round(time.perf_counter() - t0, 1),
              "final_loss": rep["final_loss"], "trainable_parameters": int(n_train), "n_examples": len(examples)}
    return model, report


def save_model(model, processor, out_dir: str | Path, report: dict | None = None) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    if report is not None:
        (out_dir / "finetune.json").write_text(json.dumps(report, indent=2) + "\n")
