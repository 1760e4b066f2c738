"""One typed record for every input format (LLaVA JSON, HF messages).

Readers turn a file into `Sample`s; writers turn the kept samples back into the *input's own* format using
`Sample.raw` (the untouched original object), so a release differs from its input only by removed samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from poisonguard.data.errors import QuarantineReason

Role = Literal["system", "user", "assistant"]
IMAGE_PLACEHOLDER = "<image>"


@dataclass(frozen=True)
class Turn:
    role: Role
    text: str  # with image placeholders removed; images are in Sample.images


@dataclass
class Sample:
    """One input sample. `index` is its position in the input file; `raw` the original JSON object.

    `image_fields` says where each image reference sits in `raw` (e.g. "image", "images[0]") so that messages
    can point at it; `issues` holds what the reader already found wrong with the record (unique ids, unknown
    roles, ...), which `validate` reports together with its own checks.
    """

    id: str
    index: int
    images: list[str]  # image references as written in the input (relative to the image folder)
    turns: list[Turn]
    raw: dict = field(repr=False, default_factory=dict)
    image_fields: list[str] = field(default_factory=list)
    issues: list[QuarantineReason] = field(default_factory=list)

    @property
    def question(self) -> str:
        """Text of the first user turn (the prompt the decision position answers)."""
        return next((t.text for t in self.turns if t.role == "user"), "")

    @property
    def answer(self) -> str:
        """Text of the first assistant turn."""
        return next((t.text for t in self.turns if t.role == "assistant"), "")

    @property
    def system(self) -> str | None:
        return next((t.text for t in self.turns if t.role == "system"), None)

    def messages(self, *, upto_first_answer: bool = False, with_image: bool = True) -> list[dict]:
        """HF chat `messages` for a processor's chat template; the image goes into the first user turn."""
        out: list[dict] = []
        image_pending = with_image and bool(self.images)
        for t in self.turns:
            if t.role == "user" and image_pending:
                content = [{"type": "image"}] * len(self.images) + [{"type": "text", "text": t.text}]
                image_pending = False
            else:
                content = [{"type": "text", "text": t.text}]
            out.append({"role": t.role, "content": content})
            if upto_first_answer and t.role == "assistant":
                break
        return out
