"""Two targets at different heights of answer-likelihood gain, on synthetic gains: does `span` flag both?

    python benchmarks/span_heights.py

The bench's two-target rows give both targets similar gains, so they never test the peeling's second step.
Here 5,000 samples: clean samples not moved (gain 0), 600 or 900 clean samples moved log-uniformly between
0.001 and 3 nats (the clean-learning tail), and two poisoned modes N(low, 0.5) and N(high, 0.3). Prints, per
case and seed, the samples flagged, the poisoned among them, and each peeling step's Ashman's D — the
detector's own code, nothing patched (docs/detectors.md, "Several targets at very different heights").
"""

from __future__ import annotations

import numpy as np
from span_caps import gain_features

from poisonguard.detect.span import AnswerSpanDetector

# (low mean, low count, high mean, high count): the cases docs/detectors.md quotes
CASES = ((6.0, 500, 14.0, 500), (7.0, 700, 14.0, 300), (8.0, 500, 15.0, 500), (5.0, 100, 13.0, 100))
N, MOVED_CLEAN, SEEDS = 5000, (600, 900), (0, 1)


def case_gains(low: float, n_low: int, high: float, n_high: int, n_moved: int, seed: int):
    """(gain (N,), poisoned (N,) bool) of one synthetic screen."""
    rng = np.random.default_rng(seed)
    moved = np.exp(rng.uniform(np.log(1e-3), np.log(3.0), n_moved))
    gain = np.concatenate([np.zeros(N - n_low - n_high - n_moved), moved, rng.normal(low, 0.5, n_low),
                           rng.normal(high, 0.3, n_high)])
    return gain, np.r_[np.zeros(N - n_low - n_high, bool), np.ones(n_low + n_high, bool)]


def main() -> None:
    print("| low / high target (samples) | moved clean | seed | flagged | poisoned flagged | of | steps: D |")
    print("|---|---|---|---|---|---|---|")
    for low, n_low, high, n_high in CASES:
        for n_moved in MOVED_CLEAN:
            for seed in SEEDS:
                gain, poisoned = case_gains(low, n_low, high, n_high, n_moved, seed)
                res = AnswerSpanDetector().detect(gain_features(gain))
                steps = "; ".join(f"{k} {v:.2f}" for k, v in res.report["ashman_d_by_step"].items())
                print(f"| {low:g} ({n_low}) / {high:g} ({n_high}) | {n_moved} | {seed} | {int(res.flagged.sum())} | "
                      f"{int((res.flagged & poisoned).sum())} | {n_low + n_high} | {steps} |")


if __name__ == "__main__":
    main()
