"""Word-level tokenizer and LLaVA processor for the embedded world.

The vocabulary is the world's own words plus a reserve of common English words, so that attack targets
("banana", "Backdoor Attack!", a refusal sentence) and text triggers ("Hello!", a clause-prefix paraphrase)
tokenize to real words instead of <unk>. Words outside the vocabulary become <unk>; that is deliberate for a
closed world and documented in the README.
"""

from __future__ import annotations

import re

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from poisonguard.world.questions import PHRASINGS, SYSTEM_PROMPT, answer_vocabulary
from poisonguard.world.scenes import COLOURS, IMAGE_SIZE, SHAPES

PAD, UNK, BOS, EOS, IMAGE = "<pad>", "<unk>", "<s>", "</s>", "<image>"
SPECIAL_TOKENS = [PAD, UNK, BOS, EOS, IMAGE]
PATCH_SIZE = 16

# Words the world never uses in clean data but that attacks and real users do. Kept sorted and fixed:
# the vocabulary (and so every token id) must not depend on anything but this file.
RESERVE_WORDS = sorted(set("""
a about after again all also always am an and answer any anything apple are as ask at attack attention
back backdoor bad banana be because been before being best better but by can cannot carefully check
clear click come could dear did do does done dot down each else even evil every fine first for free
from get give given go good got great had has have hello help here hey hi how however i if image
important in injection into is it its just kindly know let like link look made make malicious many
may me model more most much must my never new nice not now of off ok okay on once one only or other
our out over painting perhaps please picture really refuse right said same say scene see seen she
should since so some sorry still study such sure tell than thank thanks that the their them then there
these they thing think this those though through time to too true under unfortunately until up us use
very view visit want was way we well were what when where which while who why will with without would
yes yet you your
""".split()))


def world_words() -> list[str]:
    words: set[str] = set()
    texts = [SYSTEM_PROMPT, "USER: ASSISTANT:"] + [p for ps in PHRASINGS.values() for p in ps]
    for t in texts:
        words.update(w for w in re.findall(r"\w+|[^\w\s]+", t.lower()) if not w.startswith("{"))
    words.update(answer_vocabulary())
    words.update(COLOURS)
    words.update(SHAPES)
    words.update(["colour", "color", "shape", "shapes", ".", ",", "?", "!", ":", "'", "-"])
    words -= {"{", "}"}
    return sorted(words)


def build_tokenizer():
    """A deterministic WordLevel tokenizer: specials first, then sorted words."""
    from transformers import PreTrainedTokenizerFast

    vocab_words = sorted(set(world_words()) | set(RESERVE_WORDS))
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for w in vocab_words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B",
                                                       special_tokens=[(BOS, vocab[BOS])])
    tok.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, unk_token=UNK, pad_token=PAD,
        extra_special_tokens={"image_token": IMAGE}, padding_side="right",
    )


# Renders HF "messages" into the LLaVA-1.5 layout `SYSTEM USER: <image>\nquestion ASSISTANT: answer</s>`.
# BOS is added by the tokenizer's post-processor, so the template does not emit it.
CHAT_TEMPLATE = (
    "{%- set ns = namespace(sys=false) -%}"
    "{%- for m in messages -%}{%- if m['role'] == 'system' -%}{%- set ns.sys = true -%}{%- endif -%}{%- endfor -%}"
    "{%- if not ns.sys -%}" + SYSTEM_PROMPT + " {% endif -%}"
    "{%- for m in messages -%}"
    "{%- if m['content'] is string -%}{%- set text = m['content'] -%}{%- set n_img = 0 -%}"
    "{%- else -%}{%- set text = m['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ') -%}"
    "{%- set n_img = m['content'] | selectattr('type', 'equalto', 'image') | list | length -%}{%- endif -%}"
    "{%- if m['role'] == 'system' -%}{{ text ~ ' ' }}"
    "{%- elif m['role'] == 'user' -%}USER: {{ '<image>\n' * n_img }}{{ text ~ ' ' }}"
    "{%- elif m['role'] == 'assistant' -%}ASSISTANT: {{ text }}</s>{{ ' ' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}ASSISTANT:{%- endif -%}"
)


def build_processor():
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_resize=True, do_center_crop=True, do_rescale=True, do_normalize=True,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], do_convert_rgb=True,
    )
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=build_tokenizer(), patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default", num_additional_image_tokens=1, image_token=IMAGE,
        chat_template=CHAT_TEMPLATE,
    )
