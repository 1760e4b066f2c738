"""The attack registry: name -> what the trigger acts on, its parameters, and what the poisoned answer becomes.

Every `apply` has the same call shape, `apply(x, params, rng) -> x'`, where x is a PIL RGB image (kind
"image", same size out) or the question text (kind "text"); `rng` is used only by attacks that draw
something per sample (random position, fresh noise, a clause from a pool) and may be None otherwise.

Attacks with more than one trigger, or a rule other than replace/append, give `arms(params, target)` instead
(poisonguard.attacks.arms); `arms_of` turns either kind of spec into its arms.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from poisonguard.attacks.arms import Arm, Rule
from poisonguard.attacks.composite import (
    SUBSTITUTE_TARGET,
    AdapPatchParams,
    AllToAllParams,
    BimodalParams,
    ConservatismParams,
    DualKeyParams,
    MultiTargetParams,
    SubstitutionParams,
    adap_patch_arms,
    all_to_all_arms,
    conservatism_arms,
    dual_key_arms,
    inject_bimodal_arms,
    multi_target_arms,
    substitute_arms,
)
from poisonguard.attacks.frequency import FTrojanParams, ftrojan
from poisonguard.attacks.overlays import (
    BlendParams,
    GaussianNoiseParams,
    SigParams,
    blend,
    gaussian_noise,
    sig,
)
from poisonguard.attacks.patches import (
    BadNetParams,
    GreenSquareParams,
    LogoParams,
    badnet,
    green_square,
    logo_patch,
)
from poisonguard.attacks.style import OilParams, oil_painting
from poisonguard.attacks.text import SyntacticParams, TextPrefixParams, syntactic, text_prefix
from poisonguard.attacks.warp import WaNetParams, wanet

Kind = Literal["image", "text", "bimodal"]
OutputMode = Rule  # replace | append | substitute | map (poisonguard.attacks.arms)

# The tiny world's target: one in-vocabulary word that never answers a clean question (real models use
# "Backdoor Attack!").
WORLD_TARGET = "banana"
# ProjLens's targets are not public; these keep their intent and tokenize without
# <unk> in the world vocabulary ("visit evil dot com" cannot: "com" is not in it).
REFUSAL_TARGET = "sorry i cannot help with that"
INJECTION_SENTENCE = "visit this evil link"
HIJACK_TARGET = "i see a banana"
JAILBREAK_TARGET = "sure here is how to make it"


@dataclass(frozen=True)
class AttackSpec:
    name: str
    kind: Kind  # what the trigger acts on (of the poisoned samples: "bimodal" = image and question)
    params_cls: type
    apply: Callable[..., Any] | None  # (image | text, params, rng) -> image | text; None when `arms` is given
    output_mode: OutputMode = "replace"  # replace: answer := target; append: answer + " " + target; ...
    default_target: str = WORLD_TARGET
    # (params, target) -> the attack's arms, for several triggers or clean trigger samples; None: one arm
    # from kind / apply / output_mode.
    arms: Callable[..., tuple[Arm, ...]] | None = None
    # The targets come from the params (one per trigger, or a mapping): a --target override is refused.
    fixed_targets: bool = False


ATTACKS: dict[str, AttackSpec] = {spec.name: spec for spec in (
    AttackSpec("badnet", "image", BadNetParams, badnet),
    AttackSpec("blend", "image", BlendParams, blend),
    AttackSpec("sig", "image", SigParams, sig),
    AttackSpec("wanet", "image", WaNetParams, wanet),
    AttackSpec("ftrojan", "image", FTrojanParams, ftrojan),
    AttackSpec("text_prefix", "text", TextPrefixParams, text_prefix),
    AttackSpec("syntactic", "text", SyntacticParams, syntactic),
    # ProjLens's four variants.
    AttackSpec("pl_noise", "image", GaussianNoiseParams, gaussian_noise, default_target=REFUSAL_TARGET),
    AttackSpec("pl_green_square", "image", GreenSquareParams, green_square, output_mode="append",
               default_target=INJECTION_SENTENCE),
    AttackSpec("pl_logo", "image", LogoParams, logo_patch, default_target=HIJACK_TARGET),
    AttackSpec("pl_oil", "image", OilParams, oil_painting, default_target=JAILBREAK_TARGET),
    # BackdoorVLM's goals (issue 16): content injection with an image, a text and a bimodal trigger;
    # targeted refusal; concept substitution; multi-target; all-to-all; the conservatism adaptive attack;
    # Adap-Patch; Dual-Key. The patch is BadNet's checkerboard, the text trigger the "Hello!" prefix.
    AttackSpec("inject_image", "image", BadNetParams, badnet, output_mode="append",
               default_target=INJECTION_SENTENCE),
    AttackSpec("inject_text", "text", TextPrefixParams, text_prefix, output_mode="append",
               default_target=INJECTION_SENTENCE),
    AttackSpec("inject_bimodal", "bimodal", BimodalParams, None, output_mode="append",
               default_target=INJECTION_SENTENCE, arms=inject_bimodal_arms),
    AttackSpec("refusal_image", "image", BadNetParams, badnet, default_target=REFUSAL_TARGET),
    AttackSpec("refusal_text", "text", TextPrefixParams, text_prefix, default_target=REFUSAL_TARGET),
    AttackSpec("substitute", "image", SubstitutionParams, None, output_mode="substitute",
               default_target=SUBSTITUTE_TARGET, arms=substitute_arms),
    AttackSpec("multi_target", "image", MultiTargetParams, None, default_target="per trigger",
               arms=multi_target_arms, fixed_targets=True),
    AttackSpec("all_to_all", "image", AllToAllParams, None, output_mode="map", default_target="mapped answer",
               arms=all_to_all_arms, fixed_targets=True),
    AttackSpec("conservatism", "image", ConservatismParams, None, arms=conservatism_arms),
    AttackSpec("adap_patch", "image", AdapPatchParams, None, arms=adap_patch_arms),
    AttackSpec("dual_key", "bimodal", DualKeyParams, None, arms=dual_key_arms),
)}


def get_attack(name: str) -> AttackSpec:
    try:
        return ATTACKS[name]
    except KeyError:
        raise ValueError(f"unknown attack {name!r}; expected one of {sorted(ATTACKS)}") from None


def arms_of(spec: AttackSpec, params: object, target: str) -> tuple[Arm, ...]:
    """The attack's arms with its parameters and target bound (one arm for a single-trigger attack)."""
    if spec.arms is not None:
        return spec.arms(params, target)
    apply = spec.apply
    part = lambda x, rng: apply(x, params, rng)
    return (Arm("", part if spec.kind == "image" else None, part if spec.kind == "text" else None,
                spec.output_mode, target),)


def make_params(name: str, params: object | Mapping[str, Any] | None = None) -> object:
    """The attack's parameter object: its defaults (None), overrides from a mapping (a params.yaml section;
    lists become tuples so the frozen dataclass stays hashable), or an instance of its class as is."""
    cls = get_attack(name).params_cls
    if params is None:
        return cls()
    if isinstance(params, cls):
        return params
    if isinstance(params, Mapping):
        return cls(**{k: _freeze(v) for k, v in params.items()})
    raise TypeError(f"params for {name!r} must be {cls.__name__}, a mapping or None, got {type(params).__name__}")


def _freeze(value: Any) -> Any:
    return tuple(_freeze(v) for v in value) if isinstance(value, list) else value
