"""What the detectors read: label-free per-sample features produced by the extraction layer.

Everything is indexed by sample (axis 0, aligned with `ids`). Only `ids` is always needed; each detector
asks for the fields it uses (`require`) and raises a clear error when one is missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

# Allocation rows are softmax shares summed over three spans; float32 extraction leaves small rounding.
_ALLOC_SUM_TOL = 1e-2


@dataclass(frozen=True)
class FeatureSet:
    """Per-sample features of one dataset.

    ids:          (N,) str, unique.
    alloc:        (N, L, H, 3) float32: attention shares (system, vision, user text) of the *fine-tuned* model
                  at the decision position (the last prompt token), per layer and head; each row sums to 1.
    alloc_base:   same shape, from the *base* (pre-fine-tuning) model on the same samples.
    strata:       (N,) int, label-free prompt strata the defender can compute (e.g. a question-template
                  cluster).
    vis_entropy:  (N, L) BYE's per-layer entropy of the head-mean attention over image tokens; NaN for
                  text-only samples.
    hidden:       (N, D) decision-position hidden state (final normed, the LM head's input) of the fine-tuned
                  model.
    hidden_base:  same shape, from the base model (the decision-shift detector differences the two).
    answer_logp:  (N, T) float32: the fine-tuned model's teacher-forced log-probability of each of the first T
                  answer tokens of the sample's conversation (extract/span.py); NaN beyond them (and on a
                  whole row for a sample without an answer).
    answer_logp_base: same shape and NaN pattern, from the base model (the span detector differences them).
    extra_scores: name → (N,) other label-free per-sample scores (higher = more suspicious; NaN = no score,
                  e.g. an image-only score on a text-only sample).
    """

    ids: np.ndarray
    alloc: np.ndarray | None = None
    alloc_base: np.ndarray | None = None
    strata: np.ndarray | None = None
    vis_entropy: np.ndarray | None = None
    hidden: np.ndarray | None = None
    hidden_base: np.ndarray | None = None
    answer_logp: np.ndarray | None = None
    answer_logp_base: np.ndarray | None = None
    extra_scores: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ids = np.asarray(self.ids).astype(str)
        if ids.ndim != 1:
            raise ValueError(f"ids must be 1-D, got shape {ids.shape}")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("ids must be unique")
        n = len(ids)
        object.__setattr__(self, "ids", ids)
        for name in ("alloc", "alloc_base"):
            a = getattr(self, name)
            if a is None:
                continue
            a = np.asarray(a, dtype=np.float32)
            if a.ndim != 4 or a.shape[0] != n or a.shape[-1] != 3:
                raise ValueError(f"{name} must be (N={n}, L, H, 3), got {a.shape}")
            if not np.all(np.isfinite(a)) or a.min(initial=0.0) < 0:
                raise ValueError(f"{name} must be finite and non-negative")
            if np.abs(a.sum(-1) - 1.0).max(initial=0.0) > _ALLOC_SUM_TOL:
                raise ValueError(f"{name} rows must sum to 1 over (system, vision, user text)")
            object.__setattr__(self, name, a)
        if self.alloc_base is not None and (self.alloc is None or self.alloc_base.shape != self.alloc.shape):
            raise ValueError("alloc_base needs alloc of the same shape")
        if self.strata is not None:
            s = np.asarray(self.strata)
            if s.shape != (n,) or not np.issubdtype(s.dtype, np.integer):
                raise ValueError(f"strata must be (N={n},) integers, got {s.shape} {s.dtype}")
            object.__setattr__(self, "strata", s.astype(np.int64))
        self._set_float("vis_entropy", ndim=2, allow_nan=True)
        self._set_float("hidden", ndim=2, allow_nan=False)
        self._set_float("hidden_base", ndim=2, allow_nan=False)
        if self.hidden_base is not None and (self.hidden is None or self.hidden_base.shape != self.hidden.shape):
            raise ValueError("hidden_base needs hidden of the same shape")
        self._set_answer_logp()
        extras = {}
        for key, val in self.extra_scores.items():
            v = np.asarray(val, dtype=np.float64)
            if v.shape != (n,) or np.isinf(v).any():
                raise ValueError(f"extra_scores[{key!r}] must be (N={n},) finite or NaN")
            extras[str(key)] = v
        object.__setattr__(self, "extra_scores", extras)

    def _set_float(self, name: str, *, ndim: int, allow_nan: bool) -> None:
        a = getattr(self, name)
        if a is None:
            return
        a = np.asarray(a, dtype=np.float32 if name.startswith("hidden") else np.float64)
        if a.ndim != ndim or a.shape[0] != len(self.ids):
            raise ValueError(f"{name} must be {ndim}-D with N={len(self.ids)} rows, got {a.shape}")
        bad = np.isinf(a).any() if allow_nan else not np.all(np.isfinite(a))
        if bad:
            raise ValueError(f"{name} must be finite" + (" or NaN" if allow_nan else ""))
        object.__setattr__(self, name, a)

    def _set_answer_logp(self) -> None:
        """Both or neither; same (N, T) shape; finite or NaN, NaN at the same places (the same answers)."""
        a, b = self.answer_logp, self.answer_logp_base
        if a is None and b is None:
            return
        if a is None or b is None:
            raise ValueError("answer_logp and answer_logp_base come together (the span detector differences them)")
        a, b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
        if a.ndim != 2 or a.shape[0] != len(self.ids) or a.shape != b.shape:
            raise ValueError(f"answer_logp {a.shape} and answer_logp_base {b.shape} must both be (N={len(self.ids)}, T)")
        if np.isinf(a).any() or np.isinf(b).any():
            raise ValueError("answer log-probabilities must be finite or NaN")
        if not np.array_equal(np.isnan(a), np.isnan(b)):
            raise ValueError("answer_logp and answer_logp_base cover different answer tokens (NaN patterns differ)")
        object.__setattr__(self, "answer_logp", a)
        object.__setattr__(self, "answer_logp_base", b)

    @property
    def n(self) -> int:
        return len(self.ids)

    def require(self, *names: str) -> None:
        """Raise ValueError naming every requested field that is absent."""
        missing = [nm for nm in names if getattr(self, nm) is None]
        if missing:
            raise ValueError(f"this detector needs FeatureSet field(s) {missing}")

    def subset(self, index: np.ndarray) -> FeatureSet:
        """The samples at `index` (int positions or a boolean mask), every field sliced alike."""
        idx = np.asarray(index)

        def take(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[idx]

        return replace(
            self,
            ids=self.ids[idx],
            alloc=take(self.alloc),
            alloc_base=take(self.alloc_base),
            strata=take(self.strata),
            vis_entropy=take(self.vis_entropy),
            hidden=take(self.hidden),
            hidden_base=take(self.hidden_base),
            answer_logp=take(self.answer_logp),
            answer_logp_base=take(self.answer_logp_base),
            extra_scores={k: v[idx] for k, v in self.extra_scores.items()},
        )
