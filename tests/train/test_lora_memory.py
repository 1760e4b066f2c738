"""LoRA saved as an adapter (in the base's dtype, merged only on request), the size-based default mode with
gradient checkpointing, and micro-batches with gradient accumulation."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from tests.fixtures.families import build_tiny
from poisonguard.models import is_adapter_dir, load_model
from poisonguard.train import finetune as ft_module
from poisonguard.train.batching import Example, encode_prompts
from poisonguard.train.finetune import FinetuneConfig, finetune, resolve_mode, save_model


def _examples(n: int) -> list[Example]:
    rng = np.random.default_rng(0)
    answers = ["red", "blue", "green"]
    return [Example([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour ?"}]},
                     {"role": "assistant", "content": [{"type": "text", "text": answers[i % 3]}]}],
                    [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))]) for i in range(n)]


@torch.no_grad()
def _logits(model, processor, examples):
    batch = encode_prompts(processor, [Example(e.messages[:1], e.images) for e in examples])
    return model(**batch).logits[:, -1].float()


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    model, processor = build_tiny("llava", seed=2)
    out = tmp_path_factory.mktemp("lora") / "base"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lora_saves_the_adapter_in_the_base_dtype(base_dir, tmp_path, dtype):
    from safetensors import safe_open

    from poisonguard.runtime import Runtime

    rt = Runtime(torch.device("cpu"), dtype)
    model, processor = load_model(base_dir, rt)
    examples = _examples(4)
    trained, report = finetune(model, processor, examples, FinetuneConfig(mode="lora", epochs=1, batch_size=4,
                                                                          lr=5e-2), show_progress=False)
    assert report["saved_as"] == "adapter" and report["dtype"] == str(dtype).removeprefix("torch.")
    save_model(trained, processor, tmp_path / "adapter", report)
    files = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert is_adapter_dir(tmp_path / "adapter") and "adapter_model.safetensors" in files
    assert "model.safetensors" not in files, "the adapter only, not a copy of the model"
    with safe_open(tmp_path / "adapter" / "adapter_model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict == {dtype}
    reloaded, proc2 = load_model(tmp_path / "adapter", rt)  # the base comes from adapter_config.json
    tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 0.05, "atol": 0.05}
    torch.testing.assert_close(_logits(reloaded, proc2, examples), _logits(trained, processor, examples), **tol)


def test_merge_on_request_gives_a_full_model_folder(base_dir, tmp_path):
    model, processor = load_model(base_dir)
    merged, report = finetune(model, processor, _examples(4),
                              FinetuneConfig(mode="lora", epochs=1, batch_size=4, merge=True), show_progress=False)
    save_model(merged, processor, tmp_path / "m", report)
    assert report["saved_as"] == "model" and (tmp_path / "m" / "model.safetensors").is_file()
    assert not is_adapter_dir(tmp_path / "m")


def test_auto_mode_is_full_for_small_models_and_lora_with_checkpointing_above_the_threshold(monkeypatch):
    model, processor = build_tiny("llava", seed=2)
    assert resolve_mode(FinetuneConfig(), model) == ("default", False)
    assert resolve_mode(FinetuneConfig(mode="lora"), model) == ("lora", False)
    monkeypatch.setattr(ft_module, "LORA_PARAMS_THRESHOLD", 1000)
    assert resolve_mode(FinetuneConfig(), model) == ("lora", True)
    assert resolve_mode(FinetuneConfig(gradient_checkpointing=False), model) == ("lora", False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trained, report = finetune(model, processor, _examples(4), FinetuneConfig(epochs=1, batch_size=4,
                                                                              micro_batch_size=2),
                               show_progress=False)
    assert report["mode"] == "lora" and report["gradient_checkpointing"] and report["grad_accum"] == 2
    assert not trained.get_base_model().is_gradient_checkpointing, "switched off after training"
    merged = copy.deepcopy(trained).merge_and_unload()
    assert any(not torch.equal(before[k], v) for k, v in merged.state_dict().items())


def test_micro_batches_give_the_whole_batch_step():
    from poisonguard.train.finetune import epoch_batches
    from poisonguard.train.loop import OptimConfig, run_training

    model, processor = build_tiny("llava", seed=3)
    examples = _examples(6)
    results = []
    for micro in (None, 2, 4):
        m = copy.deepcopy(model)
        rep = run_training(m, processor, epoch_batches(examples, 6, 0), 1, OptimConfig(lr=1e-2),
                           show_progress=False, micro_batch_size=micro)
        results.append((rep["final_loss"], {k: v.detach().clone() for k, v in m.named_parameters()}))
    (loss0, w0), *rest = results
    for loss, w in rest:
        assert loss == pytest.approx(loss0, rel=1e-5)
        for k in w0:
            torch.testing.assert_close(w[k], w0[k], rtol=1e-3, atol=2e-5)  # Adam rescales tiny gradients
    with pytest.raises(ValueError, match="micro_batch_size"):
        FinetuneConfig(micro_batch_size=0)
