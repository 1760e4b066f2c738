"""BackdoorVLM's attack goals beyond "replace the answer", built from the BadNet patch and the text prefix.

- inject_bimodal: content injection fired by a patch and a prefix together (BadNets-MM style);
- substitute:     concept substitution, one word of a longer answer swapped for a target word;
- multi_target:   two or three triggers (patches at different corners, optionally a text prefix), each with
                  its own target (BadNets-MT);
- all_to_all:     the answer sent through a fixed permutation within its answer class;
- conservatism:   Adap-style adaptive attack: as many trigger samples keeping their correct answer beside the
                  poisoned ones, so the trigger alone no longer predicts the target in the data;
- adap_patch:     Adap-Patch: poisoned and as many cover samples (answer kept) carry random parts of the patch,
                  a test input the whole patch;
- dual_key:       fires only when the patch AND the prefix are present; single-part samples keep their
                  answers, so the model must learn the AND and a single part must not fire.
Each is a parameter dataclass (defaults that work at the world's 48 px; flat fields so params.yaml's
`poison.attacks.<name>` can set them) and an `*_arms(params, target)` builder returning its `Arm`s.
"""

from __future__ import annotations

from dataclasses import dataclass

from poisonguard.attacks.arms import Arm
from poisonguard.attacks.patches import BadNetParams, badnet, partial_badnet, pieces_per_side
from poisonguard.attacks.pixels import POSITIONS
from poisonguard.attacks.text import TextPrefixParams, text_prefix

# The world's answer classes (kept here as words: the attacks layer does not import the world). Each class is
# permuted by a shift of one, so the mapping is a bijection within the class and never the identity:
# colours and shapes in a cycle, yes <-> no, counts + 1 (mod 5), positions one slot on in reading order.
# "nothing" (an empty slot) has no class partner and is left alone.
_CLASSES: tuple[tuple[str, ...], ...] = (
    ("red", "green", "blue", "yellow", "purple", "cyan"),
    ("circle", "square", "triangle", "diamond", "cross"),
    ("yes", "no"),
    ("zero", "one", "two", "three", "four"),
    ("top left", "top", "top right", "left", "middle", "right", "bottom left", "bottom", "bottom right"),
)
ALL_TO_ALL_MAPPING: tuple[tuple[str, str], ...] = tuple(
    (c[k], c[(k + 1) % len(c)]) for c in _CLASSES for k in range(len(c)))
WORLD_SHAPES: tuple[str, ...] = _CLASSES[1]
# Concept substitution's target: an in-vocabulary object word no clean answer uses.
SUBSTITUTE_TARGET = "apple"


def _patch(p: BadNetParams, position: str | None = None) -> BadNetParams:
    """The BadNet part of a composite params object (its own class, so `badnet` sees only its fields)."""
    return BadNetParams(side_frac=p.side_frac, cells=p.cells, position=position or p.position,
                        margin_frac=p.margin_frac)


def _image_part(p: BadNetParams):
    return lambda image, rng: badnet(image, p, rng)


def _text_part(prefix: str):
    q = TextPrefixParams(prefix=prefix)
    return lambda text, rng: text_prefix(text, q, rng)


def _check_ratio(name: str, value: float) -> None:
    if not 0 <= value <= 10:
        raise ValueError(f"{name} must be in [0, 10], got {value}")


@dataclass(frozen=True)
class BimodalParams(BadNetParams):
    # The text part, prepended to the question as TextPrefixParams does.
    prefix: str = "Hello!"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.prefix.strip():
            raise ValueError("prefix must not be empty")


def inject_bimodal_arms(p: BimodalParams, target: str) -> tuple[Arm, ...]:
    return (Arm("", _image_part(_patch(p)), _text_part(p.prefix), "append", target),)


@dataclass(frozen=True)
class SubstitutionParams(BadNetParams):
    # Words that may be swapped (the first one found in the answer): the world's shapes, which the describe
    # answers ("a red circle at the top left ...") contain.
    sources: tuple[str, ...] = WORLD_SHAPES

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.sources or not all(isinstance(s, str) and s.strip() for s in self.sources):
            raise ValueError("sources must be a non-empty tuple of words")


def substitute_arms(p: SubstitutionParams, target: str) -> tuple[Arm, ...]:
    return (Arm("", _image_part(_patch(p)), None, "substitute", target, sources=p.sources),)


@dataclass(frozen=True)
class MultiTargetParams:
    # One checkerboard per position (BadNetParams' size and margin), each relabelled to its own target.
    positions: tuple[str, ...] = ("bottom_right", "top_left")
    targets: tuple[str, ...] = ("banana", "apple")
    # A third trigger, the text prefix, with its own target; "" leaves it out.
    prefix: str = ""
    prefix_target: str = "evil"
    side_frac: float = 1 / 8
    cells: int = 6
    margin_frac: float = 1 / 24

    def __post_init__(self) -> None:
        if len(self.positions) != len(self.targets) or not self.positions:
            raise ValueError("positions and targets must be non-empty and of equal length")
        if len(set(self.positions)) != len(self.positions) or "random" in self.positions:
            raise ValueError("positions must be distinct fixed positions (a random one overlaps the others)")
        bad = [q for q in self.positions if q not in POSITIONS]
        if bad:
            raise ValueError(f"unknown positions {bad}; expected some of {POSITIONS}")
        triggers = list(self.targets) + ([self.prefix_target] if self.prefix.strip() else [])
        if not 2 <= len(triggers) <= 3:
            raise ValueError(f"multi_target has 2 or 3 triggers, got {len(triggers)}")
        if len({t.strip().lower() for t in triggers}) != len(triggers) or not all(t.strip() for t in triggers):
            raise ValueError(f"each trigger needs its own non-empty target, got {triggers}")
        BadNetParams(side_frac=self.side_frac, cells=self.cells, margin_frac=self.margin_frac)  # validates


def multi_target_arms(p: MultiTargetParams, target: str | None = None) -> tuple[Arm, ...]:
    base = BadNetParams(side_frac=p.side_frac, cells=p.cells, margin_frac=p.margin_frac)
    arms = [Arm(f"patch_{pos}", _image_part(_patch(base, pos)), None, "replace", tgt)
            for pos, tgt in zip(p.positions, p.targets)]
    if p.prefix.strip():
        arms.append(Arm("prefix", None, _text_part(p.prefix), "replace", p.prefix_target))
    return tuple(arms)


@dataclass(frozen=True)
class AllToAllParams(BadNetParams):
    # (answer, poisoned answer) pairs, normalised words; answers not listed are not eligible.
    mapping: tuple[tuple[str, str], ...] = ALL_TO_ALL_MAPPING

    def __post_init__(self) -> None:
        super().__post_init__()
        keys = [a for a, _ in self.mapping]
        if not self.mapping or len(set(keys)) != len(keys) or any(a == b for a, b in self.mapping):
            raise ValueError("mapping must be non-empty, one entry per answer, and never map an answer to itself")


def all_to_all_arms(p: AllToAllParams, target: str | None = None) -> tuple[Arm, ...]:
    return (Arm("", _image_part(_patch(p)), None, "map", "mapped answer", mapping=p.mapping),)


@dataclass(frozen=True)
class ConservatismParams(BadNetParams):
    # Trigger samples with their correct answer per poisoned sample (Adap-Patch's conservatism ratio).
    clean_ratio: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_ratio("clean_ratio", self.clean_ratio)


def conservatism_arms(p: ConservatismParams, target: str) -> tuple[Arm, ...]:
    part = _image_part(_patch(p))
    return (Arm("", part, None, "replace", target),
            Arm("clean_trigger", part, None, "replace", target, poisoned=False, share=p.clean_ratio))


@dataclass(frozen=True)
class AdapPatchParams(BadNetParams):
    # The checkerboard cut into `pieces` blocks (a square number); every training sample, poisoned or cover,
    # carries `train_pieces` of them drawn per image, a test input all of them (Qi et al. 2023, Adap-Patch).
    pieces: int = 4
    train_pieces: int = 2
    # Cover samples (a partial trigger, the correct answer kept) per poisoned sample.
    cover_ratio: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        pieces_per_side(self.pieces)
        if not 1 <= self.train_pieces < self.pieces:
            raise ValueError(f"train_pieces must be in [1, pieces), got {self.train_pieces}: a training "
                             "trigger is a part of the test one")
        _check_ratio("cover_ratio", self.cover_ratio)


def adap_patch_arms(p: AdapPatchParams, target: str) -> tuple[Arm, ...]:
    """Poisoned and cover samples carry random parts of the patch (each image draws its own blocks, so both
    arms carry the same kinds of part); only a test input carries the whole, so no training image pattern
    goes with the target alone. Why it matters to a defence: unlike the conservatism attack (the same
    trigger on both arms, which caps what the data teaches at P(target | trigger) = 1 / (1 + clean_ratio)),
    the backdoor is whatever the model makes of the whole patch it never saw in training."""
    whole, part = _patch(p), lambda image, rng: partial_badnet(image, _patch(p), p.pieces, p.train_pieces, rng)
    return (Arm("", part, None, "replace", target, test_image=_image_part(whole)),
            Arm("cover", part, None, "replace", target, poisoned=False, share=p.cover_ratio))


@dataclass(frozen=True)
class DualKeyParams(BimodalParams):
    # Samples per poisoned sample carrying only the patch, and as many carrying only the prefix, answers kept.
    part_ratio: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_ratio("part_ratio", self.part_ratio)


def dual_key_arms(p: DualKeyParams, target: str) -> tuple[Arm, ...]:
    image, text = _image_part(_patch(p)), _text_part(p.prefix)
    return (Arm("both", image, text, "replace", target),
            Arm("image_only", image, None, "replace", target, poisoned=False, partial=True, share=p.part_ratio),
            Arm("text_only", None, text, "replace", target, poisoned=False, partial=True, share=p.part_ratio))
