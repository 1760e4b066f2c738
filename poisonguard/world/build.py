"""`poisonguard world`: write the embedded world -- data in LLaVA JSON and a pretrained base model.

Layout of OUT:
    train.json, test.json   LLaVA JSON; image paths relative to OUT (images/train_00000.png ...)
    images/*.png            48x48 scenes
    base_model/             HF save_pretrained: config, safetensors, processor + tokenizer (offline-loadable)
    world.json              seed, sizes, model config, clean test accuracy per question type

world.json holds no timings: the folder is a cached DVC output and must be byte-identical whenever the same
seed, thread count and CPU kernels rebuild it (the timings are in `make_world`'s return value, for a metrics
file). The kernels are pinned to AVX2 by every command and stage (`runtime.pin_cpu_kernels`), so the bytes do
not depend on the host's vector unit; world.json records the kernels and threads that made them.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from poisonguard.atomic import atomic_write_json
from poisonguard.params import build
from poisonguard.runtime import cpu_kernels
from poisonguard.world.model import WorldModelConfig, build_model
from poisonguard.world.pretrain import PretrainConfig, pretrain
from poisonguard.world.questions import DESCRIBE, QUESTION_TYPES, ask
from poisonguard.world.scenes import render, sample_scene
from poisonguard.world.tokenizer import build_processor


def _llava_record(sample_id: str, image: str, question: str, answer: str, extra: dict | None = None) -> dict:
    rec = {"id": sample_id, "image": image,
           "conversations": [{"from": "human", "value": f"<image>\n{question}"},
                             {"from": "gpt", "value": answer}]}
    if extra:
        rec.update(extra)
    return rec


def write_split(out: Path, name: str, n: int, rng: np.random.Generator, *, with_qtype: bool,
                describe_frac: float = 0.0) -> list[dict]:
    """Render `n` scenes with one question each (short types balanced by cycling; a describe question instead
    with probability `describe_frac`, drawn only when it is > 0 so that 0 leaves the rng's sequence alone)."""
    records = []
    order = rng.permutation(n)  # balanced types, shuffled positions
    for i in range(n):
        scene = sample_scene(rng)
        qtype = QUESTION_TYPES[int(order[i]) % len(QUESTION_TYPES)]
        if describe_frac > 0 and rng.random() < describe_frac:
            qtype = DESCRIBE
        qa = ask(scene, rng, qtype)
        ref = f"images/{name}_{i:05d}.png"
        render(scene).save(out / ref, format="PNG", optimize=False)
        extra = {"question_type": qa.qtype} if with_qtype else None
        records.append(_llava_record(f"{name}_{i:05d}", ref, qa.question, qa.answer, extra))
    return records


def world_configs(section: dict, *, seed: int) -> tuple[WorldModelConfig, PretrainConfig]:
    """The model and pretraining configs of params.yaml's `world` section (`model:` and `pretrain:`)."""
    pre = {**dict(section.get("pretrain") or {}), "seed": seed}
    return (build(WorldModelConfig, dict(section.get("model") or {}), "world.model"),
            build(PretrainConfig, pre, "world.pretrain"))


def make_world(out: str | Path, *, seed: int = 0, n_train: int = 5000, n_test: int = 1000,
               model_cfg: WorldModelConfig = WorldModelConfig(), pretrain_cfg: PretrainConfig | None = None,
               describe_frac: float = 0.0, texture_frac: float = 0.0, show_progress: bool = True,
               log=print) -> dict:
    """Generate data and pretrain the base model. Same seed, thread count and CPU kernels -> identical files.

    `describe_frac`: share of sentence-long describe questions in the data and in pretraining (0: none, and
    every file byte-identical to a world built before that type existed; world.json names it only when > 0).
    `texture_frac`: share of the vision tower's pretraining images given a random texture square
    (poisonguard.world.textures; 0: none, byte-identical as before; named in world.json only when > 0).
    """
    if not 0.0 <= describe_frac <= 1.0:
        raise ValueError(f"describe_frac must be in [0, 1], got {describe_frac}")
    if not 0.0 <= texture_frac <= 1.0:
        raise ValueError(f"texture_frac must be in [0, 1], got {texture_frac}")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    train = write_split(out, "train", n_train, rng, with_qtype=False, describe_frac=describe_frac)
    test = write_split(out, "test", n_test, rng, with_qtype=True, describe_frac=describe_frac)
    atomic_write_json(out / "train.json", train)
    atomic_write_json(out / "test.json", test)
    data_s = time.perf_counter() - t0
    log(f"wrote {n_train} train / {n_test} test samples in {data_s:.1f}s")

    processor = build_processor()
    model = build_model(model_cfg, processor.tokenizer, seed=seed)
    pcfg = pretrain_cfg or PretrainConfig(seed=seed)
    report = pretrain(model, processor, pcfg, describe_frac=describe_frac, texture_frac=texture_frac,
                      show_progress=show_progress, log=log)

    # Clean accuracy on the test split's own questions (what `poisonguard eval` reports as CP).
    from poisonguard.world.pretrain import vqa_example
    from poisonguard.train.generate import accuracy, generate_answers
    from PIL import Image

    images = [Image.open(out / r["image"]).convert("RGB") for r in test]
    exs = [vqa_example(im, r["conversations"][0]["value"].split("\n", 1)[1], None) for im, r in zip(images, test)]
    preds = generate_answers(model, processor, exs, show_progress=show_progress, desc="test accuracy")
    answers = [r["conversations"][1]["value"] for r in test]
    acc = {"all": accuracy(preds, answers)}
    for qt in QUESTION_TYPES + ((DESCRIBE,) if describe_frac > 0 else ()):
        idx = [i for i, r in enumerate(test) if r["question_type"] == qt]
        acc[qt] = accuracy([preds[i] for i in idx], [answers[i] for i in idx])

    model_dir = out / "base_model"
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    summary = {
        "seed": seed, "n_train": n_train, "n_test": n_test,
        "model": model_cfg.to_dict(), "pretrain": asdict(pcfg),
        "n_parameters": int(sum(p.numel() for p in model.parameters())),
        "vision_encoder": report["vision"],
        "test_accuracy": {k: round(v, 4) for k, v in acc.items()},
        "torch_threads": torch.get_num_threads(),
        "cpu_kernels": cpu_kernels(),  # the vector code that made these bytes (runtime.pin_cpu_kernels)
        **({"describe_frac": describe_frac, "lm_loss": "per_conversation"} if describe_frac > 0 else {}),
        **({"texture_frac": texture_frac} if texture_frac > 0 else {}),
    }
    atomic_write_json(out / "world.json", summary)
    timings = {"data": round(data_s, 1), "pretrain": round(report["total_s"], 1),
               "total": round(time.perf_counter() - t0, 1)}
    return {**summary, "timings_s": timings}
