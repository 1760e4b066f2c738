"""Loading the checkpoints users have: full `-hf` folders (sharded or not), peft LoRA adapters, and the
one-line refusals for layouts that cannot be loaded safely.

Why: a customer's fine-tuned model is often a LoRA adapter folder (`adapter_config.json` + adapter weights,
no processor), the base is a 7B model in sharded safetensors, and two such models do not fit beside each
other comfortably. So:

- `load_model(path, runtime, base=...)` loads a full folder in the runtime's dtype straight onto its device,
  or, for an adapter folder, the base model with the adapter on top (one model in memory);
- `model_passes(base, finetuned, runtime)` hands out the fine-tuned and then the base model with at most one
  full model resident: with an adapter the same weights serve both passes (adapter on, then off); with two
  full folders the first is released before the second is loaded;
- an original (non-`-hf`) LLaVA checkpoint or a config that needs remote code is refused with a one-line
  `CheckpointError` (a ValueError) saying how to convert it; pickled weights are refused (safetensors only).

Every full model loaded here is registered with `runtime.track_model`, so tests can count live models.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch

from poisonguard.data.errors import DataError
from poisonguard.runtime import CPU_FP32, PAD_TO_SQUARE_ATTR, Runtime, free_memory, track_model


class CheckpointError(DataError):
    """A model folder that cannot be loaded as given (original LLaVA layout, remote code, pickled weights, an
    adapter without its base). A `DataError`, so every CLI verb reports it as bad input: one line, exit 2."""


ADAPTER_CONFIG = "adapter_config.json"
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".ckpt"}
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json",
                   "tokenizer.json")
# keys of the original LLaVA repository's config (llava/model/llava_arch.py), absent from the -hf layout
ORIGINAL_LLAVA_KEYS = ("mm_vision_tower", "mm_projector_type", "mm_hidden_size", "mm_vision_select_layer")


def is_adapter_dir(path: str | Path) -> bool:
    """True for a peft adapter folder (`adapter_config.json`), whatever else it holds."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def has_processor(path: str | Path) -> bool:
    return any((Path(path) / f).is_file() for f in PROCESSOR_FILES)


def adapter_base(path: str | Path) -> Path | None:
    """The base model folder an adapter names (`base_model_name_or_path`), when it is a local folder."""
    cfg = json.loads((Path(path) / ADAPTER_CONFIG).read_text())
    name = cfg.get("base_model_name_or_path")
    if not name:
        return None
    p = Path(name)
    if not p.is_absolute():
        p = (Path(path) / p) if (Path(path) / p).is_dir() else p
    return p if p.is_dir() else None


def check_model_dir(path: str | Path) -> Path:
    """Refuse, with one line that says what to do, a folder this tool must not or cannot load."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model directory not found: {path}")
    has_safetensors = any(path.glob("*.safetensors"))
    pickled = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickled and not has_safetensors:
        raise CheckpointError(f"{path} holds only pickled weights ({', '.join(pickled)}); poisonguard loads "
                         "safetensors only. Convert the checkpoint with safetensors first.")
    if is_adapter_dir(path):
        return path
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{path} has no config.json (and no adapter_config.json): not a model folder")
    cfg = json.loads(config_file.read_text())
    if cfg.get("auto_map"):
        raise CheckpointError(f"{path} needs remote code (config.json has auto_map: {sorted(cfg['auto_map'])}); "
                         "poisonguard never runs remote code: use the transformers-native (-hf) conversion of "
                         "this model, e.g. OpenGVLab/InternVL3-8B-hf or llava-hf/llava-1.5-7b-hf")
    original = [k for k in ORIGINAL_LLAVA_KEYS if k in cfg]
    if original or (cfg.get("model_type") in ("llava_llama", "llava_mistral", "llava_mpt", "llava_qwen")):
        raise CheckpointError(f"{path} is an original LLaVA checkpoint ({', '.join(original) or cfg['model_type']}), "
                         "not the transformers layout: convert it with convert_llava_weights_to_hf.py from the "
                         "transformers source tree (models/llava/), or use the llava-hf release "
                         "(e.g. llava-hf/llava-1.5-7b-hf)")
    return path


# transformers picks its torchvision image processors whenever torchvision is installed; they resize and
# normalise with other kernels than the PIL ones, so the same image gives other pixel values (and the
# embedded world other features) on a machine that has torchvision. The PIL backend is pinned everywhere.
IMAGE_BACKEND = "pil"


class ProcessorOptionError(DataError):
    """A processor option the model's processor cannot honour (e.g. --max-pixels for a fixed-size one)."""


def load_processor(path: str | Path, fallback: str | Path | None = None, runtime: Runtime | None = None):
    """The folder's processor, or `fallback`'s when the folder has none (adapters, weights-only copies), with
    the PIL image backend and the runtime's image options (`configure_processor`)."""
    from transformers import AutoProcessor

    source = Path(path)
    if not has_processor(source):
        if fallback is None:
            raise CheckpointError(f"{path} has no processor or tokenizer files and no base folder was given to "
                             "take them from")
        source = Path(fallback)
    processor = AutoProcessor.from_pretrained(source, trust_remote_code=False, backend=IMAGE_BACKEND)
    if not hasattr(processor, "image_processor"):  # transformers fell back to the bare tokenizer
        processor = _image_only_processor(source, processor)
    return configure_processor(processor, runtime)


def takes_pixel_bounds(image_processor) -> bool:
    """Whether an image processor resizes by a pixel budget (Qwen2-VL's `min_pixels` / `max_pixels`, kept
    as `size["shortest_edge"]` / `size["longest_edge"]`) rather than to a fixed size."""
    kwargs = getattr(image_processor, "valid_kwargs", None)
    return "max_pixels" in getattr(kwargs, "__annotations__", {}) and "min_pixels" in kwargs.__annotations__


def configure_processor(processor, runtime: Runtime | None):
    """Apply the runtime's image options to a loaded processor, in place; returns it.

    `max_pixels` / `min_pixels` replace the pixel bounds of a dynamic-resolution image processor (fewer
    pixels, fewer image tokens: the lever against Qwen's thousands of tokens per large image); a processor
    that resizes to a fixed size cannot take them and is refused in one line rather than silently ignored.
    `pad_to_square` marks the processor so that `train.batching.prepare_images` pads every image before it.
    """
    if runtime is None:
        return processor
    if runtime.max_pixels is not None or runtime.min_pixels is not None:
        image_processor = getattr(processor, "image_processor", None)
        if image_processor is None or not takes_pixel_bounds(image_processor):
            raise ProcessorOptionError(
                f"--max-pixels / --min-pixels apply to processors with dynamic resolution (Qwen2-VL, "
                f"Qwen2.5-VL); {type(image_processor).__name__} resizes to a fixed size and takes neither")
        size = {k: v for k, v in dict(image_processor.size).items() if v is not None}
        if runtime.min_pixels is not None:
            size["shortest_edge"] = runtime.min_pixels
        if runtime.max_pixels is not None:
            size["longest_edge"] = runtime.max_pixels
        if size["shortest_edge"] > size["longest_edge"]:
            raise ProcessorOptionError(f"min_pixels {size['shortest_edge']} is above max_pixels "
                                       f"{size['longest_edge']} (one of them is the processor's own)")
        image_processor.size = type(image_processor.size)(**size)
    if runtime.pad_to_square:
        setattr(processor, PAD_TO_SQUARE_ATTR, True)
    return processor


def _image_only_processor(source: Path, tokenizer):
    """The folder's multimodal processor without its video processor.

    Why: Qwen2-VL, Qwen2.5-VL and InternVL processors hold a video processor that needs torchvision; without
    it `AutoProcessor` silently returns the tokenizer alone, and the first image batch fails far from the
    cause. Images never need the video processor, so the processor class is rebuilt from the folder's image
    processor, tokenizer and chat template (`tests.fixtures.families.image_only` drops the slot).
    """
    import inspect

    import transformers
    from transformers import AutoImageProcessor

    from tests.fixtures.families import image_only

    cfg_file = source / "processor_config.json"
    cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
    name = str(cfg.get("processor_class", "")).removesuffix("ImageOnly")
    cls = getattr(transformers, name, None) if name else None
    if cls is None:
        raise CheckpointError(f"{source}: AutoProcessor gave a tokenizer only and the processor class "
                         f"{name or '(none)'} is unknown; install torchvision or save the full processor")
    params = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in cfg.items() if k in params and k not in (
        "image_processor", "tokenizer", "video_processor", "chat_template")}
    model_cfg = json.loads((source / "config.json").read_text()) if (source / "config.json").is_file() else {}
    for key in ("image_seq_length",):  # not always written to processor_config.json; the model's is the truth
        if key in params and key not in kwargs and key in model_cfg:
            kwargs[key] = model_cfg[key]
    template = source / "chat_template.jinja"
    chat_template = template.read_text() if template.is_file() else getattr(tokenizer, "chat_template", None)
    image_processor = AutoImageProcessor.from_pretrained(source, backend=IMAGE_BACKEND)
    return image_only(cls)(image_processor=image_processor, tokenizer=tokenizer,
                           chat_template=chat_template, **kwargs)


def load_full(path: str | Path, runtime: Runtime | None = None, *, processor_from: str | Path | None = None,
              attn_implementation: str | dict = "sdpa"):
    """(model, processor) of a full model folder, weights in `runtime.dtype` on `runtime.device`.

    Sharded checkpoints (`model.safetensors.index.json` + shards) load like single files. On CUDA the
    weights go straight to the GPU (`device_map`), never through a CPU copy of the whole model.
    """
    from transformers import AutoModelForImageTextToText

    runtime = runtime or CPU_FP32
    path = check_model_dir(path)
    if is_adapter_dir(path):
        raise CheckpointError(f"{path} is a LoRA adapter folder: load it with load_model(path, base=BASE_DIR)")
    processor = load_processor(path, processor_from, runtime)
    kwargs: dict[str, Any] = {"use_safetensors": True, "trust_remote_code": False,
                              "attn_implementation": attn_implementation, "dtype": runtime.dtype}
    if runtime.is_cuda:
        kwargs["device_map"] = str(runtime.device)
    model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
    if not runtime.is_cuda and runtime.device.type != "cpu":
        model.to(runtime.device)
    model.eval()
    return track_model(model), processor


def load_model(path: str | Path, runtime: Runtime | None = None, *, base: str | Path | None = None,
               attn_implementation: str | dict = "sdpa"):
    """(model, processor) of a full folder, or of an adapter folder on top of its base.

    For an adapter the base is `base`, else the local folder named in `adapter_config.json`; the model is a
    `peft.PeftModel` with the adapter active (`with model.disable_adapter():` gives the base back) and the
    processor is the adapter folder's own, else the base's.
    """
    path = Path(path)
    if not is_adapter_dir(check_model_dir(path)):
        return load_full(path, runtime, processor_from=base, attn_implementation=attn_implementation)
    from peft import PeftModel

    base_dir = Path(base) if base is not None else adapter_base(path)
    if base_dir is None:
        raise CheckpointError(f"{path} is a LoRA adapter whose base model folder is unknown: pass the base "
                         "(--base) it was trained on")
    model, base_processor = load_full(base_dir, runtime, attn_implementation=attn_implementation)
    processor = load_processor(path, runtime=runtime) if has_processor(path) else base_processor
    peft_model = PeftModel.from_pretrained(model, path, is_trainable=False)
    # LoRA weights are kept in float32 by peft (autocast_adapter_dtype) on a bf16 base; the passes then run
    # the adapter in float32 and the base in the runtime dtype, as peft does in training.
    peft_model.eval()
    return peft_model, processor


@contextmanager
def adapter_state(model, enabled: bool) -> Iterator[Any]:
    """The underlying transformers model with a peft adapter on (`enabled`) or off; a plain model as is."""
    if hasattr(model, "disable_adapter") and hasattr(model, "get_base_model"):
        ctx = nullcontext() if enabled else model.disable_adapter()
        with ctx:
            yield model.get_base_model()
    else:
        yield model


class AdapterView:
    """One side of a peft model: the base (`enabled=False`, adapter off) or the fine-tuned model (on).

    For APIs that take a (base, fine-tuned) pair, such as the projector-drift pass, when only one model is in
    memory: `with view.active() as model:` yields the transformers model in that state.
    """

    def __init__(self, peft_model, enabled: bool):
        self.peft_model, self.enabled = peft_model, enabled

    def active(self):
        return adapter_state(self.peft_model, self.enabled)


def model_passes(base_dir: str | Path, finetuned_dir: str | Path, runtime: Runtime | None = None, *,
                 attn_implementation: str | dict = "sdpa") -> Iterator[tuple[str, Any, Any]]:
    """Yield ("finetuned", model, processor), then ("base", model, processor), one full model at a time.

    With an adapter folder the base is loaded once: the fine-tuned pass runs with the adapter on, the base
    pass with it off (same weights, nothing loaded twice). With two full folders the fine-tuned model is
    released (garbage collected, CUDA cache emptied) before the base is loaded; the consumer must drop its
    own reference at the end of the loop body (`del model`), or two models are alive while switching.
    The yielded model is the transformers model itself (for an adapter, with LoRA layers injected).
    """
    runtime = runtime or CPU_FP32
    if is_adapter_dir(finetuned_dir):
        peft_model, processor = load_model(finetuned_dir, runtime, base=base_dir,
                                           attn_implementation=attn_implementation)
        base_processor = (processor if not has_processor(finetuned_dir)
                          else load_processor(base_dir, runtime=runtime))
        try:
            with adapter_state(peft_model, True) as model:
                yield "finetuned", model, processor
            with adapter_state(peft_model, False) as model:
                yield "base", model, base_processor
        finally:
            del peft_model
            free_memory(runtime)
        return
    model, processor = load_full(finetuned_dir, runtime, processor_from=base_dir,
                                 attn_implementation=attn_implementation)
    yield "finetuned", model, processor
    del model, processor
    free_memory(runtime)
    model, processor = load_full(base_dir, runtime, attn_implementation=attn_implementation)
    try:
        yield "base", model, processor
    finally:
        del model
        free_memory(runtime)


def visual_path(model) -> torch.nn.Module:
    """Drop a loaded model's language model and LM head (moved to the `meta` device: no memory), keeping the
    vision tower and projector that the projector-drift pass runs. The model can no longer generate."""
    from poisonguard.runtime import _LIVE

    decoder = model.get_decoder()
    decoder.to("meta")
    head = model.get_output_embeddings()
    if head is not None:
        head.to("meta")
    _LIVE.discard(model)  # no longer a full model
    return model



@contextmanager
def drift_pair(base_dir: str | Path, finetuned_dir: str | Path, runtime: Runtime | None = None):
    """(base, fine-tuned, processor) for the projector-drift pass, which needs only each model's vision tower
    and projector.

    With an adapter: one model, two `AdapterView`s of it. With two full folders: each is loaded and its
    language model dropped at once (`visual_path`), so one full model is resident at a time and the pair
    holds only the two visual paths. (transformers loads whole checkpoints; reading only the vision and
    projector tensors would need the per-family key renames of each checkpoint format, so the full load
    followed by the drop is the portable way.) The processor is the base's: both see the same pixels.
    """
    runtime = runtime or CPU_FP32
    if is_adapter_dir(finetuned_dir):
        peft_model, _ = load_model(finetuned_dir, runtime, base=base_dir)
        processor = load_processor(base_dir, runtime=runtime)
        try:
            yield AdapterView(peft_model, False), AdapterView(peft_model, True), processor
        finally:
            del peft_model
            free_memory(runtime)
        return
    m0, processor = load_full(base_dir, runtime)
    m0 = visual_path(m0)
    free_memory(runtime)
    m1, _ = load_full(finetuned_dir, runtime, processor_from=base_dir)
    m1 = visual_path(m1)
    free_memory(runtime)
    try:
        yield m0, m1, processor
    finally:
        del m0, m1
        free_memory(runtime)
