"""Bridge from typed records (`Sample`) to model inputs (`Example`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from poisonguard.data.records import Sample
from poisonguard.train.batching import Example


def to_example(sample: Sample, load_image: Callable[[str], object], *, prompt_only: bool = False) -> Example:
    """Messages for the processor's chat template; `prompt_only` keeps turns up to the first user turn."""
    msgs = sample.messages()
    if prompt_only:
        first_user = next(i for i, m in enumerate(msgs) if m["role"] == "user")
        msgs = msgs[: first_user + 1]
    return Example(msgs, [load_image(ref) for ref in sample.images])


def to_examples(samples: Sequence[Sample], load_image: Callable[[str], object], *,
                prompt_only: bool = False) -> list[Example]:
    return [to_example(s, load_image, prompt_only=prompt_only) for s in samples]


class LazyExamples(Sequence):
    """Model inputs built when sliced: extraction decodes one shard's images at a time, never the whole
    dataset's (100k decoded images do not fit in memory; one shard's do). Prompt-only by default (the
    decision features); `prompt_only=False` keeps the answers (the teacher-forced answer-span pass)."""

    def __init__(self, samples: Sequence[Sample], load_image: Callable[[str], object], *,
                 prompt_only: bool = True):
        self.samples, self.load_image, self.prompt_only = list(samples), load_image, prompt_only

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [to_example(s, self.load_image, prompt_only=self.prompt_only) for s in self.samples[k]]
        return to_example(self.samples[k], self.load_image, prompt_only=self.prompt_only)
