"""Validation against the model: every input sample is usable or quarantined with a reason, never dropped.

On top of the format and image checks of `poisonguard.data` (which need no model), a sample is quarantined
when its conversation does not fit the model's context once rendered with the model's chat template and its
images expanded by the processor (counted per image: anyres tiles, dynamic resolution), when it alone is
longer than the extraction's token budget per batch (`max_batch_tokens`), or when
its text holds one of the model's special tokens or chat-template role markers (customer text that would forge
turn boundaries); every sample is held back when too few are usable to screen label-free. Only the model's config and processor are
loaded here, never its weights.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from poisonguard.atomic import atomic_write_json
from poisonguard.data.dataset import Dataset, read_dataset
from poisonguard.data.errors import QuarantineReason, ReasonCode
from poisonguard.data.images import resolve_image_path
from poisonguard.data.limits import Limits
from poisonguard.data.loading import CheckedDataset, check_dataset
from poisonguard.data.records import Sample
from poisonguard.data.special_tokens import special_token_check
from poisonguard.models import check_model_dir, load_processor
from poisonguard.runtime import Runtime
from poisonguard.train.batching import expanded_length, render

# Fewer usable samples than this cannot be screened label-free: the head profiles fit 1-D mixtures of up to
# 5 components, and the projector drift detector's robust statistics need 10 scored samples.
MIN_USABLE_SAMPLES = 10


def context_check(processor, max_tokens: int, image_size: Callable[[str], tuple[int, int]] | None = None, *,
                  max_batch_tokens: int | None = None) -> Callable[[Sample], list[QuarantineReason]]:
    """Quarantine conversations that would not fit the model's context (`max_tokens`) once rendered,
    tokenized and their images expanded, and, with `max_batch_tokens`, those longer than one batch's budget.

    Each image counts the tokens the processor expands it into at its size (`image_size(ref)` gives
    (width, height) from the file's header; no decode), so a large image under Qwen2-VL's dynamic resolution
    or LLaVA-NeXT's tiles counts for what it costs. Without `image_size` a placeholder counts as one token.
    """
    tok = processor.tokenizer

    def check(sample: Sample) -> list[QuarantineReason]:
        try:
            text = render(processor, sample.messages(), generation_prompt=False)
        except Exception as exc:  # a template that cannot render this conversation is a per-sample problem
            return [QuarantineReason.at("malformed_turn", sample.id, "conversations", f"chat template failed: {exc}")]
        if image_size is None or not sample.images:
            n = len(tok(text)["input_ids"])
        else:
            n = expanded_length(processor, text, [image_size(ref) for ref in sample.images])
        if n > max_tokens:
            return [QuarantineReason.at("conversation_too_long", sample.id, "conversations",
                                        f"{n} tokens (images included) exceed the model's context of {max_tokens}")]
        if max_batch_tokens is not None and n > max_batch_tokens:
            return [QuarantineReason.at("over_token_budget", sample.id, "conversations",
                                        f"{n} tokens (images included) exceed the token budget of one batch "
                                        f"(extract_attention.max_batch_tokens = {max_batch_tokens})")]
        return []

    return check


def model_context(config) -> int:
    """The language model's context length (max_position_embeddings; 4096 when the config has none)."""
    text_cfg = getattr(config, "text_config", config)
    return int(getattr(text_cfg, "max_position_embeddings", 4096))


def header_sizes(image_root: str | Path) -> Callable[[str], tuple[int, int]]:
    """`ref -> (width, height)` read from an image file's header (the image checks have already refused
    missing, escaping and oversized files)."""
    from PIL import Image

    cache: dict[str, tuple[int, int]] = {}

    def size(ref: str) -> tuple[int, int]:
        if ref not in cache:
            with Image.open(resolve_image_path(ref, image_root)) as img:
                cache[ref] = img.size
        return cache[ref]

    return size


def hold_back_if_too_few(checked: CheckedDataset, minimum: int = MIN_USABLE_SAMPLES) -> int:
    """Quarantine every usable sample when there are fewer than `minimum` of them; returns how many were.

    A sample that cannot be screened must not be released as if it had been, so it is quarantined with a
    reason rather than passed (or the run crashing inside a detector).
    """
    ok = checked.ok
    if not 0 < len(ok) < minimum:
        return 0
    for s in ok:
        checked.reasons[s.id] = [QuarantineReason(
            ReasonCode.TOO_FEW_TO_SCREEN,
            f"sample {s.id!r}: not screened: only {len(ok)} usable sample(s) in the file, label-free screening "
            f"needs at least {minimum}")]
    return len(ok)


def load_model_context(model_dir: str | Path, runtime: Runtime | None = None):
    """(config, processor) of a model folder, without its weights (a layout that cannot be loaded is refused
    in one line by `check_model_dir`; an adapter folder without a processor uses its base's); the processor
    carries the runtime's image options, as in the passes that feed the model."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(check_model_dir(model_dir), trust_remote_code=False)
    return config, load_processor(model_dir, runtime=runtime)


def validate_for_model(data: str | Path | Dataset, model_dir: str | Path, image_folder=None, *,
                       hold_back: bool = True, runtime: Runtime | None = None,
                       max_batch_tokens: int | None = None) -> CheckedDataset:
    """Format, image, context (images counted per sample, see `context_check`), token-budget and
    special-token checks, then (for screening, `hold_back`) the hold-back rule; `data` is a path or a read
    `Dataset`. Fine-tuning needs no minimum number of samples."""
    ds = data if isinstance(data, Dataset) else read_dataset(data, image_root=image_folder)
    config, processor = load_model_context(model_dir, runtime)
    context = context_check(processor, model_context(config), header_sizes(ds.image_root),
                            max_batch_tokens=max_batch_tokens)
    checked = check_dataset(ds, checks=(context, special_token_check(processor)))
    if hold_back:
        hold_back_if_too_few(checked)
    return checked


def save_validation(checked: CheckedDataset, path: Path) -> None:
    reasons = {sid: [{"code": r.code, "message": r.message} for r in rs] for sid, rs in checked.reasons.items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, reasons, indent=1)


def load_validation(data: str | Path, path: Path, image_folder=None) -> CheckedDataset:
    """Re-read the dataset and attach the stored per-sample verdicts (no second image decode pass)."""
    stored = json.loads(Path(path).read_text())
    ds = read_dataset(data, image_root=image_folder)
    if set(stored) != set(ds.ids):
        raise ValueError(f"{path} was written for another version of {data}; re-run extract_attention")
    reasons = {sid: [QuarantineReason(r["code"], r["message"]) for r in stored[sid]] for sid in ds.ids}
    return CheckedDataset(ds, reasons, Limits())
