"""Synthetic, label-known feature sets for detector tests (no model involved).

The allocation world mimics what the early detector probes saw:
- every head has a per-sample "content" component shared by the base and the fine-tuned model (same image,
  same prompt), and prompt strata with their own offsets;
- `content_heads` (late layers too) put a rare stratum in its own clean, well-separated mode, and
  `image_heads` do the same for a rare kind of image (no stratum knows it): the structure that made faithful
  TCAP select content heads; only base-model differencing removes the image mode;
- fine-tuning adds a constant drift per head, small noise, and in `stratum_ft_heads` an extra shift for one
  whole stratum (a question type the fine-tune changed: clean, but a minority mode after differencing);
- poisoned samples get a system-share shift in the `trigger_heads` of the fine-tuned model only.
"""

from __future__ import annotations

import numpy as np

from poisonguard.detect import FeatureSet

STRATUM_P = (0.3, 0.25, 0.2, 0.15, 0.1)


def make_alloc(
    n: int = 1500,
    n_layers: int = 4,
    n_heads: int = 4,
    poison_rate: float = 0.1,
    seed: int = 0,
    trigger_heads: tuple[tuple[int, int], ...] = ((2, 0), (3, 1), (3, 2)),
    content_heads: tuple[tuple[int, int], ...] = ((2, 1), (2, 3), (3, 0), (3, 3), (0, 0), (1, 2)),
    image_heads: tuple[tuple[int, int], ...] = ((3, 3), (2, 2), (1, 0)),
    stratum_ft_heads: tuple[tuple[int, int], ...] = ((1, 1), (2, 2)),
    trigger_shift: float = 2.0,
    ft_noise: float = 0.1,
) -> tuple[FeatureSet, np.ndarray]:
    """FeatureSet with alloc, alloc_base and strata; and the poisoned ids.

    `ft_noise` is the per-sample SD of the fine-tuning change (logit units), heavy-tailed (Student t, 3 dof).
    """
    rng = np.random.default_rng(seed)
    strata = rng.choice(len(STRATUM_P), size=n, p=STRATUM_P)
    head_base = rng.normal(0.0, 0.7, (n_layers, n_heads, 3)) + np.array([0.0, 1.5, 0.5])
    stratum_fx = rng.normal(0.0, 0.3, (len(STRATUM_P), n_layers, n_heads, 3))
    for l, h in content_heads:
        stratum_fx[4, l, h, 0] += 4.0  # the rare stratum sits in its own mode of α_sys
    content = rng.normal(0.0, 0.25, (n, n_layers, n_heads, 3))
    rare_image = rng.random(n) < 0.12
    for l, h in image_heads:
        content[rare_image, l, h, 0] -= 3.0
    base = head_base + stratum_fx[strata] + content  # (N, L, H, 3) logits

    drift = rng.normal(0.0, 0.3, (n_layers, n_heads, 3))
    ft = base + drift + ft_noise / np.sqrt(3.0) * rng.standard_t(3, (n, n_layers, n_heads, 3))
    for l, h in stratum_ft_heads:
        ft[strata == 3, l, h, 0] += 1.5
    poisoned = rng.random(n) < poison_rate
    for l, h in trigger_heads:
        ft[poisoned, l, h, 0] += trigger_shift

    ids = np.array([f"s{i:05d}" for i in range(n)])
    fs = FeatureSet(ids=ids, alloc=_softmax(ft), alloc_base=_softmax(base), strata=strata)
    return fs, ids[poisoned]


def make_entropy(
    n: int = 1500,
    n_layers: int = 6,
    poison_rate: float = 0.1,
    seed: int = 0,
    bimodal_clean_layer: int | None = None,
    text_only_rate: float = 0.0,
) -> tuple[FeatureSet, np.ndarray]:
    """vis_entropy (N, L): a patch trigger concentrates late-layer attention (entropy −2 in layers 3–5).

    `bimodal_clean_layer`: one layer where 30% of clean images (another kind of picture) sit 2 nats lower.
    """
    rng = np.random.default_rng(seed)
    ent = rng.normal(4.5, 0.2, (n, n_layers))
    poisoned = rng.random(n) < poison_rate
    ent[poisoned, 3:] -= 2.0
    if bimodal_clean_layer is not None:
        ent[rng.random(n) < 0.3, bimodal_clean_layer] -= 2.0
    ent[rng.random(n) < text_only_rate] = np.nan
    ids = np.array([f"e{i:05d}" for i in range(n)])
    return FeatureSet(ids=ids, vis_entropy=ent), ids[poisoned]


def make_hidden(
    n: int = 1500, dim: int = 32, poison_rate: float = 0.1, shift: float = 4.0, seed: int = 0
) -> tuple[FeatureSet, np.ndarray]:
    """Anisotropic Gaussian hidden states; poisoned samples shifted along one random direction."""
    rng = np.random.default_rng(seed)
    scales = np.linspace(2.0, 0.5, dim)
    h = rng.normal(0.0, 1.0, (n, dim)) * scales
    poisoned = rng.random(n) < poison_rate
    direction = rng.normal(0.0, 1.0, dim)
    h[poisoned] += shift * direction / np.linalg.norm(direction) * scales.max()
    ids = np.array([f"h{i:05d}" for i in range(n)])
    return FeatureSet(ids=ids, hidden=h), ids[poisoned]


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)
