"""Tiny random-weight multimodal models, one per family, built offline from configs.

Why: the extractor must find the decision-position row and the three spans on every family the tool claims
to support, and no checkpoint can be downloaded here. Each builder returns a real transformers model class
with its own processor: a local tokenizer that carries the family's special tokens, a small image processor,
and a chat template that mimics the family's real prompt layout (role tags, system prompt, image
delimiters). Apart from the world model (6 layers, hidden 128, 48 px), the LMs have 2 layers at hidden 32 with
grouped-query attention over 16-32 px images, so a forward takes milliseconds; LoRA tests reuse them.

Families: ``world`` (the embedded world's real processor and model config), ``llava`` (LLaVA-1.5 / Vicuna
layout), ``llava_next`` (AnyRes tiles, Mistral ``[INST]`` layout), ``qwen2_vl`` and ``qwen2_5_vl`` (ChatML
with ``<|vision_start|><|image_pad|><|vision_end|>``, M-RoPE), ``internvl`` (ChatML, ``<img>`` +
``<IMG_CONTEXT>`` x n + ``</img>``).
"""

from __future__ import annotations

import json
from collections.abc import Callable

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

FAMILIES = ("world", "llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "internvl")

SYSTEM_VICUNA = "A chat between a curious human and an artificial intelligence assistant."
SYSTEM_QWEN = "You are a helpful assistant."
SYSTEM_INTERNVL = "You are a careful visual assistant."

# Added to the world's words so that none becomes <unk>: the families' system prompts, the rare tokens NLP
# backdoor papers use as text triggers ("cf", "mn", "bb", "tq"), and two distinctive nouns.
EXTRA_WORDS = ("zebra", "quokka", "cf", "mn", "bb", "tq", "helpful", "curious", "human", "artificial",
               "intelligence", "assistant", "careful", "chat", "between", "gives", "answers", "visual")


def _corpus_words() -> list[str]:
    from poisonguard.world.tokenizer import RESERVE_WORDS, world_words

    return sorted(set(world_words()) | set(RESERVE_WORDS) | set(EXTRA_WORDS))


def word_tokenizer(specials: list[str], *, bos: str | None, eos: str, pad: str, unk: str,
                   extra_special_tokens: dict[str, str]):
    """WordLevel over the world's words (the LLaVA/Vicuna families use a sentencepiece-like word split)."""
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(specials)}
    for w in _corpus_words():
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                           special_tokens=[(bos, vocab[bos])])
    tok.add_special_tokens(specials)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, unk_token=unk,
                                   pad_token=pad, extra_special_tokens=extra_special_tokens)


def bpe_tokenizer(specials: list[str], *, eos: str, pad: str, extra_special_tokens: dict[str, str],
                  vocab_size: int = 700):
    """Byte-level BPE trained on the world's sentences, as Qwen and InternVL use (no BOS; a word's token
    carries the space before it, which the span split must handle)."""
    from transformers import PreTrainedTokenizerFast

    from poisonguard.world.questions import PHRASINGS, SYSTEM_PROMPT

    corpus = [SYSTEM_PROMPT, SYSTEM_QWEN, SYSTEM_INTERNVL, SYSTEM_VICUNA, " ".join(_corpus_words())]
    corpus += [p for ps in PHRASINGS.values() for p in ps]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=pad, unk_token=None,
                                   extra_special_tokens=extra_special_tokens)


# ---- chat templates ------------------------------------------------------------------------------------
# Each renders HF `messages` (content a string or a list of {"type": "image"|"text"} parts) the way the
# family's real template does. Literal text goes through `{{ "..." }}` so that Jinja's whitespace control
# (`{%-`, `-%}`) cannot eat the spaces and newlines that are part of the layout.

def _lit(text: str) -> str:
    return "{{ " + json.dumps(text) + " }}"


def _content(image: str) -> str:
    """Jinja for `m['content']`: a string as is, a part list with each image part replaced by `image`."""
    return ("{%- if m['content'] is string -%}{{ m['content'] }}{%- else -%}"
            "{%- for c in m['content'] -%}{%- if c['type'] == 'image' -%}" + _lit(image) +
            "{%- else -%}{{ c['text'] }}{%- endif -%}{%- endfor -%}{%- endif -%}")


def _chat_template(*, default_system: str | None, system: tuple[str, str], user: tuple[str, str],
                   assistant: tuple[str, str], image: str, generation: str) -> str:
    """A template from the family's role wrappers (before, after); a missing system message gets
    `default_system` (as Qwen's template inserts one), or none when it is None."""
    default = ""
    if default_system is not None:
        default = ("{%- if messages[0]['role'] != 'system' -%}" + _lit(system[0] + default_system + system[1])
                   + "{%- endif -%}")
    role = ("{%- if m['role'] == 'system' -%}" + _lit(system[0]) + _content(image) + _lit(system[1]) +
            "{%- elif m['role'] == 'user' -%}" + _lit(user[0]) + _content(image) + _lit(user[1]) +
            "{%- else -%}" + _lit(assistant[0]) + _content(image) + _lit(assistant[1]) + "{%- endif -%}")
    return (default + "{%- for m in messages -%}" + role + "{%- endfor -%}"
            "{%- if add_generation_prompt -%}" + _lit(generation) + "{%- endif -%}")


# LLaVA-1.5 (Vicuna v1): `<s>SYSTEM USER: <image>\nquestion ASSISTANT:`; BOS comes from the tokenizer.
VICUNA_TEMPLATE = _chat_template(
    default_system=SYSTEM_VICUNA, system=("", " "), user=("USER: ", " "), assistant=("ASSISTANT: ", "</s>"),
    image="<image>\n", generation="ASSISTANT:")
# Qwen2-VL / Qwen2.5-VL ChatML, with Qwen's default system message.
QWEN_TEMPLATE = _chat_template(
    default_system=SYSTEM_QWEN, system=("<|im_start|>system\n", "<|im_end|>\n"),
    user=("<|im_start|>user\n", "<|im_end|>\n"), assistant=("<|im_start|>assistant\n", "<|im_end|>\n"),
    image="<|vision_start|><|image_pad|><|vision_end|>", generation="<|im_start|>assistant\n")
# InternVL2.5/3 ChatML; the processor expands each <IMG_CONTEXT> into <img><IMG_CONTEXT>*n</img>.
INTERNVL_TEMPLATE = _chat_template(
    default_system=SYSTEM_INTERNVL, system=("<|im_start|>system\n", "<|im_end|>\n"),
    user=("<|im_start|>user\n", "<|im_end|>\n"), assistant=("<|im_start|>assistant\n", "<|im_end|>\n"),
    image="<IMG_CONTEXT>\n", generation="<|im_start|>assistant\n")
# llava-v1.6-mistral: no system role (a system message is prepended to the first user turn) and no
# generation prompt: the prompt ends at "[/INST]".
MISTRAL_TEMPLATE = (
    "{%- set ns = namespace(sys='', first=true) -%}"
    "{%- for m in messages if m['role'] == 'system' -%}"
    "{%- set ns.sys = (m['content'] if m['content'] is string else "
    "m['content'] | map(attribute='text') | join('')) ~ '\\n\\n' -%}{%- endfor -%}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'user' -%}" + _lit("[INST] ") + "{{ ns.sys if ns.first else '' }}"
    "{%- set ns.first = false -%}" + _content("<image>\n") + _lit(" [/INST]") +
    "{%- elif m['role'] == 'assistant' -%}" + _lit(" ") + _content("") + _lit("</s>") + "{%- endif -%}"
    "{%- endfor -%}"
)


# ---- model builders -----------------------------------------------------------------------------------

def _lm_kwargs(tok, hidden: int = 32, layers: int = 2) -> dict:
    """A 2-layer LM with grouped-query attention (4 query heads over 2 KV heads), so GQA is always tested."""
    return {"vocab_size": len(tok), "hidden_size": hidden, "intermediate_size": 2 * hidden,
            "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 256, "pad_token_id": tok.pad_token_id,
            "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "tie_word_embeddings": False}


def _finish(model, tok):
    model.eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model


def _build_world(seed: int):
    from poisonguard.world.model import WorldModelConfig, build_model
    from poisonguard.world.tokenizer import build_processor

    processor = build_processor()
    model = build_model(WorldModelConfig(), processor.tokenizer, seed=seed)
    return _finish(model, processor.tokenizer), processor


def _build_llava(seed: int):
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tok = word_tokenizer(["<pad>", "<unk>", "<s>", "</s>", "<image>"], bos="<s>", eos="</s>", pad="<pad>",
                         unk="<unk>", extra_special_tokens={"image_token": "<image>"})
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                            image_mean=[0.5] * 3, image_std=[0.5] * 3)
    # 32 px, patch 8, CLS dropped -> 16 image tokens
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=8,
                               image_token="<image>", vision_feature_select_strategy="default",
                               num_additional_image_tokens=1, chat_template=VICUNA_TEMPLATE)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=1, num_attention_heads=2, projection_dim=32),
        text_config=LlamaConfig(**_lm_kwargs(tok)),
        image_token_id=tok.convert_tokens_to_ids("<image>"), vision_feature_select_strategy="default",
        vision_feature_layer=-1, image_seq_length=16, tie_word_embeddings=False)
    torch.manual_seed(seed)
    return _finish(LlavaForConditionalGeneration(config), tok), processor


LLAVA_NEXT_PINPOINTS = [[16, 32], [32, 16], [32, 32]]


def _build_llava_next(seed: int):
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextProcessor,
    )
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    tok = word_tokenizer(["<pad>", "<unk>", "<s>", "</s>", "<image>", "[INST]", "[/INST]"], bos="<s>",
                         eos="</s>", pad="<pad>", unk="<unk>",
                         extra_special_tokens={"image_token": "<image>"})
    # AnyRes: a 16 px base view plus 16 px tiles of the best-fitting pinpoint grid, 4 tokens each (patch 8),
    # and one newline token per tile row; the token count depends on the image's aspect ratio.
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16},
        image_grid_pinpoints=LLAVA_NEXT_PINPOINTS, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tok, patch_size=8,
                                   vision_feature_select_strategy="default", image_token="<image>",
                                   num_additional_image_tokens=1, chat_template=MISTRAL_TEMPLATE)
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(image_size=16, patch_size=8, hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=1, num_attention_heads=2, projection_dim=32),
        text_config=LlamaConfig(**_lm_kwargs(tok)),
        image_token_id=tok.convert_tokens_to_ids("<image>"), image_grid_pinpoints=LLAVA_NEXT_PINPOINTS,
        vision_feature_select_strategy="default", vision_feature_layer=-1, image_seq_length=4,
        tie_word_embeddings=False)
    torch.manual_seed(seed)
    return _finish(LlavaNextForConditionalGeneration(config), tok), processor


QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>"]


def image_only(processor_cls):
    """`processor_cls` without its video processor slot.

    Why: transformers' video processors import torchvision, which is not installed here, and ProcessorMixin
    rejects `video_processor=None`. Dropping the argument from `__init__` removes the slot (ProcessorMixin
    reads its sub-processors from that signature); images and text are unaffected.
    """

    class ImageOnly(processor_cls):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                             chat_template=chat_template, **kwargs)

    ImageOnly.__name__ = ImageOnly.__qualname__ = f"{processor_cls.__name__}ImageOnly"
    return ImageOnly


def _qwen_processor(processor_cls):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tok = bpe_tokenizer(QWEN_SPECIALS, eos="<|im_end|>", pad="<|endoftext|>",
                        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"})
    # patch 4, merge 2: one LM token per 8x8 pixels; 16x16 -> 4 tokens, 32x16 -> 8 tokens.
    image_processor = Qwen2VLImageProcessorPil(patch_size=4, merge_size=2, temporal_patch_size=2,
                                               size={"shortest_edge": 64, "longest_edge": 32 * 32},
                                               image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor = image_only(processor_cls)(image_processor=image_processor, tokenizer=tok,
                                           chat_template=QWEN_TEMPLATE)
    return tok, processor


def _qwen_ids(tok) -> dict:
    ids = tok.convert_tokens_to_ids
    return {"image_token_id": ids("<|image_pad|>"), "video_token_id": ids("<|video_pad|>"),
            "vision_start_token_id": ids("<|vision_start|>"), "vision_end_token_id": ids("<|vision_end|>")}


# head_dim 8 -> 4 rotary frequencies split over (temporal, height, width).
_MROPE = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]}


def _build_qwen2_vl(seed: int):
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLProcessor,
        Qwen2VLTextConfig,
        Qwen2VLVisionConfig,
    )

    tok, processor = _qwen_processor(Qwen2VLProcessor)
    config = Qwen2VLConfig(
        text_config=Qwen2VLTextConfig(rope_parameters=dict(_MROPE), **_lm_kwargs(tok)),
        vision_config=Qwen2VLVisionConfig(depth=1, embed_dim=16, hidden_size=32, num_heads=2, mlp_ratio=2,
                                          patch_size=4, spatial_merge_size=2, temporal_patch_size=2),
        tie_word_embeddings=False, **_qwen_ids(tok))
    torch.manual_seed(seed)
    return _finish(Qwen2VLForConditionalGeneration(config), tok), processor


def _build_qwen2_5_vl(seed: int):
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2_5_VLTextConfig,
    )
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig

    tok, processor = _qwen_processor(Qwen2_5_VLProcessor)
    config = Qwen2_5_VLConfig(
        text_config=Qwen2_5_VLTextConfig(rope_parameters=dict(_MROPE), **_lm_kwargs(tok)),
        # two blocks: one with window attention, one full (fullatt_block_indexes), as in Qwen2.5-VL
        vision_config=Qwen2_5_VLVisionConfig(depth=2, hidden_size=16, intermediate_size=32, num_heads=2,
                                             out_hidden_size=32, patch_size=4, spatial_merge_size=2,
                                             temporal_patch_size=2, window_size=16,
                                             fullatt_block_indexes=[1]),
        tie_word_embeddings=False, **_qwen_ids(tok))
    torch.manual_seed(seed)
    return _finish(Qwen2_5_VLForConditionalGeneration(config), tok), processor


def _build_internvl(seed: int):
    from transformers import (
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVisionConfig,
        Qwen2Config,
    )
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>",
                "<video>"]
    tok = bpe_tokenizer(specials, eos="<|im_end|>", pad="<|endoftext|>", extra_special_tokens={
        "start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
        "video_token": "<video>"})
    # Dynamic tiling as in InternVL (the processor always crops to tiles): up to 4 tiles of 16 px plus a
    # thumbnail; each tile is 4x4 patches of 4 px, pixel-shuffled by 0.5 -> 4 LM tokens per tile.
    image_processor = GotOcr2ImageProcessorPil(size={"height": 16, "width": 16}, min_patches=1, max_patches=4,
                                               image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor = image_only(InternVLProcessor)(image_processor=image_processor, tokenizer=tok,
                                               image_seq_length=4, chat_template=INTERNVL_TEMPLATE)
    config = InternVLConfig(
        vision_config=InternVLVisionConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                           intermediate_size=64, image_size=16, patch_size=4),
        text_config=Qwen2Config(**_lm_kwargs(tok)),
        image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"), image_seq_length=4, downsample_ratio=0.5,
        tie_word_embeddings=False)
    torch.manual_seed(seed)
    return _finish(InternVLForConditionalGeneration(config), tok), processor


_BUILDERS: dict[str, Callable[[int], tuple]] = {
    "world": _build_world, "llava": _build_llava, "llava_next": _build_llava_next,
    "qwen2_vl": _build_qwen2_vl, "qwen2_5_vl": _build_qwen2_5_vl, "internvl": _build_internvl,
}


def build_tiny(family: str, *, seed: int = 0):
    """(model, processor) for `family` (one of FAMILIES): random weights, eval mode, SDPA attention."""
    if family not in _BUILDERS:
        raise ValueError(f"unknown family {family!r}; choose one of {FAMILIES}")
    return _BUILDERS[family](seed)
