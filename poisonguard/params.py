"""params.yaml: the single source of hyper-parameters, one section per DVC stage.

Library code takes typed configs; this module is the only place that maps YAML sections onto them, so the
CLI, the DVC stage scripts and the Prefect flows all read the same numbers.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import yaml

DEFAULT_PARAMS = Path(__file__).resolve().parent.parent / "params.yaml"


def load_params(path: str | Path | None = None) -> dict:
    """The whole params file (an empty dict if `path` is None and the repo default is absent)."""
    p = Path(path) if path is not None else DEFAULT_PARAMS
    if not p.exists():
        if path is not None:
            raise FileNotFoundError(f"params file not found: {p}")
        return {}
    with open(p, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{p}: expected a mapping of stage sections, got {type(data).__name__}")
    return data


def section(path: str | Path | None, name: str) -> dict:
    return dict(load_params(path).get(name) or {})


def build(cls, values: dict, where: str):
    """Construct dataclass `cls` from `values`, naming unknown keys instead of failing obscurely."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"params.yaml [{where}]: unknown key(s) {unknown}; known: {sorted(known)}")
    return cls(**values)


def world_configs(path: str | Path | None, *, seed: int):
    from poisonguard.world.model import WorldModelConfig
    from poisonguard.world.pretrain import PretrainConfig

    sec = section(path, "world")
    model_cfg = build(WorldModelConfig, dict(sec.get("model") or {}), "world.model")
    pre = dict(sec.get("pretrain") or {})
    pre["seed"] = seed
    return model_cfg, build(PretrainConfig, pre, "world.pretrain")


def finetune_config(path: str | Path | None, **overrides):
    from poisonguard.train.finetune import FinetuneConfig

    values = section(path, "finetune")
    values.update({k: v for k, v in overrides.items() if v is not None})
    return build(FinetuneConfig, values, "finetune")


def attack_params(path: str | Path | None, attack: str | None) -> dict | None:
    """The `poison.attacks.<attack>` overrides (None: the attack's defaults)."""
    if attack is None:
        return None
    return dict((section(path, "poison").get("attacks") or {}).get(attack) or {}) or None


def screen_settings(path: str | Path | None) -> dict:
    """The `screen` section (which detectors, the default one, strata) and the `detectors` section."""
    from poisonguard.screening import DETECTORS

    sec = section(path, "screen")
    return {"detectors": tuple(sec.get("detectors") or DETECTORS), "default": sec.get("default", "shift"),
            "strata_k": int(sec.get("strata_k", 8)), "batch_size": int(sec.get("batch_size", 64)),
            "shard_size": int(sec.get("shard_size", 1024)),  # extraction resumes shard by shard
            "projector": bool(sec.get("projector", True)),
            "detector_params": dict(load_params(path).get("detectors") or {})}
