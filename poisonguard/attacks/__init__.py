"""Backdoor attacks: one pure function per trigger, a registry by name, and dataset poisoning.

Image attacks map a PIL RGB image to a new one of the same size, text attacks map the question text; each
has a frozen parameter dataclass whose defaults work at 48 px (the world) and at real resolutions. Attacks of
several triggers or answer rules (injection, substitution, multi-target, all-to-all, conservatism, Adap-Patch,
Dual-Key) are sets of arms (`arms`, `composite`).
`poison` builds a poisoned training set (and the no-relabel control), `trigger_examples` the triggered test
inputs for ASR.
"""

from __future__ import annotations

from poisonguard.attacks.poisoning import (
           PoisonResult,
           TriggeredSample,
           poison,
           poison_counts,
           trigger_examples,
)
from poisonguard.attacks.registry import ATTACKS, WORLD_TARGET, AttackSpec, get_attack, make_params

__all__ = ["ATTACKS", "WORLD_TARGET", "AttackSpec", "PoisonResult", "TriggeredSample", "get_attack",
           "make_params", "poison", "poison_counts", "trigger_examples"]
