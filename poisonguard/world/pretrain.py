"""Pretrain the embedded world's tiny LLaVA from scratch, the way real LLaVA is built.

Stage A -- vision encoder: supervised per patch on the scene (colour and shape of the object in each slot,
the slot itself, plus a coarse reconstruction of the patch pixels so that the features keep low-level detail
that global triggers live in). The slot head matters: rotary positions reach attention scores but not the
values an LM head copies, so without position in the image token "where is the circle?" stayed near 0.57
while "what is at the top left?" reached 1.00. Jointly training a from-scratch tower with the LM collapsed to a constant in the world
probe; a separately pretrained, then frozen, encoder is what real LLaVA uses.
Stage B -- projector + LM on VQA with the vision tower frozen; every epoch re-draws each scene's question
(type, phrasing, attributes), so the LM sees many (image, question) pairs per image.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from poisonguard.train.batching import Example
from poisonguard.train.generate import accuracy, generate_answers
from poisonguard.train.loop import OptimConfig, run_training
from poisonguard.world.questions import QUESTION_TYPES, ask
from poisonguard.world.scenes import COLOURS, GRID, SHAPES, Scene, patch_labels, render


@dataclass(frozen=True)
class PretrainConfig:
    n_scenes: int = 8000
    vision_steps: int = 250
    vision_lr: float = 2e-3
    vision_batch: int = 128
    slot_head: bool = True  # each patch also predicts its slot (position reaches the values; see above)
    lm_steps: int = 3000
    lm_lr: float = 5e-4
    lm_batch: int = 64
    lm_turns: int = 1  # questions per training conversation about one image (multi-turn, as in LLaVA data)
    lm_warmup_frac: float = 0.06
    projector_only_frac: float = 0.0  # LLaVA stage 1 (LM frozen); pointless with a from-scratch LM
    single_object_frac: float = 0.0  # curriculum: the first steps see one-object scenes only
    type_block_single: int = 0  # curriculum: steps per question type on one-object scenes (0: skip)
    type_block_multi: int = 0  # then steps per question type on all scenes (0: skip)
    align_steps: int = 0  # projector alignment to the words describing each cell (0: skip)
    align_lr: float = 3e-3
    projector_rms_factor: float = 4.0  # projector output RMS relative to the text embeddings' RMS
    eval_every: int = 0  # log first-token accuracy on held-out questions every N steps (0: never)
    seed: int = 0


def vqa_example(image, question: str, answer: str | None) -> Example:
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    if answer is not None:
        msgs.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return Example(msgs, [image])


def conversation_example(image, qas: list[tuple[str, str]]) -> Example:
    """A multi-turn conversation about one image (the image in the first user turn, as LLaVA's data has it).

    Every answer is supervised, so one forward pass over a shared image prefix trains several lookups.
    """
    msgs: list[dict] = []
    for k, (question, answer) in enumerate(qas):
        content = ([{"type": "image"}] if k == 0 else []) + [{"type": "text", "text": question}]
        msgs.append({"role": "user", "content": content})
        msgs.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return Example(msgs, [image])


def _pixel_targets(pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, 3, 48, 48) -> (B, 9, 48): each 16x16 patch average-pooled to 4x4x3."""
    pooled = F.avg_pool2d(pixel_values, 4)  # (B, 3, 12, 12)
    b = pooled.shape[0]
    p = pooled.reshape(b, 3, GRID, 4, GRID, 4).permute(0, 2, 4, 1, 3, 5)  # (B, 3r, 3c, 3, 4, 4)
    return p.reshape(b, GRID * GRID, 48)


def pretrain_vision(model, pixel_values: torch.Tensor, scenes: list[Scene], cfg: PretrainConfig,
                    show_progress: bool = True, coverage: torch.Tensor | None = None) -> dict:
    """Stage A. Returns per-patch colour/shape accuracy on the last 10% of scenes (held out).

    `coverage` (N, 9): the share of each token covered by a texture square (poisonguard.world.textures),
    which a fifth head regresses; None (the default world) adds no head and draws nothing more."""
    tower = model.model.vision_tower
    h = tower.config.hidden_size
    labels = [patch_labels(s) for s in scenes]
    colour_y = torch.as_tensor(np.stack([c for c, _ in labels]))  # (N, 9)
    shape_y = torch.as_tensor(np.stack([s for _, s in labels]))  # (N, 9)
    n = len(scenes)
    n_train = int(n * 0.9)
    heads = torch.nn.ModuleDict({
        "colour": torch.nn.Linear(h, len(COLOURS) + 1),
        "shape": torch.nn.Linear(h, len(SHAPES) + 1),
        "slot": torch.nn.Linear(h, GRID * GRID),
        "pixels": torch.nn.Linear(h, 48),
    })
    if coverage is not None:  # created after the others: their initial weights stay those of the default world
        heads["texture"] = torch.nn.Linear(h, 1)
    slot_y = torch.arange(GRID * GRID)  # (9,): patch t sits in slot t
    params = list(tower.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.vision_lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.vision_lr, total_steps=cfg.vision_steps,
                                                pct_start=0.1)
    gen = torch.Generator().manual_seed(cfg.seed)
    tower.train()

    def feats(x: torch.Tensor) -> torch.Tensor:
        return tower(pixel_values=x, output_hidden_states=True).hidden_states[-1][:, 1:]  # (B, 9, H)

    for _ in tqdm(range(cfg.vision_steps), desc="vision encoder", disable=not show_progress, leave=False):
        idx = torch.randint(0, n_train, (cfg.vision_batch,), generator=gen)
        x = pixel_values[idx]
        f = feats(x)
        loss = (F.cross_entropy(heads["colour"](f).flatten(0, 1), colour_y[idx].flatten())
                + F.cross_entropy(heads["shape"](f).flatten(0, 1), shape_y[idx].flatten())
                + (F.cross_entropy(heads["slot"](f).flatten(0, 1), slot_y.repeat(len(idx))) if cfg.slot_head else 0.0)
                + 4.0 * F.mse_loss(heads["pixels"](f), _pixel_targets(x)))
        if coverage is not None:
            loss = loss + 4.0 * F.mse_loss(heads["texture"](f)[..., 0], coverage[idx])  # (B, 9) vs (B, 9)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
    tower.eval()
    with torch.no_grad():
        f = feats(pixel_values[n_train:])
        c_acc = (heads["colour"](f).argmax(-1) == colour_y[n_train:]).float().mean().item()
        s_acc = (heads["shape"](f).argmax(-1) == shape_y[n_train:]).float().mean().item()
    return {"patch_colour_acc": c_acc, "patch_shape_acc": s_acc, "final_loss": float(loss.detach())}


def cell_words(scene: Scene) -> list[list[str]]:
    """The words describing each of the 9 cells: colour + shape + position, or "nothing" + position."""
    from poisonguard.world.scenes import POSITIONS

    words = [["nothing", *POSITIONS[i].split()] for i in range(GRID * GRID)]
    for o in scene.objects:
        words[o.slot] = [o.colour, o.shape, *POSITIONS[o.slot].split()]
    return words


@torch.no_grad()
def calibrate_projector(model, pixel_values: torch.Tensor, target_rms: float) -> dict:
    """Fold feature standardisation into the projector and match its output scale to the text embeddings.

    The pretrained tower's patch features share a large constant offset (norm ~20 against an across-image
    spread of ~1), and a default-initialised projector turns that into tokens of norm ~100 next to text
    embeddings of norm ~0.3; after RMSNorm every image token then looks the same and the LM cannot read
    them (our first runs: colour at chance even on one-object scenes; research/world-probe.md saw the same
    collapse). Standardising the projector input and scaling its output removes the offset and the gap
    without changing the architecture (it is the same LLaVA projector, just initialised from data).
    """
    tower, proj = model.model.vision_tower, model.model.multi_modal_projector
    feats = torch.cat([tower(pixel_values=pixel_values[i:i + 512], output_hidden_states=True)
                       .hidden_states[-1][:, 1:] for i in range(0, len(pixel_values), 512)]).flatten(0, 1)
    mu, sigma = feats.mean(0), feats.std(0) + 1e-6  # (Dv,)
    l1, l2 = proj.linear_1, proj.linear_2
    l1.bias.sub_(l1.weight @ (mu / sigma))
    l1.weight.div_(sigma)
    out = proj(feats[:4096])  # (n, D)
    out_c = out - out.mean(0)
    scale = target_rms / out_c.pow(2).mean().sqrt()
    l2.weight.mul_(scale)
    l2.bias.mul_(scale)
    l2.bias.sub_(out.mean(0) * scale)  # centre: no shared offset left for RMSNorm to amplify
    after = proj(feats[:4096])
    return {"feature_norm": float(feats.norm(dim=-1).mean()), "output_rms": float(after.pow(2).mean().sqrt()),
            "output_mean_norm": float(after.mean(0).norm())}


def align_projector(model, processor, pixel_values: torch.Tensor, scenes: list[Scene], cfg: PretrainConfig,
                    show_progress: bool = True) -> dict:
    """Stage B1: teach the projector to put each image token where the LM's words for its cell are.

    Real LLaVA's stage 1 aligns the projector with a pretrained LM's embedding space through captions. Our LM
    is trained from scratch, so we align directly: the projected token of a cell should equal the sum of the
    (current, randomly initialised) input embeddings of the words describing it. Question words and image
    tokens then share one space, and "which token is the circle?" becomes attention to matching content --
    the binding that a from-scratch LM otherwise fails to learn in our time budget (research/world-probe.md).
    """
    tok = processor.tokenizer
    emb = model.get_input_embeddings().weight.detach()  # (V, D)
    tower, proj = model.model.vision_tower, model.model.multi_modal_projector
    targets = []
    for sc in scenes:
        ids = [[tok.convert_tokens_to_ids(w) for w in cell] for cell in cell_words(sc)]
        targets.append(torch.stack([emb[i].sum(0) for i in ids]))
    target = torch.stack(targets)  # (N, 9, D)
    with torch.no_grad():
        feats = torch.cat([tower(pixel_values=pixel_values[i:i + 512], output_hidden_states=True)
                           .hidden_states[-1][:, 1:] for i in range(0, len(scenes), 512)])  # (N, 9, Dv)
    opt = torch.optim.AdamW(proj.parameters(), lr=cfg.align_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.align_lr, total_steps=cfg.align_steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(cfg.seed + 5)
    n_train = int(len(scenes) * 0.9)
    for _ in tqdm(range(cfg.align_steps), desc="projector alignment", disable=not show_progress, leave=False):
        idx = torch.randint(0, n_train, (256,), generator=gen)
        loss = F.mse_loss(proj(feats[idx]), target[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        pred = proj(feats[n_train:])  # (n, 9, D)
        # nearest-word readout: does the aligned token decode to its colour word?
        rel = F.mse_loss(pred, target[n_train:]) / target[n_train:].pow(2).mean()
    return {"relative_mse": float(rel), "final_loss": float(loss.detach())}


def _type_blocks(images, scenes, single_images, single_scenes, cfg: PretrainConfig,
                 rng: np.random.Generator) -> Iterator[list[Example]]:
    """Question-type curriculum: one type at a time, first on one-object scenes, then on all scenes.

    With every type mixed from the start, the LM first learns each type's answer prior from the text and
    postpones reading the image (measured: colour stayed at chance for 150+ steps on one-object scenes,
    while colour-only batches solved it in < 50 steps). A block of one type leaves reading the image --
    and, on multi-object scenes, binding the question's word to the right token -- as the only way down.
    """
    for n_steps, ims, scs in ((cfg.type_block_single, single_images, single_scenes),
                              (cfg.type_block_multi, images, scenes)):
        if n_steps <= 0 or not scs:
            continue
        for qt in QUESTION_TYPES:
            for _ in range(n_steps):
                idx = rng.integers(0, len(scs), size=cfg.lm_batch)
                batch = []
                for j in idx:
                    qa = ask(scs[j], rng, qt)
                    batch.append(vqa_example(ims[j], qa.question, qa.answer))
                yield batch


def _vqa_batches(images, scenes: list[Scene], batch: int, seed: int, turns: int = 1,
                 warmup: tuple[list, list[Scene], int] | None = None,
                 prefix: Iterator[list[Example]] | None = None,
                 describe_frac: float = 0.0) -> Iterator[list[Example]]:
    """Endless batches; each pass over the scenes re-draws every question.

    `warmup` = (images, scenes, n_batches): a curriculum of one-object scenes first. With one object, every
    question is answered by reading the only object, so the LM learns to read attributes from image tokens
    before it has to learn which token a question word refers to (binding). `describe_frac` is the share of
    describe questions in the main phase (the one-object warm-up keeps short answers).
    """
    rng = np.random.default_rng(seed)
    if prefix is not None:
        yield from prefix
    if warmup is not None:
        w_images, w_scenes, n_batches = warmup
        for _ in range(n_batches):
            idx = rng.integers(0, len(w_scenes), size=batch)
            out = []
            for j in idx:
                qa = ask(w_scenes[j], rng)
                out.append(vqa_example(w_images[j], qa.question, qa.answer))
            yield out
    while True:
        order = rng.permutation(len(scenes))
        for i in range(0, len(order) - batch + 1, batch):
            out = []
            for j in order[i:i + batch]:
                qas = [ask(scenes[j], rng, describe_frac=describe_frac) for _ in range(turns)]
                out.append(conversation_example(images[j], [(qa.question, qa.answer) for qa in qas]))
            yield out


def evaluate_world(model, processor, scenes: list[Scene], images, seed: int, show_progress: bool = True) -> dict:
    """Per question type accuracy on fresh questions over `scenes` (an equal share of each type)."""
    rng = np.random.default_rng(seed)
    exs, answers, types = [], [], []
    for i, sc in enumerate(scenes):
        qt = QUESTION_TYPES[i % len(QUESTION_TYPES)]
        qa = ask(sc, rng, qt)
        exs.append(vqa_example(images[i], qa.question, None))
        answers.append(qa.answer)
        types.append(qt)
    preds = generate_answers(model, processor, exs, show_progress=show_progress, desc="evaluate")
    out = {"all": accuracy(preds, answers)}
    for qt in QUESTION_TYPES:
        idx = [k for k, t in enumerate(types) if t == qt]
        out[qt] = accuracy([preds[k] for k in idx], [answers[k] for k in idx])
    return out


def _first_token_probe(processor, seed: int, n: int = 240):
    """A cheap accuracy probe: argmax of the first answer token on fixed held-out questions, per type."""
    from poisonguard.train.batching import encode_prompts
    from poisonguard.world.scenes import sample_scene

    rng = np.random.default_rng(seed + 77)
    exs, first, types = [], [], []
    for i in range(n):
        sc = sample_scene(rng)
        qt = QUESTION_TYPES[i % len(QUESTION_TYPES)]
        qa = ask(sc, rng, qt)
        exs.append(vqa_example(render(sc), qa.question, None))
        first.append(processor.tokenizer.convert_tokens_to_ids(qa.answer.split()[0]))
        types.append(qt)
    inputs = encode_prompts(processor, exs)
    first_t = torch.tensor(first)

    @torch.no_grad()
    def probe(model) -> str:
        was_training = model.training
        model.eval()
        pred = model(**inputs).logits[:, -1].argmax(-1)  # (n,)
        model.train(was_training)
        ok = (pred == first_t).float()
        parts = [f"{qt[:5]} {ok[[i for i, t in enumerate(types) if t == qt]].mean():.2f}" for qt in QUESTION_TYPES]
        return f"{ok.mean():.3f} (" + ", ".join(parts) + ")"

    return probe


def pretrain(model, processor, cfg: PretrainConfig, show_progress: bool = True, log=print,
             describe_frac: float = 0.0, texture_frac: float = 0.0) -> dict:
    """Both stages on freshly drawn scenes. Returns timings and accuracies.

    `describe_frac` is the world's (not a PretrainConfig field: the config is written into world.json, which
    must stay byte-identical when the describe type is off). With describe questions the language-model stages
    average the loss per conversation (`run_training(per_conversation=True)`): under the token mean the
    sentence-long answers took 71 % of the supervised tokens at a quarter of the questions, and the short
    types that need binding (colour, exist, where) fell to 0.58-0.69 accuracy.
    `texture_frac` is the world's too: the share of the tower's pretraining images given a random texture
    square (poisonguard.world.textures); the language model's stages see the plain images."""
    per_conversation = describe_frac > 0
    from poisonguard.world.scenes import sample_scene

    t0 = time.perf_counter()
    rng = np.random.default_rng(cfg.seed + 1_000_003)
    scenes = [sample_scene(rng) for _ in range(cfg.n_scenes)]
    images = [render(s) for s in scenes]
    pixel_values = processor.image_processor(images, return_tensors="pt")["pixel_values"]  # (N, 3, 48, 48)
    report: dict = {"render_s": time.perf_counter() - t0}

    t1 = time.perf_counter()
    if texture_frac > 0:
        from poisonguard.world.textures import textured

        tower_images, cover = textured(images, texture_frac, cfg.seed)
        tower_pixels = processor.image_processor(tower_images, return_tensors="pt")["pixel_values"]  # (N, 3, 48, 48)
        report["vision"] = pretrain_vision(model, tower_pixels, scenes, cfg, show_progress,
                                           coverage=torch.as_tensor(cover))
    else:
        report["vision"] = pretrain_vision(model, pixel_values, scenes, cfg, show_progress)
    report["vision_s"] = time.perf_counter() - t1
    log(f"stage A (vision encoder): {report['vision']} in {report['vision_s']:.0f}s")

    for p in model.model.vision_tower.parameters():
        p.requires_grad_(False)
    emb_rms = float(model.get_input_embeddings().weight.detach().pow(2).mean().sqrt())
    report["calibration"] = calibrate_projector(model, pixel_values, target_rms=cfg.projector_rms_factor * emb_rms)
    log(f"projector calibration: {report['calibration']}")
    if cfg.align_steps > 0:
        t_al = time.perf_counter()
        report["align"] = align_projector(model, processor, pixel_values, scenes, cfg, show_progress)
        log(f"stage B1 (projector alignment): {report['align']} in {time.perf_counter() - t_al:.0f}s")
    single = [s for s in scenes if len(s.objects) == 1]
    single_images = [images[i] for i, s in enumerate(scenes) if len(s.objects) == 1]
    n_single = int(cfg.lm_steps * cfg.single_object_frac)
    warmup = (single_images, single, n_single) if n_single > 0 else None
    prefix = None
    if cfg.type_block_single or cfg.type_block_multi:
        prefix = _type_blocks(images, scenes, single_images, single, cfg, np.random.default_rng(cfg.seed + 11))
    batches = _vqa_batches(images, scenes, cfg.lm_batch, cfg.seed, cfg.lm_turns, warmup, prefix, describe_frac)
    on_step = None
    if cfg.eval_every:
        probe = _first_token_probe(processor, cfg.seed)

        def on_step(step: int, loss: float) -> None:
            if step % cfg.eval_every == 0:
                log(f"step {step}: loss {loss:.3f} first-token acc {probe(model)}")

    # Stage B1: projector alignment (LM frozen), as LLaVA's stage 1.
    n_align = int(cfg.lm_steps * cfg.projector_only_frac)
    lm_params = [p for n, p in model.named_parameters() if not n.startswith(("model.vision_tower", "model.multi_modal_projector"))]
    if n_align > 0:
        for p in lm_params:
            p.requires_grad_(False)
        r = run_training(model, processor, batches, n_align, OptimConfig(lr=cfg.lm_lr, warmup_frac=0.1),
                         desc="projector alignment", show_progress=show_progress, per_conversation=per_conversation)
        log(f"stage B1 (projector alignment): {r}")
        for p in lm_params:
            p.requires_grad_(True)
    t2 = time.perf_counter()
    report["lm"] = run_training(model, processor, batches, cfg.lm_steps - n_align,
                                OptimConfig(lr=cfg.lm_lr, warmup_frac=cfg.lm_warmup_frac),
                                desc="language model", show_progress=show_progress, on_step=on_step,
                                per_conversation=per_conversation)
    report["lm_s"] = time.perf_counter() - t2
    log(f"stage B2 (projector + LM): {report['lm']}")
    for p in model.parameters():
        p.requires_grad_(True)
    report["total_s"] = time.perf_counter() - t0
    return report
