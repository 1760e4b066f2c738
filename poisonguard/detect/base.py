"""Detector contract, in the style of the Adversarial Robustness Toolbox (ART): declared, validated
hyper-parameters; label-free `fit`; `score` that applies the fitted state to any data of the same shape (e.g.
a new data drop); `detect` = fit + score; and a JSON-only state (lists, floats, strings; no pickle) so a
fitted detector can be registered in MLflow as data and rebuilt with `detect.registry.load_detector`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Self

import numpy as np
import pandas as pd

from poisonguard.detect.features import FeatureSet

STATE_FORMAT = 1


@dataclass
class DetectionResult:
    """Per-sample verdicts of one detector on one FeatureSet.

    p_poison ranks samples (a posterior for the EM-based detectors, a monotone squashing of the score for the
    baselines); `flagged` is the decision, which a detector's guard may withhold even where p_poison > 0.5.
    `signals` holds extra per-sample columns for the verdict table (`vote_*`, `score_*`).
    """

    ids: np.ndarray  # (N,) str
    p_poison: np.ndarray  # (N,) in [0, 1]
    flagged: np.ndarray  # (N,) bool
    signals: dict[str, np.ndarray]  # name → (N,)
    report: dict[str, Any]

    def __post_init__(self) -> None:
        n = len(self.ids)
        self.p_poison = np.asarray(self.p_poison, dtype=np.float64)
        self.flagged = np.asarray(self.flagged, dtype=bool)
        if self.p_poison.shape != (n,) or self.flagged.shape != (n,):
            raise ValueError("p_poison and flagged must be (N,)")
        if not np.all((self.p_poison >= 0) & (self.p_poison <= 1)):
            raise ValueError("p_poison must lie in [0, 1]")
        for name, col in self.signals.items():
            if np.shape(col) != (n,):
                raise ValueError(f"signal {name!r} must be (N,)")

    def to_frame(self) -> pd.DataFrame:
        """One row per sample: id, p_poison, flagged, then the signal columns."""
        return pd.DataFrame(
            {"id": self.ids, "p_poison": self.p_poison, "flagged": self.flagged, **self.signals}
        )


class Detector(ABC):
    """Base of every detector. Subclasses set `name`, a frozen-dataclass `Params` that validates itself in
    `__post_init__`, and implement `fit` (stores JSON-able numpy state in `self._fitted`) and `score`."""

    name: ClassVar[str]
    Params: ClassVar[type]
    # Bumped when a change to the decision logic changes what `fit`/`score` return for the same parameters:
    # a benchmark folder re-screens its finished cells on a new revision (bench.run.screen_settings).
    revision: ClassVar[int] = 1

    def __init__(self, **params: Any) -> None:
        allowed = [f.name for f in fields(self.Params)]
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise ValueError(f"{type(self).__name__}: unknown parameter(s) {unknown}; allowed: {allowed}")
        types = {f.name: f.type for f in fields(self.Params)}
        self.params = self.Params(**{k: _as_field(types[k], v) for k, v in params.items()})  # YAML lists -> tuples
        self._fitted: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.get_params()})"

    def get_params(self) -> dict[str, Any]:
        return asdict(self.params)

    @property
    def is_fitted(self) -> bool:
        return self._fitted is not None

    @abstractmethod
    def fit(self, features: FeatureSet) -> Self:
        """Learn the detector's state from unlabelled features."""

    @abstractmethod
    def score(self, features: FeatureSet) -> DetectionResult:
        """Apply the fitted state to `features` (the fitting data or new data of the same shape)."""

    def detect(self, features: FeatureSet) -> DetectionResult:
        return self.fit(features).score(features)

    def to_state(self) -> dict[str, Any]:
        """JSON-serialisable state: detector name, params and fitted values (lists, floats, None for NaN)."""
        return {
            "detector": self.name,
            "format": STATE_FORMAT,
            "params": to_jsonable(self.get_params()),
            "fitted": to_jsonable(self._fitted),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        if state.get("detector") != cls.name or state.get("format") != STATE_FORMAT:
            raise ValueError(
                f"state is for {state.get('detector')!r} (format {state.get('format')}), "
                f"not {cls.name!r} (format {STATE_FORMAT})"
            )
        det = cls(**{f.name: _as_field(f.type, state["params"][f.name]) for f in fields(cls.Params)})
        det._fitted = from_jsonable(state["fitted"])
        return det

    def _result(
        self,
        features: FeatureSet,
        p_poison: np.ndarray,
        flagged: np.ndarray,
        signals: dict[str, np.ndarray],
        /,
        **report: Any,
    ) -> DetectionResult:
        """The DetectionResult of `score`: p_poison clipped to [0, 1] (a posterior can overshoot by rounding)
        and a report of `detector`, the detector's own `report` fields, then `n`, `n_flagged`, `flag_rate`.

        The first four arguments are positional-only, so a report field may carry any name.
        """
        flagged = np.asarray(flagged, dtype=bool)
        n = features.n
        full = {
            "detector": self.name,
            **report,
            "n": n,
            "n_flagged": int(flagged.sum()),
            "flag_rate": float(flagged.mean()) if n else 0.0,
        }
        return DetectionResult(features.ids, np.clip(p_poison, 0.0, 1.0), flagged, signals, full)

    def _state(self) -> dict[str, Any]:
        if self._fitted is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit() or detect() first")
        return self._fitted


# --- parameter validation -----------------------------------------------------------------------------------


def check_int(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an int, got {value!r}")  # noqa: TRY004 - ValueError, as ART
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")


def check_float(
    name: str, value: Any, lo: float | None = None, hi: float | None = None, *, open_lo: bool = False
) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float | np.floating)
        or not math.isfinite(value)
    ):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if lo is not None and (value <= lo if open_lo else value < lo):
        raise ValueError(f"{name} must be {'>' if open_lo else '>='} {lo}, got {value}")
    if hi is not None and value > hi:
        raise ValueError(f"{name} must be <= {hi}, got {value}")


def check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {value!r}")  # noqa: TRY004 - as above


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


# --- JSON state ---------------------------------------------------------------------------------------------


def to_jsonable(obj: Any) -> Any:
    """numpy arrays → nested lists, numpy scalars → Python, NaN/inf → None; dicts and sequences recurse."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def from_jsonable(obj: Any) -> Any:
    """Inverse of `to_jsonable` for fitted state: numeric (nested) lists become numpy arrays, None inside
    them NaN; lists of strings stay lists."""
    if isinstance(obj, dict):
        return {k: from_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        arr = np.asarray(obj)
        if arr.dtype.kind in "US":
            return obj
        return np.asarray(obj, dtype=np.float64) if arr.dtype == object else arr  # None holes → NaN
    return obj


def _as_field(annotation: Any, value: Any) -> Any:
    """JSON turns tuples into lists; give tuple-typed params (e.g. a tuple of score names) their tuples back.
    Annotations are strings here (`from __future__ import annotations`)."""
    return tuple(value) if isinstance(value, list) and str(annotation).startswith("tuple") else value
