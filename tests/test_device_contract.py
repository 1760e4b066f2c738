"""The device contract: every tensor a model receives is on the model's device, and every floating input is
in the model's dtype, on each path that feeds a model (train, generate, extract, the projector audit).

Two complementary checks on a tiny LLaVA:
- bfloat16 on the CPU, run to the end: a float32 batch handed to a bf16 model, or a `.numpy()` on a bf16
  tensor, fails here as it would on a GPU;
- the model on the `meta` device: an input left on the CPU is caught exactly as one left on the CPU for a
  CUDA model would be. A meta model computes no values, so the hook stops the path at its first forward once
  the inputs are checked (what follows the forward is covered by the bf16 run).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from poisonguard.data.records import Sample, Turn
from tests.fixtures.families import build_tiny
from poisonguard.runtime import model_device_dtype
from poisonguard.train.batching import Example


class Reached(Exception):
    """Raised by the meta-device hook after the inputs of the first forward were checked."""


def _tensors(obj):
    if torch.is_tensor(obj):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def guard(module: torch.nn.Module, device: torch.device, dtype: torch.dtype, *, stop: bool = False):
    """A forward pre-hook asserting the contract on `module`'s inputs; counts its calls in `.calls`."""
    calls = []

    def hook(_module, args, kwargs):
        seen = list(_tensors(args)) + list(_tensors(kwargs))
        assert seen, "the forward received no tensor"
        for t in seen:
            assert t.device.type == device.type, f"input on {t.device}, model on {device}"
            if t.is_floating_point():
                assert t.dtype == dtype, f"floating input in {t.dtype}, model in {dtype}"
        calls.append(len(seen))
        if stop:
            raise Reached

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    handle.calls = calls
    return handle


def _images(n: int) -> dict[str, Image.Image]:
    rng = np.random.default_rng(0)
    return {f"im{i}.png": Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for i in range(n)}


def _samples(n: int) -> list[Sample]:
    turns = [Turn("user", "what colour is it ?"), Turn("assistant", "red")]
    return [Sample(f"s{i}", i, [f"im{i}.png"], turns) for i in range(n)]


def _examples(n: int, images) -> list[Example]:
    from poisonguard.train.examples import to_examples

    return to_examples(_samples(n), images.__getitem__)


@pytest.fixture(scope="module")
def bf16_pair():
    base, processor = build_tiny("llava", seed=0)
    base = base.to(torch.bfloat16)
    ft = copy.deepcopy(base)
    with torch.no_grad():
        ft.model.multi_modal_projector.linear_2.bias.add_(0.5)
    return base, ft, processor


def _vision(model):
    return model.model.vision_tower


# ---------------------------------------------------------------------------------------- bf16, to the end
def test_train_in_bf16(bf16_pair):
    from poisonguard.train.finetune import epoch_batches
    from poisonguard.train.loop import OptimConfig, run_training

    base, _, processor = bf16_pair
    model = copy.deepcopy(base)
    images = _images(4)
    h = guard(model, torch.device("cpu"), torch.bfloat16)
    try:
        rep = run_training(model, processor, epoch_batches(_examples(4, images), 2, 0), 2, OptimConfig(),
                           show_progress=False)
    finally:
        h.remove()
    assert rep["steps"] == 2 and len(h.calls) == 2 and np.isfinite(rep["final_loss"])


def test_generate_in_bf16(bf16_pair):
    from poisonguard.train.generate import generate_answers

    base, _, processor = bf16_pair
    h = guard(base, torch.device("cpu"), torch.bfloat16)
    try:
        out = generate_answers(base, processor, _examples(3, _images(3)), max_new_tokens=2, show_progress=False)
    finally:
        h.remove()
    assert len(out) == 3 and len(h.calls) >= 1


@pytest.mark.parametrize("backend", ["capture", "eager"])
def test_extract_in_bf16(bf16_pair, backend):
    from poisonguard.extract import extract

    base, _, processor = bf16_pair
    h = guard(base, torch.device("cpu"), torch.bfloat16)
    try:
        ex = extract(base, processor, _examples(3, _images(3)), batch_size=2, backend=backend,
                     show_progress=False)
    finally:
        h.remove()
    assert ex.alloc.dtype == np.float32 and ex.meta["dtype"] == "bfloat16" and len(h.calls) == 2
    assert np.allclose(ex.alloc.sum(-1), 1.0, atol=1e-2)


def test_projector_audit_in_bf16(bf16_pair):
    from poisonguard.audit.activations import collect_drift, logit_lens, shared_direction
    from poisonguard.audit.evaluation import EvalSet, rank_k_table
    from poisonguard.audit.weights import layer_deltas, parameter_drift, spectrum_summary

    base, ft, processor = bf16_pair
    images = _images(6)
    handles = [guard(_vision(m), torch.device("cpu"), torch.bfloat16) for m in (base, ft)]
    try:
        col = collect_drift(base, ft, processor, _samples(6), images.__getitem__, batch_size=4,
                            show_progress=False)
    finally:
        for h in handles:
            h.remove()
    assert all(len(h.calls) == 2 for h in handles) and np.isfinite(col.per_token_max).all()
    g = shared_direction(col)
    assert logit_lens(ft, processor.tokenizer, g)["+"]["raw"]
    deltas = layer_deltas(base, ft)
    assert spectrum_summary(deltas["model.multi_modal_projector.linear_2"])["spectral_norm"] > 0
    assert parameter_drift(base, ft)["projector"] > 0
    clean = _examples(2, images)
    evalset = EvalSet([Example(e.messages[:-1], e.images) for e in clean], ["red", "red"],
                      [Example(e.messages[:-1], e.images) for e in clean], "badnet", "banana")
    h = guard(ft, torch.device("cpu"), torch.bfloat16)
    try:
        rows = rank_k_table(base, ft, processor, evalset, deltas, [1], {"joint": list(deltas)}, ("remove",))
    finally:
        h.remove()
    assert len(rows) == 1 and h.calls


# ------------------------------------------------------------------------ meta device: inputs must follow
@pytest.fixture(scope="module")
def meta_model():
    model, processor = build_tiny("llava", seed=0)
    return model.to("meta"), processor


def test_meta_model_reports_its_device(meta_model):
    model, _ = meta_model
    assert model_device_dtype(model) == (torch.device("meta"), torch.float32)


def test_train_moves_inputs_to_the_model(meta_model):
    from poisonguard.train.finetune import epoch_batches
    from poisonguard.train.loop import OptimConfig, run_training

    model, processor = meta_model
    h = guard(model, torch.device("meta"), torch.float32, stop=True)
    try:
        with pytest.raises(Reached):
            run_training(model, processor, epoch_batches(_examples(2, _images(2)), 2, 0), 1, OptimConfig(),
                         show_progress=False)
    finally:
        h.remove()
        model.eval()


def test_extract_moves_inputs_to_the_model(meta_model):
    from poisonguard.extract import extract

    model, processor = meta_model
    h = guard(model, torch.device("meta"), torch.float32, stop=True)
    try:
        with pytest.raises(Reached):
            extract(model, processor, _examples(2, _images(2)), show_progress=False)
    finally:
        h.remove()


def test_generate_moves_inputs_to_the_model(meta_model, monkeypatch):
    """`generate` reads values of its inputs before the first forward (padding checks), which a meta tensor
    cannot give: the contract is checked at the call of `model.generate` instead (generation keeps every
    tensor it makes on its inputs' device)."""
    from poisonguard.train.generate import generate_answers

    model, processor = meta_model

    def check(**kwargs):
        for t in _tensors(kwargs):
            assert t.device.type == "meta", f"input on {t.device}, model on meta"
        raise Reached

    monkeypatch.setattr(model, "generate", check)
    with pytest.raises(Reached):
        generate_answers(model, processor, _examples(2, _images(2)), show_progress=False)


def test_projector_audit_moves_inputs_to_the_model(meta_model):
    from poisonguard.audit.activations import collect_drift

    model, processor = meta_model
    images = _images(2)
    h = guard(_vision(model), torch.device("meta"), torch.float32, stop=True)
    try:
        with pytest.raises(Reached):
            collect_drift(model, model, processor, _samples(2), images.__getitem__, show_progress=False)
    finally:
        h.remove()
