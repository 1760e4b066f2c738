"""One typed config per pipeline stage, loaded from the params.yaml section of the same name.

params.yaml is the single source of the pipeline's settings: each section maps onto one frozen dataclass
here (or the library's own config class, e.g. `FinetuneConfig`), whose field defaults are the library
defaults; an unknown key is an error that names the section. The CLI and the flows override keys of the same
objects (`override`), never a second copy of the values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from poisonguard.detect.registry import DETECTORS, make_detector
from poisonguard.gate.config import GateConfig
from poisonguard.params import build, load_params
from poisonguard.runtime import Runtime, resolve_runtime
from poisonguard.train.finetune import FinetuneConfig

DEFAULT_DETECTOR = "span"  # the README's Detection section says why (it was "shift" until 2026-12-04)


def _positive(obj, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{type(obj).__name__}.{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class RuntimeConfig:
    """`runtime`: where every stage that loads a model runs it. auto = CUDA + bfloat16 when a GPU is present,
    CPU + float32 otherwise; `compile` runs the language model under torch.compile for the extraction passes
    (`poisonguard.extract.compiled`)."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto | float32 | bfloat16
    compile: bool = False
    max_pixels: int | None = None  # dynamic-resolution processors (Qwen2-VL family): resize bound; None: its own
    min_pixels: int | None = None
    pad_to_square: bool = False  # LLaVA-1.5: pad images to a square of their mean colour before the processor

    def resolve(self) -> Runtime:
        """The concrete device and dtype on this machine (ValueError, one line, for an impossible choice)."""
        return resolve_runtime(self.device, self.dtype, compile=self.compile, max_pixels=self.max_pixels,
                               min_pixels=self.min_pixels, pad_to_square=self.pad_to_square)


@dataclass(frozen=True)
class ExtractConfig:
    """`extract_attention`: decision-position features of both models, sharded and resumable, and their
    teacher-forced log-probabilities of each sample's answers (`extract.span`)."""

    batch_size: int = 64
    shard_size: int = 1024  # a killed extraction resumes at the first unfinished shard
    max_batch_tokens: int | None = None  # token budget per batch (rows x longest row); None: fixed batch_size
    num_workers: int = 0  # worker threads for the CPU-side preprocessing; 0: in the main process
    span_max_tokens: int = 64  # answer tokens scored per sample (the first ones; see extract/span.py)

    def __post_init__(self) -> None:
        _positive(self, "batch_size", "shard_size", "span_max_tokens")
        if self.max_batch_tokens is not None:
            _positive(self, "max_batch_tokens")
        if isinstance(self.num_workers, bool) or not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise ValueError(f"ExtractConfig.num_workers must be a non-negative integer, got {self.num_workers!r}")


@dataclass(frozen=True)
class AuditConfig:
    """`audit_projector`: per-sample projector drift (the fused and projector detectors read it) and the
    weight-space audit of the projector (ΔW spectrum)."""

    enabled: bool = True
    batch_size: int = 64
    max_batch_tokens: int | None = None  # image tokens per drift batch (summed); None: batch_size samples only
    scores: tuple[str, ...] = ("drift_max", "drift_mean", "drift_max_rel")
    ks: tuple[int, ...] = (1, 2, 4, 8)  # ranks of the ΔW spectrum summary

    def __post_init__(self) -> None:
        _positive(self, "batch_size")
        if self.max_batch_tokens is not None:
            _positive(self, "max_batch_tokens")
        object.__setattr__(self, "scores", tuple(self.scores))
        object.__setattr__(self, "ks", tuple(int(k) for k in self.ks))


@dataclass(frozen=True)
class ProfileConfig:
    """`profile_heads`: label-free strata and the per-head mixture profiles."""

    strata_k: int = 8  # k-means strata on the base model's decision state
    seed: int = 0
    k_max: int = 5  # the per-head profiles' mixture K range is 1..k_max (K* by BIC)

    def __post_init__(self) -> None:
        _positive(self, "strata_k", "k_max")


@dataclass(frozen=True)
class GmmConfig:
    """`fit_gmm`: the detectors fitted on the drop, in report order, each with its full parameter set
    (every tunable, including each detector's mixture K range, is a key; defaults are the detectors' own)."""

    detectors: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: {DEFAULT_DETECTOR: {}})

    def __post_init__(self) -> None:
        if not self.detectors:
            raise ValueError("params.yaml [fit_gmm.detectors]: at least one detector is needed")
        resolved = {}
        for name, params in self.detectors.items():
            make_detector(name, params)  # unknown names and bad values fail here, with the name
            resolved[name] = dict(params or {})
        object.__setattr__(self, "detectors", resolved)


@dataclass(frozen=True)
class VoteConfig:
    """`em_vote`: a Dawid–Skene vote over the `annotators`' flags gives `p_vote`; `decide` names whose
    verdict blocks samples: a detector from fit_gmm, or "vote" for the EM's posterior > 0.5."""

    decide: str = DEFAULT_DETECTOR
    annotators: tuple[str, ...] = ("shift", "span", "fused", "projector")
    max_iter: int = 100
    smoothing: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "annotators", tuple(self.annotators))
        unknown = [n for n in (*self.annotators, self.decide) if n not in DETECTORS and n != "vote"]
        if unknown:
            raise ValueError(f"params.yaml [em_vote]: unknown detector(s) {unknown}; available: "
                             f"{', '.join(DETECTORS)} or 'vote'")
        _positive(self, "max_iter")


@dataclass(frozen=True)
class PipelineConfig:
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    extract_attention: ExtractConfig = field(default_factory=ExtractConfig)
    audit_projector: AuditConfig = field(default_factory=AuditConfig)
    profile_heads: ProfileConfig = field(default_factory=ProfileConfig)
    fit_gmm: GmmConfig = field(default_factory=GmmConfig)
    em_vote: VoteConfig = field(default_factory=VoteConfig)
    gate: GateConfig = field(default_factory=GateConfig)

    def __post_init__(self) -> None:
        fitted = self.fit_gmm.detectors
        if self.em_vote.decide != "vote" and self.em_vote.decide not in fitted:
            raise ValueError(f"em_vote.decide is {self.em_vote.decide!r}, which fit_gmm does not fit "
                             f"({', '.join(fitted)})")


_CLASSES = {"runtime": RuntimeConfig, "finetune": FinetuneConfig, "extract_attention": ExtractConfig, "audit_projector": AuditConfig,
            "profile_heads": ProfileConfig, "fit_gmm": GmmConfig, "em_vote": VoteConfig, "gate": GateConfig}


def section_config(name: str, params: str | Path | Mapping | None = None):
    """The typed config of one stage from params.yaml (the repo's when `params` is None) or a loaded dict."""
    values = params if isinstance(params, Mapping) else load_params(params)
    return build(_CLASSES[name], dict(values.get(name) or {}), name)


def load_config(params: str | Path | Mapping | None = None) -> PipelineConfig:
    """Every stage's config, from one params file."""
    values = params if isinstance(params, Mapping) else load_params(params)
    return PipelineConfig(**{name: section_config(name, values) for name in _CLASSES})


def override(config: PipelineConfig, **changes: Mapping[str, Any]) -> PipelineConfig:
    """A copy with keys of some sections replaced, e.g. `override(cfg, em_vote={"decide": "fused"})`;
    None values are ignored (an option the user did not give)."""
    sections = {}
    for name, values in changes.items():
        given = {k: v for k, v in values.items() if v is not None}
        if given:
            sections[name] = build(_CLASSES[name], {**_as_dict(getattr(config, name)), **given}, name)
    return replace(config, **sections)


def _as_dict(obj) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def attack_params(params: str | Path | Mapping | None, attack: str | None) -> dict | None:
    """The `poison.attacks.<attack>` overrides of an attack's parameters (None: the attack's defaults)."""
    if attack is None:
        return None
    values = params if isinstance(params, Mapping) else load_params(params)
    return dict((dict(values.get("poison") or {}).get("attacks") or {}).get(attack) or {}) or None
