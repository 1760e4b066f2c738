"""Which prompt token is system, vision or user text: one role per position of the model's input row.

Why character offsets and not token counting: every family wraps the question differently (Vicuna's
`USER: <image>\\n...`, ChatML's `<|im_start|>user\\n...<|im_end|>`, Mistral's `[INST] ... [/INST]`) and the
processors expand image placeholders by resolution-dependent amounts. The question's characters, however,
appear verbatim in the prompt rendered by the processor's own chat template. So:

1. render the prompt twice, once as is and once with every user text part replaced by a sentinel; the
   sentinels give the character span of each user text part (and the two renders must agree once the
   sentinels are substituted back, else the template edits the text and we refuse to guess);
2. tokenize the rendered prompt with offsets: tokens overlapping a user-text span are user text, the image
   placeholder is vision, everything else (BOS, system prompt, role tags, generation prompt) is system;
3. align that row with the processor's expanded row: the expansion only inserts special tokens (image
   tokens, and delimiters such as InternVL's `<img>`/`</img>`); inserted image tokens are vision, inserted
   delimiters are system.

Edge cases:
- a text-only sample has no vision token: vision share 0, and BYE's entropy is NaN;
- every image of a multi-image prompt is vision; a system message (or the family's default one) is system;
  a family without a system prompt (Mistral) has only BOS, role tags and delimiters as system;
- user text in several parts (text, image, text) gives several spans, all user text;
- a token straddling the question's edge (byte-level BPE folds the space before a word into the word)
  counts as user text;
- padding is its own role (PAD) and gets no share;
- assistant turns are never part of the prompt: the decision position emits the first answer token, so only
  the messages before the first assistant turn are rendered (later user turns are dropped with them);
- a template that edits the user text (trim, lower-case) or a processor that changes more than the image
  placeholders raises ValueError rather than guessing; videos are not handled.
"""

from __future__ import annotations

import re

import numpy as np

from poisonguard.train.batching import render

SYS, VIS, TXT, PAD = 0, 1, 2, -1
ROLE_NAMES = ("sys", "vis", "txt")

_SENTINEL = re.compile("\ue000(\\d+)\ue001")


def prompt_messages(messages: list[dict]) -> list[dict]:
    """The messages before the first assistant turn: the prompt whose last position emits the first answer."""
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            return messages[:i]
    return list(messages)


def _with_sentinels(messages: list[dict]) -> tuple[list[dict], list[str]]:
    """Copy of `messages` with each user text part replaced by sentinel i; returns (copy, original texts)."""
    texts: list[str] = []

    def mark(text: str) -> str:
        texts.append(text)
        return f"\ue000{len(texts) - 1}\ue001"

    out = []
    for m in messages:
        if m["role"] != "user":
            out.append(m)
        elif isinstance(m["content"], str):
            out.append({**m, "content": mark(m["content"])})
        else:
            parts = [{**c, "text": mark(c["text"])} if c.get("type") == "text" else c for c in m["content"]]
            out.append({**m, "content": parts})
    return out, texts


def user_text_spans(processor, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered prompt (ending at the generation prompt) and the character spans of the user's text."""
    prompt = prompt_messages(messages)
    rendered = render(processor, prompt, generation_prompt=True)
    marked, texts = _with_sentinels(prompt)
    template = render(processor, marked, generation_prompt=True)
    pieces, spans, pos, cursor = [], [], 0, 0
    for match in _SENTINEL.finditer(template):
        pieces.append(template[cursor:match.start()])
        pos += match.start() - cursor
        text = texts[int(match.group(1))]
        pieces.append(text)
        spans.append((pos, pos + len(text)))
        pos += len(text)
        cursor = match.end()
    pieces.append(template[cursor:])
    if "".join(pieces) != rendered or len(spans) != len(texts):
        raise ValueError("the chat template alters or drops the user's text; cannot locate the question "
                         f"in the prompt: {rendered!r}")
    return rendered, [s for s in spans if s[1] > s[0]]


def _unexpanded_roles(processor, rendered: str, spans: list[tuple[int, int]],
                      image_token_id: int) -> tuple[list[int], list[int]]:
    """Token ids and roles of the rendered prompt as the tokenizer alone sees it (placeholders unexpanded)."""
    enc = processor.tokenizer(rendered, return_offsets_mapping=True)
    roles = []
    for tid, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]):
        if tid == image_token_id:
            roles.append(VIS)
        elif b > a and any(a < e and s < b for s, e in spans):
            roles.append(TXT)
        else:
            roles.append(SYS)
    return list(enc["input_ids"]), roles


def token_roles(processor, messages: list[dict], row_ids: list[int], image_token_id: int) -> np.ndarray:
    """Role (SYS, VIS, TXT) of each position of `row_ids`, the processor's unpadded expanded prompt row."""
    rendered, spans = user_text_spans(processor, messages)
    ids, roles = _unexpanded_roles(processor, rendered, spans, image_token_id)
    insertable = set(processor.tokenizer.added_tokens_decoder)
    out = np.empty(len(row_ids), dtype=np.int8)
    i = 0
    for j, tid in enumerate(row_ids):
        if i < len(ids) and ids[i] == tid:
            out[j] = roles[i]
            i += 1
        elif tid in insertable:
            out[j] = VIS if tid == image_token_id else SYS
        else:
            raise ValueError(f"cannot align the processor's prompt with the tokenizer's at position {j} "
                             f"(token id {tid}): the processor changed more than the image placeholders")
    if i != len(ids):
        raise ValueError("the processor's prompt lacks tokens of the rendered prompt; cannot align spans")
    return out


def batch_roles(processor, messages: list[list[dict]], input_ids, attention_mask,
                image_token_id: int) -> np.ndarray:
    """(B, N) roles of a left- or right-padded batch; padding is PAD."""
    ids = input_ids.cpu().numpy()
    keep = attention_mask.cpu().numpy().astype(bool)
    out = np.full(ids.shape, PAD, dtype=np.int8)
    for b, msgs in enumerate(messages):
        out[b, keep[b]] = token_roles(processor, msgs, ids[b, keep[b]].tolist(), image_token_id)
    return out
