"""Reading params.yaml: the single source of hyper-parameters, one section per DVC stage.

A leaf module (no other poisonguard import): it reads the file and builds a typed config from a section;
which section maps onto which config is `poisonguard.pipeline.config`'s business.
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
