"""Loading the checkpoints users have: sharded folders, processor-less folders, LoRA adapters, refusals, and
the one-model-at-a-time passes of a screen."""

from __future__ import annotations

import json

import pytest
import torch

from tests.fixtures.families import build_tiny, random_lora
from poisonguard.models import is_adapter_dir, load_model, model_passes
from poisonguard.runtime import CPU_FP32, live_models, resolve_runtime


def _inputs(processor):
    from PIL import Image

    from poisonguard.train.batching import Example, encode_prompts

    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour is it?"}]}]
    return encode_prompts(processor, [Example(msgs, [Image.new("RGB", (32, 32), (200, 30, 30))])])


@torch.no_grad()
def _logits(model, batch):
    return model(**batch).logits[:, -1].float()


@pytest.fixture(scope="module")
def llava_dirs(tmp_path_factory):
    """A tiny LLaVA base saved in 10 shards, and a LoRA adapter on it with non-zero updates."""
    root = tmp_path_factory.mktemp("models")
    model, processor = build_tiny("llava", seed=1)
    model.save_pretrained(root / "base", max_shard_size="20KB")
    processor.save_pretrained(root / "base")
    peft_model = random_lora(model, seed=0, scale=0.2)
    peft_model.save_pretrained(root / "adapter")
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(root / "merged")  # weights only: the processor must come from the base
    return root


def test_sharded_checkpoint_loads(llava_dirs):
    base = llava_dirs / "base"
    assert (base / "model.safetensors.index.json").is_file() and len(list(base.glob("*.safetensors"))) > 1
    model, processor = load_model(base)
    ref, _ = build_tiny("llava", seed=1)
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in model.state_dict().items())
    bf16, _ = load_model(base, resolve_runtime("cpu", "bfloat16"))
    assert bf16.dtype == torch.bfloat16 and processor.tokenizer is not None


def test_processor_falls_back_to_the_base(llava_dirs):
    merged = llava_dirs / "merged"
    assert not (merged / "tokenizer_config.json").exists()
    with pytest.raises(ValueError, match="no processor"):
        load_model(merged)
    _, processor = load_model(merged, base=llava_dirs / "base")
    assert processor.chat_template


def test_adapter_gives_the_merged_model_and_the_base_when_disabled(llava_dirs):
    assert is_adapter_dir(llava_dirs / "adapter") and not is_adapter_dir(llava_dirs / "base")
    peft_model, processor = load_model(llava_dirs / "adapter", base=llava_dirs / "base")
    merged, _ = load_model(llava_dirs / "merged", base=llava_dirs / "base")
    base, _ = load_model(llava_dirs / "base")
    batch = _inputs(processor)
    torch.testing.assert_close(_logits(peft_model, batch), _logits(merged, batch), rtol=1e-4, atol=1e-5)
    with peft_model.disable_adapter():
        torch.testing.assert_close(_logits(peft_model, batch), _logits(base, batch))
    assert not torch.allclose(_logits(base, batch), _logits(merged, batch))


def test_adapter_base_is_read_from_its_config(llava_dirs, tmp_path):
    import shutil

    shutil.copytree(llava_dirs / "adapter", tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(llava_dirs / "base")
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(cfg))
    model, _ = load_model(tmp_path / "a")
    assert type(model).__name__ == "PeftModel"
    cfg["base_model_name_or_path"] = "some-org/not-here"
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="pass the base"):
        load_model(tmp_path / "a")


@pytest.mark.parametrize("extra, message", [
    ({"mm_vision_tower": "openai/clip-vit-large-patch14-336", "mm_projector_type": "mlp2x_gelu"},
     "original LLaVA checkpoint.*convert_llava_weights_to_hf"),
    ({"model_type": "llava_llama"}, "original LLaVA checkpoint"),
    ({"auto_map": {"AutoModel": "modeling_internvl_chat.InternVLChatModel"}}, "needs remote code.*-hf"),
])
def test_unloadable_layouts_get_one_line_errors(llava_dirs, tmp_path, extra, message):
    cfg = json.loads((llava_dirs / "base" / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, **extra}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=message) as err:
        load_model(tmp_path)
    assert "\n" not in str(err.value)


def _count_passes(base, finetuned):
    seen, peak = [], 0
    for name, model, processor in model_passes(base, finetuned, CPU_FP32):
        peak = max(peak, live_models())
        seen.append((name, _logits(model, _inputs(processor))))
        del model
    return seen, peak


def test_passes_hold_one_model_with_an_adapter_and_two_at_most_otherwise(llava_dirs):
    import gc

    gc.collect()
    start = live_models()
    seen, peak = _count_passes(llava_dirs / "base", llava_dirs / "adapter")
    assert [n for n, _ in seen] == ["finetuned", "base"] and peak - start == 1
    full, peak_full = _count_passes(llava_dirs / "base", llava_dirs / "merged")
    assert peak_full - start <= 2 and live_models() == start
    for (_, a), (_, b) in zip(seen, full):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", ["llava_next", "qwen2_vl", "qwen2_5_vl", "internvl"])
def test_processors_reload_from_disk_without_a_video_processor(family, tmp_path):
    """Qwen2(.5)-VL and InternVL processors hold a video processor that needs torchvision; without it the
    folder's processor is rebuilt for images, and must encode exactly as the original."""
    from PIL import Image

    from poisonguard.models import load_processor

    model, processor = build_tiny(family)
    processor.save_pretrained(tmp_path)
    model.config.save_pretrained(tmp_path)
    again = load_processor(tmp_path)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour"}]}]
    image = Image.new("RGB", (32, 16), (10, 200, 30))
    a, b = ({**pr(text=[pr.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)],
                  images=[image], return_tensors="pt", padding=True)} for pr in (processor, again))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_cli_reports_an_unloadable_checkpoint_in_one_line(llava_dirs, tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from poisonguard.cli import app

    cfg = json.loads((llava_dirs / "base" / "config.json").read_text())
    original = tmp_path / "original"
    original.mkdir()
    (original / "config.json").write_text(json.dumps({**cfg, "mm_vision_tower": "openai/clip-vit-large"}))
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    rows = [{"id": "a", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\nwhat ?"},
                                                              {"from": "gpt", "value": "red"}]}]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    r = CliRunner().invoke(app, ["screen", "--data", str(tmp_path / "d.json"), "--base", str(original),
                                 "--finetuned", str(llava_dirs / "adapter"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2, r.output
    assert "convert_llava_weights_to_hf" in r.output and "Traceback" not in r.output


# --- processor options: the PIL backend, pixel bounds --------------------------------------------------------


def _saved(family: str, folder):
    model, processor = build_tiny(family)
    processor.save_pretrained(folder)
    model.config.save_pretrained(folder)
    return processor


def test_world_processor_loads_with_the_pil_backend_and_identical_pixels(tmp_path):
    """transformers prefers its torchvision image processors whenever torchvision is installed, whose
    kernels give other pixel values; the loader pins the PIL backend so the embedded world's features do
    not depend on what else is installed. The pixels equal those of the world's own (PIL) processor."""
    import numpy as np
    from PIL import Image

    from poisonguard.models import load_processor

    original = _saved("world", tmp_path)
    loaded = load_processor(tmp_path)
    assert type(loaded.image_processor).__name__.endswith("Pil")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in ((48, 48), (61, 37))]
    a = original.image_processor(images, return_tensors="pt")["pixel_values"]
    b = loaded.image_processor(images, return_tensors="pt")["pixel_values"]
    assert a.dtype == b.dtype and torch.equal(a, b)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_max_pixels_bounds_the_image_tokens_of_dynamic_resolution(family, tmp_path):
    from PIL import Image

    from poisonguard.models import load_processor
    from poisonguard.runtime import Runtime
    from poisonguard.train.batching import image_token_count

    _saved(family, tmp_path)
    big = Image.new("RGB", (96, 64), (10, 20, 30))

    def grid(runtime):
        proc = load_processor(tmp_path, runtime=runtime)
        thw = proc.image_processor([big], return_tensors="pt")["image_grid_thw"][0]
        return proc, int(thw.prod())

    _, full = grid(None)  # the processor's own bound: 32 x 32 pixels
    bounded, fewer = grid(Runtime(torch.device("cpu"), torch.float32, max_pixels=16 * 16, min_pixels=8 * 8))
    assert fewer < full
    assert image_token_count(bounded, big.size) == fewer // 4  # merge 2 x 2 patches per LM token


def test_pixel_bounds_are_refused_for_a_fixed_size_processor(tmp_path):
    from poisonguard.models import ProcessorOptionError, load_processor
    from poisonguard.runtime import Runtime

    _saved("llava", tmp_path)
    with pytest.raises(ProcessorOptionError, match="--max-pixels .*CLIPImageProcessorPil"):
        load_processor(tmp_path, runtime=Runtime(torch.device("cpu"), torch.float32, max_pixels=1024))


def test_pixel_bounds_are_checked_when_the_runtime_is_resolved():
    with pytest.raises(ValueError, match="--max-pixels must be a positive integer"):
        resolve_runtime("cpu", "float32", max_pixels=0)
    with pytest.raises(ValueError, match="--min-pixels 4096 is above --max-pixels 1024"):
        resolve_runtime("cpu", "float32", max_pixels=1024, min_pixels=4096)


def test_cli_pixel_bounds_reach_the_processor_or_fail_in_one_line(llava_dirs, tmp_path):
    """`--max-pixels` flows through the runtime section to the processor; LLaVA's fixed-size processor
    cannot take it, which is bad input (exit 2, one line), not a silently ignored option."""
    from PIL import Image
    from typer.testing import CliRunner

    from poisonguard.cli import _config, _runtime_options, app

    cfg = _config(None, runtime=_runtime_options("cpu", None, 4096, None, True))
    runtime = cfg.runtime.resolve()
    assert (runtime.max_pixels, runtime.min_pixels, runtime.pad_to_square) == (4096, None, True)
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    rows = [{"id": "a", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\nwhat ?"},
                                                              {"from": "gpt", "value": "red"}]}]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    r = CliRunner().invoke(app, ["screen", "--data", str(tmp_path / "d.json"), "--base", str(llava_dirs / "base"),
                                 "--finetuned", str(llava_dirs / "adapter"), "--out", str(tmp_path / "o"),
                                 "--max-pixels", "4096", "--device", "cpu"])
    assert r.exit_code == 2, r.output
    assert "--max-pixels" in r.output and "CLIPImageProcessorPil" in r.output and "Traceback" not in r.output
